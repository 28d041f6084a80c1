/*
 * A small TCP server that leaks on purpose.  It listens on 127.0.0.1 (prints "PORT n") and accepts
 * one connection per letter of its pattern:
 *   L  accepted in leak_here(): never read, never closed (CLOSE_WAIT once the client closes)
 *   S  accepted in serve_here(): greeted with "HELLO\n", read until EOF, then closed
 * then idles.  It returns from main (so atexit handlers run) when stdin reaches EOF or when its
 * own timer (-t) expires.
 *
 *   leaky_server [-c] [-u] [-p PATTERN] [-t SECONDS]
 *   -c  first of all closes every descriptor from 3 to 1023, as daemons do
 *   -u  becomes nobody before its first socket
 *   -p  the pattern (default LLSS; "" accepts nothing)
 *   -t  exits by itself after this many seconds (default: only at stdin's EOF)
 *
 * Lines: PORT n / ACCEPT L|S fd peerport / CLOSED fd / EXIT timer|stdin
 */
#include "common.h"

#include <poll.h>
#include <time.h>

#define MAXCONN 64

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The open site the tests look for in a leak's open_stack. */
__attribute__((noinline)) static int leak_here(int lfd)
{
    int fd = accept(lfd, NULL, NULL);
    __asm__ volatile("" ::: "memory"); /* keeps the call from becoming a tail call */
    return fd;
}

__attribute__((noinline)) static int serve_here(int lfd)
{
    int fd = accept(lfd, NULL, NULL);
    __asm__ volatile("" ::: "memory");
    if (fd >= 0 && write(fd, "HELLO\n", 6) != 6) say("WARN greeting not sent");
    return fd;
}

int main(int argc, char **argv)
{
    const char *pattern = "LLSS";
    int close_all = 0, drop = 0;
    long seconds = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0) close_all = 1;
        else if (strcmp(argv[i], "-u") == 0) drop = 1;
        else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc) pattern = argv[++i];
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) seconds = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: leaky_server [-c] [-u] [-p PATTERN] [-t SECONDS]\n");
            return 2;
        }
    }
    if (close_all)
        for (int fd = 3; fd < 1024; fd++) close(fd);
    if (drop) drop_to_nobody();
    size_t plen = strlen(pattern);
    if (plen > MAXCONN) plen = MAXCONN;
    int lfd = listen_local();
    long long deadline = seconds > 0 ? now_ms() + seconds * 1000 : 0;
    int served[MAXCONN];
    size_t nserved = 0, accepted = 0;
    const char *why = "stdin";
    for (;;) {
        struct pollfd p[MAXCONN + 2];
        nfds_t n = 0;
        p[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
        p[n++] = (struct pollfd){.fd = accepted < plen ? lfd : -1, .events = POLLIN};
        for (size_t i = 0; i < nserved; i++) p[n++] = (struct pollfd){.fd = served[i], .events = POLLIN};
        int timeout = -1;
        if (deadline) {
            long long left = deadline - now_ms();
            if (left <= 0) { why = "timer"; break; }
            timeout = (int)left;
        }
        int r = poll(p, n, timeout);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (r == 0) continue; /* the deadline is checked above */
        if (p[0].revents) {
            char buf[64];
            ssize_t got = read(0, buf, sizeof buf);
            if (got <= 0) break;
        }
        if (p[1].revents & POLLIN) {
            char kind = pattern[accepted];
            int fd = kind == 'S' ? serve_here(lfd) : leak_here(lfd);
            if (fd < 0) die("accept");
            accepted++;
            if (kind == 'S') served[nserved++] = fd;
            say("ACCEPT %c %d %d", kind == 'S' ? 'S' : 'L', fd, peer_port(fd));
        }
        for (size_t i = 2; i < n; i++) {
            if (!p[i].revents) continue;
            char buf[512];
            ssize_t got = read(p[i].fd, buf, sizeof buf);
            if (got > 0) continue;
            close(p[i].fd);
            say("CLOSED %d", p[i].fd);
            for (size_t j = 0; j < nserved; j++)
                if (served[j] == p[i].fd) served[j] = served[--nserved];
        }
    }
    say("EXIT %s", why);
    return 0;
}
