/* Shared by the deployment test programs: a listener on 127.0.0.1, line output, privilege drop. */
#ifndef DEPLOY_COMMON_H
#define DEPLOY_COMMON_H
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOBODY 65534

/* One line on stdout, flushed: the test reads it as it comes. */
#define say(...) do { printf(__VA_ARGS__); fputc('\n', stdout); fflush(stdout); } while (0)

static inline void die(const char *what)
{
    say("ERROR %s: %s", what, strerror(errno));
    exit(3);
}

/* A TCP listener on 127.0.0.1 with a port of the kernel's choice; "PORT n" is printed. */
static inline int listen_local(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    if (listen(fd, 128) != 0) die("listen");
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0) die("getsockname");
    say("PORT %d", ntohs(a.sin_port));
    return fd;
}

/* The peer's port of an accepted connection (the test's client port: it names the connection). */
static inline int peer_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getpeername(fd, (struct sockaddr *)&a, &len) != 0) return -1;
    return ntohs(a.sin_port);
}

/* Becomes nobody for good (groups, gid, uid), as a daemon's worker does. */
static inline void drop_to_nobody(void)
{
    if (setgroups(0, NULL) != 0) die("setgroups");
    if (setgid(NOBODY) != 0) die("setgid");
    if (setuid(NOBODY) != 0) die("setuid");
    say("DROPPED uid=%d euid=%d", (int)getuid(), (int)geteuid());
}

/* Blocks until stdin reaches EOF (the test closes it to ask for the end). */
static inline void wait_stdin_eof(void)
{
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR)) return;
    }
}
#endif
