/*
 * A TCP server on 127.0.0.1 that leaks on purpose, for the eBPF front-end's tests: built
 * statically and without frame pointers by the suite (as distribution packages are), so that only
 * a DWARF unwind finds its functions.  It prints "PORT n", then accepts forever: a client whose
 * first byte is 'L' is kept in keep_forever() (read to EOF, never closed); any other is served in
 * serve_and_close() (read to EOF, closed).  It exits when stdin reaches EOF.
 *
 *   leaky_c_server [-f N]   -f: a prefork server: N worker processes accept, the first process
 *                           only waits for stdin's EOF, then ends them
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXCONN 256

static int kept[MAXCONN], nkept;

__attribute__((noinline)) static void keep_forever(int fd)
{
    char buf[64];
    /* The EOF is read, and the socket is still never closed: the bug this program is about. */
    while (read(fd, buf, sizeof buf) > 0) {
    }
    if (nkept < MAXCONN) kept[nkept++] = fd;
    printf("KEPT %d\n", fd);
    fflush(stdout);
}

__attribute__((noinline)) static void serve_and_close(int fd)
{
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
    printf("CLOSED %d\n", fd);
    fflush(stdout);
}

__attribute__((noinline)) static int take_connection(int lfd)
{
    int fd = accept(lfd, NULL, NULL);
    __asm__ volatile("" ::: "memory"); /* not a tail call */
    return fd;
}

int main(int argc, char **argv)
{
    int workers = argc == 3 && strcmp(argv[1], "-f") == 0 ? atoi(argv[2]) : 0;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) != 0)
        return 1;
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    pid_t pids[64];
    int nworkers = 0, worker = 0;
    for (int i = 0; i < workers && i < 64; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            worker = 1;
            break;
        }
        if (pid > 0) pids[nworkers++] = pid;
    }
    if (workers > 0 && !worker) {
        printf("WORKERS");
        for (int i = 0; i < nworkers; i++) printf(" %d", (int)pids[i]);
        printf("\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {
        }
        for (int i = 0; i < nworkers; i++) kill(pids[i], SIGTERM);
        for (int i = 0; i < nworkers; i++) waitpid(pids[i], NULL, 0);
        printf("EXIT\n");
        return 0;
    }
    for (;;) {
        /* a worker leaves stdin to the first process */
        struct pollfd p[2] = {{lfd, POLLIN, 0}, {worker ? -1 : 0, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) {
            char c;
            if (read(0, &c, 1) <= 0) break;
        }
        if (!(p[0].revents & POLLIN)) continue;
        int fd = take_connection(lfd);
        if (fd < 0) continue; /* another worker took it */
        char first = 0;
        if (recv(fd, &first, 1, MSG_PEEK) == 1 && first == 'L') keep_forever(fd);
        else serve_and_close(fd);
    }
    printf("EXIT\n");
    return 0;
}
