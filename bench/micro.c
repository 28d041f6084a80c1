/*
 * Micro-benchmarks of the hooked calls, run once without and once with LD_PRELOAD by
 * bench/bench.py, alternating:
 *
 *   micro read   ROUNDS CALLS        read(fd, buf, 1) on a regular file (page cache)
 *   micro recv   ROUNDS CALLS        recv(fd, buf, 1, 0) on an accepted loopback TCP socket
 *                                    that has data waiting (a tracked socket under the library)
 *   micro recvnb ROUNDS CALLS        the same on a socket accepted with SOCK_NONBLOCK (an event
 *                                    loop's: the library keeps no record of its calls)
 *   micro accept ROUNDS CALLS DEPTH  accept() + close() of a loopback connection that is already
 *                                    queued, called DEPTH frames deep (the library takes a
 *                                    backtrace at each accept)
 *   micro fork   ROUNDS CALLS        fork() of a process holding a tracked connection, the child
 *                                    _exit()s at once, waitpid() (what a fork-and-exec server pays:
 *                                    under the library, the child's copy of the table and the start
 *                                    of its watcher)
 *
 * Each round times CALLS calls with clock_gettime(CLOCK_MONOTONIC) around the whole loop (set-up
 * of the round, e.g. refilling the socket or connecting the clients, is outside the clock) and
 * prints ns per call.  One warm-up round runs first and is not printed.  Output, one line:
 *   ns MODE v1 v2 ... vROUNDS
 * Under valgrind (callgrind with --collect-atstart=no) the timed loops alone are collected, so
 * the Ir total in the callgrind output divided by ROUNDS*CALLS is the cost of one call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define HAVE_CALLGRIND 1
#endif
#endif
#ifndef HAVE_CALLGRIND
#define CALLGRIND_TOGGLE_COLLECT do { } while (0)
#endif

#define NOINLINE __attribute__((noinline))

static void die(const char *what)
{
    fprintf(stderr, "micro: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int rounds, calls, depth;
static double *results;

/* ---- read() on a regular file ---------------------------------------------------- */

static NOINLINE long loop_read(int fd, int n)
{
    char c;
    long got = 0;
    for (int i = 0; i < n; i++) got += read(fd, &c, 1);
    return got;
}

static void bench_read(void)
{
    char path[] = "/tmp/closewait-micro-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) die("mkstemp");
    unlink(path);
    char block[4096];
    memset(block, 'x', sizeof block);
    for (int left = calls; left > 0; left -= (int)sizeof block)
        if (write(fd, block, sizeof block) < 0) die("write");
    for (int r = -1; r < rounds; r++) {
        if (lseek(fd, 0, SEEK_SET) != 0) die("lseek");
        int64_t t0 = now_ns();
        if (r >= 0) CALLGRIND_TOGGLE_COLLECT;
        long got = loop_read(fd, calls);
        if (r >= 0) CALLGRIND_TOGGLE_COLLECT;
        int64_t t1 = now_ns();
        if (got != calls) die("short read");
        if (r >= 0) results[r] = (double)(t1 - t0) / calls;
    }
    close(fd);
}

/* ---- loopback helpers ---------------------------------------------------------------- */

static int listener(struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof *a;
    if (fd < 0 || bind(fd, (struct sockaddr *)a, sizeof *a) != 0 || listen(fd, 4096) != 0 ||
        getsockname(fd, (struct sockaddr *)a, &len) != 0)
        die("listen");
    return fd;
}

static int client(const struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)a, sizeof *a) != 0) die("connect");
    return fd;
}

/* ---- recv() on a tracked socket with data ------------------------------------------------ */

static NOINLINE long loop_recv(int fd, int n)
{
    char c;
    long got = 0;
    for (int i = 0; i < n; i++) got += recv(fd, &c, 1, 0);
    return got;
}

static void bench_recv(int nonblocking)
{
    struct sockaddr_in a;
    int lfd = listener(&a);
    int cfd = client(&a);
    int sfd = accept4(lfd, NULL, NULL, nonblocking ? SOCK_NONBLOCK : 0);
    if (sfd < 0) die("accept");
    char *block = malloc((size_t)calls);
    memset(block, 'y', (size_t)calls);
    for (int r = -1; r < rounds; r++) {
        for (int sent = 0; sent < calls;) {
            ssize_t w = write(cfd, block + sent, (size_t)(calls - sent));
            if (w < 0) die("write");
            sent += (int)w;
        }
        for (int waited = 0;; waited++) { /* all of it in the receive queue, outside the clock */
            int avail = 0;
            ioctl(sfd, FIONREAD, &avail);
            if (avail >= calls) break;
            if (waited > 20000) die("data never arrived");
            usleep(100);
        }
        int64_t t0 = now_ns();
        if (r >= 0) CALLGRIND_TOGGLE_COLLECT;
        long got = loop_recv(sfd, calls);
        if (r >= 0) CALLGRIND_TOGGLE_COLLECT;
        int64_t t1 = now_ns();
        if (got != calls) die("short recv");
        if (r >= 0) results[r] = (double)(t1 - t0) / calls;
    }
    free(block);
    close(sfd);
    close(cfd);
    close(lfd);
}

