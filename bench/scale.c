/*
 * Scale test: one process holding many idle established sockets under the library.
 *
 *   scale server PORT_FILE N
 *       accepts N connections on 127.0.0.1 (ephemeral port, written to PORT_FILE), prints
 *       "ready" on stdout, then sleeps in read() on stdin, never touching the sockets again,
 *       until stdin says "quit" or closes.  Its only thread is the main one: under the library
 *       the other thread in /proc/PID/task is the watcher.
 *   scale client PORT N K
 *       opens N connections, prints "connected"; on "close" from stdin closes K of them (spread
 *       over the range) and prints "closed MONOTONIC_NS"; on "quit" or EOF exits.
 * The K sockets the client closes are the server's leaks: it never reads them, so they sit in
 * CLOSE_WAIT (reason peer_closed_unread).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r <= 0) return -1;
        if (c == '\n') break;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return (int)n;
}

static int server(const char *port_file, int n)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 4096) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) != 0) {
        perror("scale server: listen");
        return 1;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
    FILE *pf = fopen(tmp, "w");
    if (pf == NULL) return 1;
    fprintf(pf, "%d\n", ntohs(a.sin_port));
    fclose(pf);
    rename(tmp, port_file);
    for (int i = 0; i < n; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            fprintf(stderr, "scale server: accept %d: %s\n", i, strerror(errno));
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (read_line(line, sizeof line) >= 0 && strcmp(line, "quit") != 0) {
    }
    return 0;
}

static int client(int port, int n, int k)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((unsigned short)port)};
    int *fds = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof a) != 0) {
            fprintf(stderr, "scale client: connect %d: %s\n", i, strerror(errno));
            return 1;
        }
    }
    printf("connected\n");
    fflush(stdout);
    char line[64];
    while (read_line(line, sizeof line) >= 0) {
        if (strcmp(line, "close") == 0) {
            struct timespec ts;
            for (int j = 0; j < k; j++) close(fds[(long)j * n / k]);
            clock_gettime(CLOCK_MONOTONIC, &ts);
            printf("closed %lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
            fflush(stdout);
        } else if (strcmp(line, "quit") == 0) {
            break;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "server") == 0) return server(argv[2], atoi(argv[3]));
    if (argc >= 5 && strcmp(argv[1], "client") == 0)
        return client(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: scale server PORT_FILE N | scale client PORT N K\n");
    return 2;
}
