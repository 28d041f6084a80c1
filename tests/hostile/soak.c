/*
 * Soak: THREADS threads, each with its own listener, run rounds of up to MAXPAIRS connections
 * at once (all threads start with a full round together: THREADS*MAXPAIRS connections open at
 * the same moment), exchange a request and an answer on each, then the clients close and the
 * server side reads EOF and closes.  In each of its first LEAKS rounds a thread keeps one
 * server socket instead: read EOF and kept ("eof"), never read ("unread"), or EOF read,
 * shutdown(SHUT_WR) and kept ("shut").  THREADS*LEAKS leaks in all, printed as "#leak" lines
 * for the runner to match; nothing else may be reported.
 *
 * Each round's connections are held open HOLD_MS before they close (many open at once, a
 * bounded rate of new ones).
 *
 * usage: soak [seconds] [threads] [maxpairs] [leaks-per-thread] [hold-ms]
 */
#include "common.h"

#include <stdatomic.h>
#include <sys/uio.h>

static int seconds = 30, nthreads = 8, maxpairs = 1000, leaks_per_thread = 5, hold_ms = 20;
static int64_t deadline;
static _Atomic long connections, errors, resets, open_now, open_peak;
/* A connection reset by the peer's kernel (on loopback under this churn: orphaned sockets over
 * tcp_max_orphans, recycled ports) is counted apart: it is the kernel's doing, not a failure of
 * the program or of the library; anything else fails the run. */
#define COUNT_ERROR() \
    ((errno == ECONNRESET || errno == EPIPE) ? atomic_fetch_add(&resets, 1) : atomic_fetch_add(&errors, 1))
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t start_line;

static const char *const kinds[] = {"eof", "unread", "shut"};

static ssize_t rd(int mode, int fd, void *buf, size_t n)
{
    ssize_t r;
    do {
        if (mode == 0) {
            r = read(fd, buf, n);
        } else if (mode == 1) {
            r = recv(fd, buf, n, 0);
        } else {
            struct iovec iov = {buf, n};
            r = readv(fd, &iov, 1);
        }
    } while (r < 0 && errno == EINTR);
    return r;
}

static int read_exact(int mode, int fd, char *buf, size_t n)
{
    size_t have = 0;
    while (have < n) {
        ssize_t r = rd(mode, fd, buf + have, n - have);
        if (r <= 0) return -1;
        have += (size_t)r;
    }
    return 0;
}

