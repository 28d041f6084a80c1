/*
 * Signals at 1 kHz whose handler opens, uses and closes descriptors (socketpair, pipe, TCP)
 * while the main thread loops in accept/read/close on TCP and a client thread keeps it busy.
 * The handler interrupts the main thread anywhere, also inside the library's hooks and inside
 * its unwinder.  Every call the handler makes must behave as without the library: writes and
 * reads succeed, closes really close (no descriptor left behind), errno is kept.
 *
 * usage: h_signals [seconds]
 */
#include "common.h"

#include <stdatomic.h>
#include <sys/time.h>

static int port;
static volatile sig_atomic_t stop;
static _Atomic long sig_count, sig_errors, sig_tcp;
static _Atomic int first_error_where, first_error_errno;

static void sig_fail(int where, int e)
{
    int zero = 0;
    if (atomic_compare_exchange_strong(&first_error_where, &zero, where)) atomic_store(&first_error_errno, e);
    atomic_fetch_add(&sig_errors, 1);
}

static void on_alarm(int sig)
{
    (void)sig;
    int saved = errno;
    long n = atomic_fetch_add(&sig_count, 1);
    char b = (char)n, r = 0;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        sig_fail(1, errno);
    } else {
        errno = 4242;
        if (write(sv[0], &b, 1) != 1) sig_fail(2, errno);
        else if (errno != 4242) sig_fail(3, errno);
        if (read(sv[1], &r, 1) != 1 || r != b) sig_fail(4, errno);
        else if (errno != 4242) sig_fail(5, errno);
        if (close(sv[0]) != 0) sig_fail(6, errno);
        /* EOF on the other end: the close above must have been real. */
        if (read(sv[1], &r, 1) != 0) sig_fail(7, errno);
        if (close(sv[1]) != 0) sig_fail(8, errno);
        /* A second close of the same number says EBADF, as without the library. */
        if (close(sv[1]) != -1 || errno != EBADF) sig_fail(9, errno);
    }

    int p[2];
    if (pipe(p) != 0) {
        sig_fail(10, errno);
    } else {
        if (write(p[1], &b, 1) != 1) sig_fail(11, errno);
        if (read(p[0], &r, 1) != 1 || r != b) sig_fail(12, errno);
        if (close(p[1]) != 0) sig_fail(13, errno);
        if (read(p[0], &r, 1) != 0) sig_fail(14, errno);
        if (close(p[0]) != 0) sig_fail(15, errno);
    }

    if (n % 4 == 0) {
        /* A TCP connection to the main thread's listener, closed at once: the main loop
         * accepts it and reads EOF (or a reset). */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            sig_fail(16, errno);
        } else {
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS &&
                errno != EAGAIN)
                sig_fail(17, errno);
            if (close(fd) != 0) sig_fail(18, errno);
            atomic_fetch_add(&sig_tcp, 1);
        }
    }
    errno = saved;
}

static _Atomic long client_ok, client_bad;
static _Atomic int client_done;

static void *client(void *arg)
{
    (void)arg;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &s, NULL); /* the signals go to the main thread */
    for (long i = 0; !stop; i++) {
        int fd = connect_local(port);
        if (fd < 0) {
            atomic_fetch_add(&client_bad, 1);
            sleep_ms(1);
            continue;
        }
        char msg[32], got[32];
        int len = snprintf(msg, sizeof msg, "PING %ld\n", i);
        int ok = write_all(fd, msg, (size_t)len) == 0;
        int have = 0;
        int64_t until = now_ms() + 5000;
        while (ok && have < len) {
            struct pollfd cp = {.fd = fd, .events = POLLIN};
            if (poll(&cp, 1, 50) <= 0) {
                if (now_ms() > until) ok = 0;
                continue;
            }
            ssize_t r = read(fd, got + have, (size_t)(len - have));
            if (r <= 0) {
                ok = 0;
                break;
            }
            have += (int)r;
        }
        if (ok && memcmp(msg, got, (size_t)len) == 0) atomic_fetch_add(&client_ok, 1);
        else atomic_fetch_add(&client_bad, 1);
        close(fd);
    }
    atomic_store(&client_done, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 3;
    int lfd = listen_local(4096, &port);
    if (lfd < 0) fail_setup("listen");
    int fds_before = count_fds_below(900);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: the main loop sees EINTR */
    sigaction(SIGALRM, &sa, NULL);

    pthread_t t;
    if (pthread_create(&t, NULL, client, NULL) != 0) fail_setup("pthread_create");

    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, NULL);

    long served = 0, eofs = 0, resets = 0, eintr = 0, errors = 0, errno_clobbered = 0, stuck = 0;
    int64_t end = now_ms() + seconds * 1000;
    while (!atomic_load(&client_done)) {
        if (now_ms() >= end) stop = 1;
        struct pollfd pf = {.fd = lfd, .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0) continue;
        errno = 777;
        int s = accept(lfd, NULL, NULL);
        if (s < 0) {
            if (errno == EINTR) eintr++;
            else errors++;
            continue;
        }
        if (errno != 777) errno_clobbered++;
        /* Bounded: a connection whose peer never closes (its close() did not happen) is
         * given up after two seconds and counted. */
        int64_t conn_deadline = now_ms() + 2000;
        char buf[64];
        int have = 0, done = 0;
        while (!done) {
            if (now_ms() > conn_deadline) {
                stuck++;
                break;
            }
            struct pollfd sp = {.fd = s, .events = POLLIN};
            if (poll(&sp, 1, 50) <= 0) continue;
            errno = 777;
            ssize_t r = read(s, buf + have, sizeof buf - (size_t)have);
            if (r > 0) {
                if (errno != 777) errno_clobbered++;
                have += (int)r;
                if (memchr(buf, '\n', (size_t)have) != NULL) {
                    write_all(s, buf, (size_t)have);
                    have = 0;
                    served++;
                }
            } else if (r == 0) {
                if (errno != 777) errno_clobbered++;
                eofs++;
                done = 1;
            } else if (errno == EINTR) {
                eintr++;
            } else if (errno == ECONNRESET) {
                resets++;
                done = 1;
            } else {
                errors++;
                done = 1;
            }
        }
        errno = 777;
        if (close(s) != 0) errors++;
        else if (errno != 777) errno_clobbered++;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    pthread_join(t, NULL);
    close(lfd);
    int fds_after = count_fds_below(900);

    printf("# signals=%ld handler_tcp=%ld served=%ld eofs=%ld resets=%ld eintr=%ld client_ok=%ld\n",
           atomic_load(&sig_count), atomic_load(&sig_tcp), served, eofs, resets, eintr,
           atomic_load(&client_ok));
    if (atomic_load(&sig_errors) != 0)
        printf("# first handler error at check %d: %s\n", atomic_load(&first_error_where),
               errno_name(atomic_load(&first_error_errno)));
    int ok = 1;
    printf("handler_errors=%ld\n", atomic_load(&sig_errors));
    printf("main_errors=%ld errno_clobbered=%ld stuck_connections=%ld\n", errors, errno_clobbered, stuck);
    printf("client_bad=%ld\n", atomic_load(&client_bad));
    printf("fds_left=%d\n", fds_after - fds_before + 1 /* the listener, closed */);
    printf("signals_enough=%d served_enough=%d\n", atomic_load(&sig_count) > seconds * 300L,
           served > 100);
    ok = atomic_load(&sig_errors) == 0 && errors == 0 && errno_clobbered == 0 && stuck == 0 &&
         atomic_load(&client_bad) == 0 && fds_after == fds_before - 1;
    return ok ? 0 : 1;
}