/* ---- accept() + close() at a given stack depth ---------------------------------------------- */

static NOINLINE int loop_accept(int lfd, int n)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0) {
            close(fd);
            ok++;
        }
    }
    return ok;
}

static int frames_here, probing;

static NOINLINE void bench_accept_bottom(void)
{
    void *bt[256];
    /* frames from here to _start, + 1 for loop_accept, from which accept() is called */
    frames_here = backtrace(bt, 256) + 1;
    if (probing) return;
    struct sockaddr_in a;
    int lfd = listener(&a);
    int batch = calls < 512 ? calls : 512;
    int *clients = malloc(sizeof(int) * (size_t)batch);
    for (int r = -1; r < rounds; r++) {
        int64_t total = 0;
        for (int done = 0; done < calls; done += batch) {
            int n = calls - done < batch ? calls - done : batch;
            for (int i = 0; i < n; i++) clients[i] = client(&a); /* queued, outside the clock */
            int64_t t0 = now_ns();
            if (r >= 0) CALLGRIND_TOGGLE_COLLECT;
            int ok = loop_accept(lfd, n);
            if (r >= 0) CALLGRIND_TOGGLE_COLLECT;
            total += now_ns() - t0;
            if (ok != n) die("accept");
            for (int i = 0; i < n; i++) close(clients[i]);
        }
        if (r >= 0) results[r] = (double)total / calls;
    }
    free(clients);
    close(lfd);
}

static void bench_fork(void)
{
    struct sockaddr_in addr;
    int lfd = listener(&addr);
    int c = client(&addr);
    int a = accept(lfd, NULL, NULL);
    if (c < 0 || a < 0) die("fork set-up");
    for (int r = -1; r < rounds; r++) {
        int64_t t0 = now_ns();
        for (int i = 0; i < calls; i++) {
            pid_t pid = fork();
            if (pid == 0) _exit(0);
            if (pid < 0 || waitpid(pid, NULL, 0) != pid) die("fork");
        }
        if (r >= 0) results[r] = (double)(now_ns() - t0) / calls;
    }
    close(a);
    close(c);
    close(lfd);
}

/* Recursion that the compiler cannot turn into a loop: the volatile read after the call. */
static NOINLINE int descend(int levels)
{
    volatile int keep = levels;
    if (levels <= 0) {
        bench_accept_bottom();
        return 0;
    }
    int r = descend(levels - 1);
    return r + keep;
}

/* accept() is called with `depth` frames on the stack (loop_accept down to _start, as a
 * backtrace lists them): probe the frames below the recursion first, then recurse the rest. */
static void bench_accept(void)
{
    probing = 1;
    descend(0);
    int levels = depth - frames_here;
    if (levels < 0) levels = 0;
    descend(levels); /* still probing: check */
    if (frames_here != depth) levels += depth - frames_here;
    if (levels < 0) levels = 0;
    probing = 0;
    descend(levels);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: micro read|recv|recvnb ROUNDS CALLS | micro accept ROUNDS CALLS DEPTH\n");
        return 2;
    }
    rounds = atoi(argv[2]);
    calls = atoi(argv[3]);
    depth = argc > 4 ? atoi(argv[4]) : 0;
    if (rounds < 1 || calls < 1) return 2;
    results = calloc((size_t)rounds, sizeof *results);
    if (strcmp(argv[1], "read") == 0) bench_read();
    else if (strcmp(argv[1], "recv") == 0) bench_recv(0);
    else if (strcmp(argv[1], "recvnb") == 0) bench_recv(1);
    else if (strcmp(argv[1], "accept") == 0) bench_accept();
    else if (strcmp(argv[1], "fork") == 0) bench_fork();
    else return 2;
    printf("ns %s", argv[1]);
    for (int r = 0; r < rounds; r++) printf(" %.2f", results[r]);
    printf("\n");
    if (strcmp(argv[1], "accept") == 0) printf("frames_at_accept %d\n", frames_here);
    return 0;
}