static void note_open(long delta)
{
    long now = atomic_fetch_add(&open_now, delta) + delta;
    long peak = atomic_load(&open_peak);
    while (now > peak && !atomic_compare_exchange_weak(&open_peak, &peak, now)) {
    }
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    int mode = id % 3;
    int port, leak_port;
    int lfd = listen_local(4096, &port);
    /* The connections that leak come through a listener of their own: a leaked socket stays
     * in CLOSE_WAIT only while no new connection reuses its 4-tuple (on loopback the kernel
     * recycles the client's closed ports at once, and the reused SYN resets the old socket). */
    int leak_lfd = listen_local(16, &leak_port);
    if (lfd < 0 || leak_lfd < 0) fail_setup("listen");
    int *cli = calloc((size_t)maxpairs, sizeof *cli), *srv = calloc((size_t)maxpairs, sizeof *srv);
    if (cli == NULL || srv == NULL) fail_setup("calloc");
    static const int sizes[] = {1000, 300, 700, 150, 1000, 500, 850, 50};
    pthread_barrier_wait(&start_line);
    for (int round = 0; now_ms() < deadline || round < leaks_per_thread; round++) {
        int b = sizes[round % 8] * maxpairs / 1000;
        if (b < 2) b = 2;
        int made = 0;
        int leak_at = round < leaks_per_thread ? b / 2 : -1;
        for (; made < b; made++) {
            int l = made == leak_at ? leak_lfd : lfd;
            cli[made] = connect_local(made == leak_at ? leak_port : port);
            if (cli[made] < 0) {
                COUNT_ERROR();
                break;
            }
            srv[made] = (id & 1) ? accept4(l, NULL, NULL, SOCK_CLOEXEC) : accept(l, NULL, NULL);
            if (srv[made] < 0) {
                COUNT_ERROR();
                close(cli[made]);
                break;
            }
        }
        note_open(made);
        char req[32], ans[32];
        for (int i = 0; i < made; i++) {
            snprintf(req, sizeof req, "R%03d-%010d", id % 1000, i % 1000000000);
            if (write_all(cli[i], req, 16) != 0) COUNT_ERROR();
        }
        for (int i = 0; i < made; i++) {
            if (read_exact(mode, srv[i], req, 16) != 0) {
                COUNT_ERROR();
                continue;
            }
            req[0] = 'A';
            if (write_all(srv[i], req, 16) != 0) COUNT_ERROR();
        }
        for (int i = 0; i < made; i++)
            if (read_exact(mode, cli[i], ans, 16) != 0 || ans[0] != 'A') COUNT_ERROR();
        if (hold_ms > 0) sleep_ms(hold_ms);
        if (leak_at >= made) leak_at = -1;
        const char *leak_kind = leak_at >= 0 ? kinds[(id * leaks_per_thread + round) % 3] : "";
        /* The client of a connection that leaks by "eof" or "unread" half-closes and keeps its
         * end: closed, it would be an orphan in FIN_WAIT2 that the kernel may reap under this
         * churn, or its port reused for the same 4-tuple, and either resets the leaked socket,
         * sometimes before the watcher has seen it in CLOSE_WAIT at all.  ("shut": the server's
         * FIN would make a kept client end a leak of its own.) */
        for (int i = 0; i < made; i++) {
            if (i == leak_at && strcmp(leak_kind, "shut") != 0) shutdown(cli[i], SHUT_WR);
            else close(cli[i]);
        }
        for (int i = 0; i < made; i++) {
            if (i == leak_at) {
                const char *kind = leak_kind;
                if (strcmp(kind, "unread") != 0) {
                    char x;
                    if (rd(mode, srv[i], &x, 1) != 0) COUNT_ERROR();
                }
                char a[64], p[64];
                endpoint(srv[i], 0, a, sizeof a);
                endpoint(srv[i], 1, p, sizeof p);
                if (strcmp(kind, "shut") == 0) shutdown(srv[i], SHUT_WR);
                pthread_mutex_lock(&print_lock);
                printf("#leak fd=%d local=%s peer=%s kind=%s thread=%d round=%d\n", srv[i], a, p, kind,
                       id, round);
                fflush(stdout);
                pthread_mutex_unlock(&print_lock);
                continue;
            }
            char x;
            if (rd(mode, srv[i], &x, 1) != 0) COUNT_ERROR();
            close(srv[i]);
        }
        note_open(-made);
        atomic_fetch_add(&connections, made);
    }
    close(lfd);
    close(leak_lfd);
    free(cli);
    free(srv);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1) seconds = atoi(argv[1]);
    if (argc > 2) nthreads = atoi(argv[2]);
    if (argc > 3) maxpairs = atoi(argv[3]);
    if (argc > 4) leaks_per_thread = atoi(argv[4]);
    if (argc > 5) hold_ms = atoi(argv[5]);
    if (nthreads < 1 || nthreads > 64 || maxpairs < 2) return 2;
    /* A million loopback connections in 30 s recycle the client ports every second or so: a rare
     * reset must count as an error (printed), not kill the soak before its leaks are checked. */
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)(2 * nthreads * maxpairs + nthreads * leaks_per_thread + 64) > rl.rlim_cur) {
        fprintf(stderr, "soak: %d threads x %d pairs need more than RLIMIT_NOFILE=%ld descriptors\n",
                nthreads, maxpairs, (long)rl.rlim_cur);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    long rss0 = rss_kb("VmRSS");
    printf("# rss_before_kb=%ld\n", rss0);
    pthread_barrier_init(&start_line, NULL, (unsigned)nthreads);
    deadline = now_ms() + seconds * 1000L;
    int64_t t0 = now_ms();
    pthread_t *t = calloc((size_t)nthreads, sizeof *t);
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) != 0) fail_setup("pthread_create");
    for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
    int64_t ms = now_ms() - t0;
    long rss1 = rss_kb("VmRSS"), hwm = rss_kb("VmHWM");
    printf("# connections=%ld in %lld ms (%.0f/s), peak open connections=%ld\n", atomic_load(&connections),
           (long long)ms, atomic_load(&connections) * 1000.0 / (double)(ms ? ms : 1), atomic_load(&open_peak));
    printf("# rss_after_kb=%ld vmhwm_kb=%ld\n", rss1, hwm);
    long want = (long)nthreads * leaks_per_thread;
    printf("leaks_made=%ld errors=%ld resets=%ld\n", want, atomic_load(&errors), atomic_load(&resets));
    wait_for_leaks(want, 15000);
    printf("# rss_end_kb=%ld\n", rss_kb("VmRSS"));
    return atomic_load(&errors) == 0 ? 0 : 1;
}
