/*
 * fork() from a multithreaded program while the other threads are inside the library's hooks
 * (socket, accept, connect, read to EOF, dup, close: each birth and EOF takes a backtrace).
 * Every child runs hooks of its own (a TCP exchange), then exit(): it must finish, with status
 * 0, within its deadline (10 s; a child slower than 2 s to finish is counted too: without the
 * library each one takes milliseconds).  A child that hangs is killed and counted.
 *
 * All forks must be done within BUDGET seconds (default 60): a program whose children each
 * take seconds to exit does not finish its forks, and says so.
 *
 * usage: h_fork [forks] [threads] [budget-seconds]
 */
#include "common.h"

#include <stdatomic.h>

static int port;
static int lfd;
static _Atomic int stop;
static _Atomic long worker_rounds, worker_errors;

static void *worker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int c = connect_local(port);
        if (c < 0) {
            atomic_fetch_add(&worker_errors, 1);
            continue;
        }
        int s = accept(lfd, NULL, NULL);
        if (s < 0) {
            atomic_fetch_add(&worker_errors, 1);
            close(c);
            continue;
        }
        int d = dup(s);
        write_all(c, "hello", 5);
        close(c);
        if (drain_to_eof(d) != 0) atomic_fetch_add(&worker_errors, 1);
        close(d);
        close(s);
        atomic_fetch_add(&worker_rounds, 1);
    }
    return NULL;
}

/* In the child: a full exchange of its own through the hooks, then a normal exit. */
static int child_main(void)
{
    alarm(20); /* last resort: the parent's deadline is shorter */
    int cport;
    int l = listen_local(16, &cport);
    if (l < 0) return 3;
    for (int i = 0; i < 3; i++) {
        int c = connect_local(cport);
        int s = accept(l, NULL, NULL);
        if (c < 0 || s < 0) return 4;
        if (write_all(c, "ping", 4) != 0) return 5;
        char b[4];
        if (read(s, b, 4) != 4 || memcmp(b, "ping", 4) != 0) return 6;
        close(c);
        if (drain_to_eof(s) != 0) return 7;
        close(s);
    }
    close(l);
    /* The parent's listener is inherited: a connection to it works as well. */
    int c = connect_local(port);
    if (c < 0) return 8;
    close(c);
    return 0;
}

int main(int argc, char **argv)
{
    int forks = argc > 1 ? atoi(argv[1]) : 200;
    int nthreads = argc > 2 ? atoi(argv[2]) : 4;
    int budget_s = argc > 3 ? atoi(argv[3]) : 60;
    lfd = listen_local(4096, &port);
    if (lfd < 0) fail_setup("listen");
    pthread_t t[16];
    if (nthreads > 16) nthreads = 16;
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0) fail_setup("pthread_create");
    sleep_ms(50);

    int ok = 0, bad_status = 0, hangs = 0, crashes = 0;
    int64_t slowest = 0, slow = 0, over2s = 0, budget_end = now_ms() + budget_s * 1000L;
    int done = 0;
    for (int i = 0; i < forks && now_ms() < budget_end; i++) {
        done++;
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) fail_setup("fork");
        if (pid == 0) exit(child_main());
        int64_t start = now_ms(), deadline = start + 10000;
        int status = 0;
        pid_t w;
        while ((w = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < deadline) sleep_ms(1);
        if (w == 0) {
            hangs++;
            fprintf(stderr, "child %d (fork #%d) still running after 10 s: killed\n", (int)pid, i);
            if (getenv("HOSTILE_DEBUG_HANG") != NULL) sleep_ms(120000); /* time to attach a debugger */
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            continue;
        }
        if (now_ms() - start > slowest) slowest = now_ms() - start;
        if (now_ms() - start > 1000) slow++;
        if (now_ms() - start > 2000) over2s++;
        if (WIFSIGNALED(status)) {
            crashes++;
            fprintf(stderr, "child %d (fork #%d) died of signal %d\n", (int)pid, i, WTERMSIG(status));
        } else if (WEXITSTATUS(status) != 0) {
            bad_status++;
            fprintf(stderr, "child %d (fork #%d) exited %d\n", (int)pid, i, WEXITSTATUS(status));
        } else {
            ok++;
        }
    }
    atomic_store(&stop, 1);
    /* Wake workers blocked in accept. */
    for (int i = 0; i < nthreads; i++) {
        int c = connect_local(port);
        if (c >= 0) close(c);
    }
    for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
    printf("# worker_rounds=%ld slowest_child_ms=%lld children_over_1s=%lld\n", atomic_load(&worker_rounds),
           (long long)slowest, (long long)slow);
    printf("forks=%d done_within_budget=%d children_ok=%d bad_status=%d hangs=%d crashes=%d\n", forks, done,
           ok, bad_status, hangs, crashes);
    printf("children_slower_than_2s=%lld\n", (long long)over2s);
    printf("worker_errors=%ld\n", atomic_load(&worker_errors));
    return ok == forks && over2s == 0 && atomic_load(&worker_errors) == 0 ? 0 : 1;
}
