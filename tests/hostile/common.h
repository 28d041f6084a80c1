/*
 * Helpers shared by the hostile programs.  Each program runs the same with and without
 * libclosewait preloaded: lines it prints that do not start with '#' must be identical in both
 * runs (tests/real/run.py compares them); '#' lines are information (timings, counts that
 * depend on the scheduler).  Exit status: 0 when the program saw what it expected, 1 when a
 * check failed, 2 on a setup error.
 */
#ifndef HOSTILE_COMMON_H
#define HOSTILE_COMMON_H
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UNUSED __attribute__((unused))

static UNUSED void fail_setup(const char *what)
{
    fprintf(stderr, "setup failed: %s: %s\n", what, strerror(errno));
    fflush(NULL);
    _exit(2);
}

static UNUSED int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static UNUSED void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A TCP listener on 127.0.0.1, ephemeral port. */
static UNUSED int listen_local(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    if (port != NULL) *port = ntohs(a.sin_port);
    return fd;
}

static UNUSED int connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    while (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (errno == EINTR) continue; /* a restarted connect() may say EISCONN/EALREADY */
        if (errno == EISCONN) break;
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static UNUSED int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read until EOF (0), discarding; -1 on error. */
static UNUSED int drain_to_eof(int fd)
{
    char buf[512];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r == 0) return 0;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
    }
}

static UNUSED void endpoint(int fd, int peer, char *out, size_t cap)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int r = peer ? getpeername(fd, (struct sockaddr *)&a, &len) : getsockname(fd, (struct sockaddr *)&a, &len);
    if (r != 0) {
        snprintf(out, cap, "?");
        return;
    }
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
    snprintf(out, cap, "%s:%u", ip, ntohs(a.sin_port));
}

/*
 * One leaked server-side socket, printed as "#leak fd=N local=A peer=B kind=K" for the runner
 * to match against the library's report.  kind: "eof" (the EOF is read and the fd kept),
 * "unread" (the peer's FIN is never read), "shut" (EOF read, shutdown(SHUT_WR), never closed).
 */
static UNUSED int make_leak(int lfd, int port, const char *kind)
{
    int c = connect_local(port);
    if (c < 0) fail_setup("connect");
    int s;
    while ((s = accept(lfd, NULL, NULL)) < 0 && errno == EINTR) {
    }
    if (s < 0) fail_setup("accept");
    write_all(c, "x", 1);
    char b;
    while (read(s, &b, 1) < 0 && errno == EINTR) {
    }
    close(c);
    char l[64], p[64];
    endpoint(s, 0, l, sizeof l);
    endpoint(s, 1, p, sizeof p);
    if (strcmp(kind, "eof") == 0 || strcmp(kind, "shut") == 0) {
        if (drain_to_eof(s) != 0) fail_setup("read to EOF");
        if (strcmp(kind, "shut") == 0) shutdown(s, SHUT_WR);
    }
    printf("#leak fd=%d local=%s peer=%s kind=%s\n", s, l, p, kind);
    fflush(stdout);
    return s;
}

/* The library's API when it is loaded (looked up so the program runs without it too). */
static UNUSED long cw_leaks_open(void)
{
    long (*f)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "closewait_leaks_open");
    return f != NULL ? f() : -1;
}

static UNUSED int cw_loaded(void)
{
    return dlsym(RTLD_DEFAULT, "closewait_leaks_open") != NULL;
}

/* With the library: wait (bounded) until it holds `want` reported leaks; prints what it saw. */
static UNUSED void wait_for_leaks(long want, int deadline_ms)
{
    if (!cw_loaded()) return;
    int64_t end = now_ms() + deadline_ms;
    long n = cw_leaks_open();
    while (n < want && now_ms() < end) {
        sleep_ms(20);
        n = cw_leaks_open();
    }
    /* A little longer: a report beyond the expected number would show up now. */
    sleep_ms(300);
    printf("# library holds %ld reported leak(s), expected %ld\n", cw_leaks_open(), want);
    fflush(stdout);
}

static UNUSED long rss_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "re");
    if (f == NULL) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, n) == 0 && line[n] == ':') v = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return v;
}

/* Descriptors open below `below` (the library keeps its own at high numbers). */
static UNUSED int count_fds_below(int below)
{
    int n = 0;
    for (int fd = 0; fd < below; fd++)
        if (fcntl(fd, F_GETFD) >= 0) n++;
    return n;
}

static UNUSED const char *errno_name(int e)
{
    switch (e) {
    case 0: return "0";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case EINTR: return "EINTR";
    case EINVAL: return "EINVAL";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOTCONN: return "ENOTCONN";
    case ECONNRESET: return "ECONNRESET";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EFAULT: return "EFAULT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EPIPE: return "EPIPE";
    case ENOENT: return "ENOENT";
    case ESPIPE: return "ESPIPE";
    case EISDIR: return "EISDIR";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno%d", e);
        return buf;
    }
    }
}
#endif
