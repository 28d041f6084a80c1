/*
 * The fork cost of a forking server, for the `forks` part of make bench (bench/bench.py):
 *
 *   forkloop N
 *       Makes one TCP listening socket on 127.0.0.1, starts a client process (this program
 *       again, re-executed without LD_PRELOAD) that connects 10 times, accepts the 10
 *       connections and holds them; then times N times fork() + _exit(0) in the child +
 *       waitpid() in the parent (after 50 untimed ones).  Prints one line:
 *           fork_us MEAN MEDIAN N FAULTS
 *       microseconds per fork: the mean over the N (total time / N) and the median of the
 *       single forks; FAULTS, the page faults per fork of this process and its children (what
 *       the kernel does for a fork that time on a shared machine blurs: a copy-on-write break,
 *       a page a child maps in, each is one).
 *   forkloop client PORT
 *       (internal) connects 10 times to 127.0.0.1:PORT, then waits for EOF on stdin.
 *
 * Under the library, each child gets a copy of the descriptor table and a watcher of its own;
 * the watcher processes are orphans, so bench.py counts their CPU with a cgroup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONNS 10
#define WARMUP 50

extern char **environ;

static void die(const char *what)
{
    fprintf(stderr, "forkloop: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Page faults of this process and of its children waited for so far. */
static long page_faults(void)
{
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    return self.ru_minflt + self.ru_majflt + kids.ru_minflt + kids.ru_majflt;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int run_client(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fds[CONNS];
    for (int i = 0; i < CONNS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
    }
    char c;
    while (read(0, &c, 1) > 0) {
    }
    for (int i = 0; i < CONNS; i++) close(fds[i]);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "client") == 0) return run_client(atoi(argv[2]));
    if (argc != 2 || atoi(argv[1]) < 1) {
        fprintf(stderr, "usage: forkloop N\n");
        return 2;
    }
    int n = atoi(argv[1]);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0)
        die("listen");

    /* The client: a process of its own, without the library (its sockets are not this
     * program's).  The pipe is its stdin; closing our end tells it to go. */
    int pfd[2];
    if (pipe(pfd) != 0) die("pipe");
    char port[16];
    snprintf(port, sizeof port, "%d", ntohs(addr.sin_port));
    pid_t cli = fork();
    if (cli < 0) die("fork client");
    if (cli == 0) {
        dup2(pfd[0], 0);
        close(pfd[0]);
        close(pfd[1]);
        close(lfd);
        unsetenv("LD_PRELOAD");
        char *args[] = {argv[0], "client", port, NULL};
        execve("/proc/self/exe", args, environ);
        _exit(127);
    }
    close(pfd[0]);
    int held[CONNS];
    for (int i = 0; i < CONNS; i++)
        if ((held[i] = accept(lfd, NULL, NULL)) < 0) die("accept");

    int64_t *t = calloc((size_t)n, sizeof *t);
    if (t == NULL) die("calloc");
    int64_t start = 0;
    long faults0 = 0;
    for (int i = -WARMUP; i < n; i++) {
        if (i == 0) {
            start = now_ns();
            faults0 = page_faults();
        }
        int64_t t0 = now_ns();
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0 || waitpid(pid, NULL, 0) != pid) die("fork");
        if (i >= 0) t[i] = now_ns() - t0;
    }
    double mean = (double)(now_ns() - start) / n / 1000.0;
    double faults = (double)(page_faults() - faults0) / n;
    qsort(t, (size_t)n, sizeof *t, cmp_i64);
    double median = (double)t[n / 2] / 1000.0;

    close(pfd[1]);
    if (waitpid(cli, NULL, 0) != cli) die("waitpid client");
    for (int i = 0; i < CONNS; i++) close(held[i]);
    close(lfd);
    printf("fork_us %.2f %.2f %d %.1f\n", mean, median, n, faults);
    return 0;
}
