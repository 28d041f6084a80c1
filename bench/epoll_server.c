/*
 * A small single-threaded epoll HTTP server for the connection-rate benchmark: it answers any
 * request with a fixed 2-byte body and "Connection: close", then closes; so each request is a
 * new connection (accept4, read, write, close), driven by wrk.
 *
 *   epoll_server PORT_FILE     binds 127.0.0.1 on an ephemeral port, writes it to PORT_FILE,
 *                              runs until SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536

static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
static unsigned short seen[MAX_FD]; /* bytes of the request's end marker matched so far */
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* Looks for "\r\n\r\n" across reads. */
static int request_complete(int fd, const char *p, ssize_t n)
{
    static const char marker[] = "\r\n\r\n";
    unsigned short m = seen[fd];
    for (ssize_t i = 0; i < n; i++) {
        m = p[i] == marker[m] ? (unsigned short)(m + 1) : (p[i] == '\r' ? 1 : 0);
        if (m == 4) {
            seen[fd] = 0;
            return 1;
        }
    }
    seen[fd] = m;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT_FILE\n", argv[0]);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 4096) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) != 0) {
        perror("listen");
        return 1;
    }
    FILE *pf = fopen(argv[1], "w");
    if (pf == NULL) return 1;
    fprintf(pf, "%d\n", ntohs(a.sin_port));
    fclose(pf);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[256];
    char buf[4096];
    while (!stop) {
        int n = epoll_wait(ep, events, 256, 200);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break;
                    if (c >= MAX_FD) {
                        close(c);
                        continue;
                    }
                    seen[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) {
                    if (request_complete(fd, buf, r)) {
                        (void)!write(fd, reply, sizeof reply - 1);
                        close(fd); /* closing drops it from the epoll set */
                        break;
                    }
                    continue;
                }
                if (r == 0 || (errno != EAGAIN && errno != EINTR)) close(fd);
                break;
            }
        }
    }
    close(ep);
    close(lfd);
    return 0;
}
