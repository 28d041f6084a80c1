/*
 * many_sites: client sockets opened from many distinct call sites, all kept after the server
 * closes them (CLOSE_WAIT), for the metrics' label bound.
 *
 *   many_sites PORT SITES [PROCS]
 *     makes a TCP socket (the watcher starts with it, and serves the children forked after),
 *     forks PROCS - 1 children (default PROCS 1; each prints "CHILD <pid>"), then in each
 *     process site i (0-based, i < SITES <= 40) opens (i % 3) + 1 connections to
 *     127.0.0.1:PORT from a function of its own and keeps them; the first process prints
 *     "OPENED <total of one process>" when all have, then every process waits until stdin is
 *     closed (at most 60 s) and exits (the first after reaping the children).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
static volatile int kept;
static int port;

static int connect_fd(int fd)
{
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

/* One function per site: each socket() call has a return address of its own. */
#define SITE(n)                                              \
    NOINLINE static int site_##n(void)                       \
    {                                                        \
        int fd = socket(AF_INET, SOCK_STREAM, 0);            \
        kept += connect_fd(fd);                              \
        return fd;                                           \
    }
SITE(0) SITE(1) SITE(2) SITE(3) SITE(4) SITE(5) SITE(6) SITE(7) SITE(8) SITE(9)
SITE(10) SITE(11) SITE(12) SITE(13) SITE(14) SITE(15) SITE(16) SITE(17) SITE(18) SITE(19)
SITE(20) SITE(21) SITE(22) SITE(23) SITE(24) SITE(25) SITE(26) SITE(27) SITE(28) SITE(29)
SITE(30) SITE(31) SITE(32) SITE(33) SITE(34) SITE(35) SITE(36) SITE(37) SITE(38) SITE(39)

static int (*const sites[])(void) = {
    site_0,  site_1,  site_2,  site_3,  site_4,  site_5,  site_6,  site_7,  site_8,  site_9,
    site_10, site_11, site_12, site_13, site_14, site_15, site_16, site_17, site_18, site_19,
    site_20, site_21, site_22, site_23, site_24, site_25, site_26, site_27, site_28, site_29,
    site_30, site_31, site_32, site_33, site_34, site_35, site_36, site_37, site_38, site_39,
};

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) return 2;
    port = atoi(argv[1]);
    int n = atoi(argv[2]);
    int procs = argc >= 4 ? atoi(argv[3]) : 1;
    int early = socket(AF_INET, SOCK_STREAM, 0);
    if (n < 1 || n > (int)(sizeof sites / sizeof sites[0]) || procs < 1 || procs > 16) return 2;
    /* each child tells the first it is done with a byte on this pipe */
    int done[2];
    if (pipe(done) != 0) return 1;
    int child = 0;
    for (int c = 1; c < procs; c++) {
        pid_t pid = fork();
        if (pid < 0) return 1;
        if (pid == 0) {
            child = 1;
            break;
        }
        printf("CHILD %ld\n", (long)pid);
        fflush(stdout);
    }
    int total = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < i % 3 + 1; k++, total++) sites[i]();
    if (child) {
        if (write(done[1], "x", 1) != 1) return 1;
    } else {
        char c;
        for (int k = 1; k < procs; k++)
            if (read(done[0], &c, 1) != 1) return 1;
        printf("OPENED %d\n", total);
        fflush(stdout);
    }
    struct pollfd p = {0, POLLIN, 0};
    poll(&p, 1, 60000);
    if (!child)
        while (wait(NULL) > 0) {
        }
    if (early >= 0) close(early);
    return 0;
}
