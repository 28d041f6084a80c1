/*
 * Shared by the programs of tests/symbols: a listener on 127.0.0.1 (its port printed as
 * "PORT n"), a read loop that stops at EOF, and a stdin command loop ("ping" -> "pong",
 * EOF -> return) that keeps the program alive while the test looks at it.
 * Everything here is static inline so that no frame of a test's open stack comes from it.
 */
#ifndef CW_SYMBOLS_COMMON_H
#define CW_SYMBOLS_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static inline int cw_listen(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket");
        exit(90);
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
        perror("bind/listen");
        exit(91);
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

/* Reads until the peer's EOF (or an error): the descriptor then sits in CLOSE_WAIT. */
static inline void cw_drain(int fd)
{
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0) { /* @cw_drain_read */
    }
}

static inline void cw_say(const char *what, int n)
{
    printf("%s %d\n", what, n);
    fflush(stdout);
}

/* Answers "ping" with "pong" and "close" with on_close() then "closed", until stdin's EOF. */
static inline void cw_serve_stdin_with(void (*on_close)(void))
{
    char line[128];
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strncmp(line, "ping", 4) == 0) {
            printf("pong\n");
            fflush(stdout);
        } else if (strncmp(line, "close", 5) == 0 && on_close != NULL) {
            on_close();
            printf("closed\n");
            fflush(stdout);
        }
    }
}

static inline void cw_serve_stdin(void)
{
    cw_serve_stdin_with(NULL);
}

#endif
