/*
 * ttraps: descriptors that see an end of file or a zero-length read without any TCP
 * connection being left in CLOSE_WAIT. None of these may be reported.
 *
 *   ttraps file HOLD_MS    read a regular file to EOF, keep it open HOLD_MS
 *   ttraps pipe HOLD_MS    read a pipe whose writer closed to EOF, keep it open
 *   ttraps unix HOLD_MS    a Unix stream socketpair: the peer end closed, EOF read, kept
 *   ttraps udp HOLD_MS     UDP socket on 127.0.0.1: prints "PORT <n>", receives four
 *                          zero-length datagrams with recvfrom, recv, read, recvmsg,
 *                          keeps the socket open
 *   ttraps recv0 HOLD_MS   TCP server: prints "PORT <n>", accepts one connection, waits
 *                          for data to be pending (the client sends some and stays
 *                          connected), recv(fd, buf, 0, 0), read(fd, buf, 0) and a
 *                          zero-length readv() return 0 on the live socket,
 *                          keeps it HOLD_MS, then reads until the real EOF and closes
 * Output lines: "EOF <fd>", "GOT <call> <ret>", "RECV0 <ret>", "DONE".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int bound_socket(int type, int *port)
{
    int fd = socket(AF_INET, type, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("bind");
        exit(1);
    }
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *port = ntohs(sa.sin_port);
    return fd;
}

int main(int argc, char **argv)
{
    char buf[4096];
    if (argc != 3) {
        fprintf(stderr, "usage: ttraps file|pipe|unix|udp|recv0 HOLD_MS\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(60);
    int hold = atoi(argv[2]);
    const char *what = argv[1];

    if (strcmp(what, "file") == 0) {
        int fd = open("/proc/self/exe", O_RDONLY);
        ssize_t n;
        long total = 0;
        if (fd < 0) {
            perror("open");
            return 1;
        }
        while ((n = read(fd, buf, sizeof buf)) > 0)
            total += n;
        if (n != 0)
            return 1;
        n = read(fd, buf, sizeof buf); /* a second EOF */
        printf("EOF %d %ld\n", fd, total);
        sleep_ms(hold);
    } else if (strcmp(what, "pipe") == 0) {
        int p[2];
        if (pipe(p) != 0)
            return 1;
        if (write(p[1], "abc", 3) != 3)
            return 1;
        close(p[1]);
        ssize_t n;
        while ((n = read(p[0], buf, sizeof buf)) > 0)
            ;
        if (n != 0)
            return 1;
        recv(p[0], buf, sizeof buf, 0); /* ENOTSOCK: harmless */
        printf("EOF %d\n", p[0]);
        sleep_ms(hold);
    } else if (strcmp(what, "unix") == 0) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
            return 1;
        if (write(sv[1], "abc", 3) != 3)
            return 1;
        close(sv[1]);
        ssize_t n;
        while ((n = recv(sv[0], buf, sizeof buf, 0)) > 0)
            ;
        if (n != 0)
            return 1;
        printf("EOF %d\n", sv[0]);
        sleep_ms(hold);
    } else if (strcmp(what, "udp") == 0) {
        int port;
        int fd = bound_socket(SOCK_DGRAM, &port);
        printf("PORT %d\n", port);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        ssize_t r = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&ss, &sl);
        printf("GOT recvfrom %zd\n", r);
        r = recv(fd, buf, sizeof buf, 0);
        printf("GOT recv %zd\n", r);
        r = read(fd, buf, sizeof buf);
        printf("GOT read %zd\n", r);
        struct iovec iov = {buf, sizeof buf};
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        r = recvmsg(fd, &mh, 0);
        printf("GOT recvmsg %zd\n", r);
        printf("EOF %d\n", fd);
        sleep_ms(hold);
    } else if (strcmp(what, "recv0") == 0) {
        int port;
        int lfd = bound_socket(SOCK_STREAM, &port);
        if (listen(lfd, 8) != 0)
            return 1;
        printf("PORT %d\n", port);
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            return 1;
        printf("ACCEPT %d\n", fd);
        /* with nothing pending a zero-length recv blocks; wait for the data */
        ssize_t r = recv(fd, buf, 1, MSG_PEEK);
        if (r != 1)
            return 1;
        r = recv(fd, buf, 0, 0);
        printf("RECV0 %zd\n", r);
        /* read() and readv() of zero bytes return 0 at once, data pending or not */
        r = read(fd, buf, 0);
        printf("READ0 %zd\n", r);
        struct iovec iov0 = {buf, 0};
        r = readv(fd, &iov0, 1);
        printf("READV0 %zd\n", r);
        sleep_ms(hold);
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            ;
        close(fd);
        printf("CLOSED %d close\n", fd);
        sleep_ms(hold);
    } else {
        fprintf(stderr, "unknown trap %s\n", what);
        return 2;
    }
    printf("DONE\n");
    return 0;
}
