/*
 * A small echo server with the classic bug: when the client hangs up, the handler sees EOF
 * (read returns 0), stops serving the connection, and forgets to close it.  Every client that
 * disconnects leaves one socket in CLOSE_WAIT.
 *
 *   leaky_server PORT_FILE CLIENTS
 * binds 127.0.0.1 on an ephemeral port (written to PORT_FILE), serves CLIENTS connections one
 * after another, then waits a little and exits.
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int open_listener(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
        perror("listen");
        exit(1);
    }
    return fd;
}

/* Returns 1 while the connection should stay in the poll set. */
static __attribute__((noinline)) int serve_one(int fd)
{
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
        if (write(fd, buf, (size_t)n) < 0) return 0;
        return 1;
    }
    /* BUG: n == 0 means the peer closed; the connection is dropped but never closed. */
    return 0;
}

static __attribute__((noinline)) int accept_client(int lfd)
{
    return accept(lfd, NULL, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT_FILE CLIENTS\n", argv[0]);
        return 2;
    }
    int lfd = open_listener();
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &len);
    FILE *pf = fopen(argv[1], "w");
    if (pf == NULL) return 1;
    fprintf(pf, "%d\n", ntohs(a.sin_port));
    fclose(pf);
    int clients = atoi(argv[2]);
    for (int i = 0; i < clients; i++) {
        int fd = accept_client(lfd);
        if (fd < 0) continue;
        while (serve_one(fd)) {
        }
    }
    sleep(3); /* still running: the report arrives while the program lives */
    return 0;
}
