/*
 * tclient: the client side of a leak (an idle pooled connection the server closed).
 *
 *   tclient PORT MODE HOLD_MS
 *     connects to 127.0.0.1:PORT from tclient_open() (socket + connect), prints
 *     "CONNECTED <fd> <local_port>", then by MODE:
 *       read    reads until EOF ("EOF <fd>"), keeps the descriptor ("LEAK <fd>")
 *       unread  never reads, keeps the descriptor ("LEAK <fd>")
 *       close   reads until EOF and closes at once ("CLOSED <fd> close")
 *     then sleeps HOLD_MS (ended early when stdin is closed) and prints "DONE".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
static volatile int sink;

NOINLINE int tclient_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0); /* @socket */
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { /* @connect */
        perror("connect");
        exit(1);
    }
    sink = fd;
    return fd;
}

NOINLINE ssize_t tclient_read(int fd, char *buf, size_t len)
{
    ssize_t n = read(fd, buf, len); /* @tclient_read */
    sink = (int)n;
    return n;
}

int main(int argc, char **argv)
{
    char buf[1024];
    if (argc != 4) {
        fprintf(stderr, "usage: tclient PORT read|unread|close HOLD_MS\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(60);
    const char *mode = argv[2];
    int fd = tclient_open(atoi(argv[1]));
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    printf("CONNECTED %d %d\n", fd, ntohs(sa.sin_port));
    if (strcmp(mode, "unread") != 0) {
        ssize_t n;
        while ((n = tclient_read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
            ;
        if (n == 0)
            printf("EOF %d\n", fd);
    }
    if (strcmp(mode, "close") == 0) {
        close(fd);
        printf("CLOSED %d close\n", fd);
    } else {
        printf("LEAK %d\n", fd);
    }
    struct pollfd p = {0, POLLIN, 0};
    poll(&p, 1, atoi(argv[3]));
    printf("DONE\n");
    return 0;
}
