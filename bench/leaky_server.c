/*
 * The leaking workload for comparing closewait with valgrind --track-fds and strace: an echo
 * server that serves CONNS connections one after another; every LEAK_EVERY-th connection is
 * handled by serve_legacy(), which forgets to close after EOF.  With 200 and 10, 20 sockets
 * stay in CLOSE_WAIT.  After the last connection it says so on stderr and lives LINGER_MS
 * longer (so a tool that reports while the program runs has time to), then exits.
 *
 *   leaky_server PORT_FILE CONNS LEAK_EVERY LINGER_MS
 *
 * The lines the tools should point at are marked LEAK-OPEN-SITE (the accept of every
 * connection) and LEAK-EOF-SITE (the read that saw EOF and was not followed by close).
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int open_listener(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0) {
        perror("listen");
        exit(1);
    }
    return fd;
}

static __attribute__((noinline)) int accept_conn(int lfd)
{
    return accept(lfd, NULL, NULL); /* LEAK-OPEN-SITE */
}

/* Echoes until EOF; returns when the peer has closed. */
static __attribute__((noinline)) void echo_until_eof(int fd)
{
    char buf[512];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf); /* LEAK-EOF-SITE */
        if (n <= 0) return;
        if (write(fd, buf, (size_t)n) < 0) return;
    }
}

static __attribute__((noinline)) void serve(int fd)
{
    echo_until_eof(fd);
    close(fd);
}

static __attribute__((noinline)) void serve_legacy(int fd)
{
    echo_until_eof(fd);
    /* BUG: the connection is done but never closed. */
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s PORT_FILE CONNS LEAK_EVERY LINGER_MS\n", argv[0]);
        return 2;
    }
    int lfd = open_listener();
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &len);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    FILE *pf = fopen(tmp, "w");
    if (pf == NULL) return 1;
    fprintf(pf, "%d\n", ntohs(a.sin_port));
    fclose(pf);
    rename(tmp, argv[1]);
    int conns = atoi(argv[2]), every = atoi(argv[3]), linger_ms = atoi(argv[4]);
    for (int i = 0; i < conns; i++) {
        int fd = accept_conn(lfd);
        if (fd < 0) continue;
        if (every > 0 && i % every == every - 1) serve_legacy(fd);
        else serve(fd);
    }
    fprintf(stderr, "leaky_server: served %d connections\n", conns);
    struct timespec ts = {linger_ms / 1000, (long)(linger_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return 0;
}
