/* The clock, one-line warnings, and the growth of the watcher's arrays. */
#define _GNU_SOURCE
#include "base.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The thread-locals every hook touches, defined here together (this object is linked first): on
 * one page of each thread's TLS, which a forked child then copies once, not once for each of
 * them.  The big ones (the call-site cache, the language-stack buffer) come after. */
CW_HIDDEN __thread int cw_in_lib __attribute__((tls_model("initial-exec")));
CW_HIDDEN __thread int cw_in_unwind __attribute__((tls_model("initial-exec")));
CW_HIDDEN __thread struct cw_thread_rec *cw_self_rec __attribute__((tls_model("initial-exec")));
CW_HIDDEN __thread int32_t cw_self_tid_cache __attribute__((tls_model("initial-exec")));
CW_HIDDEN __thread int cw_on_private_table __attribute__((tls_model("initial-exec")));
CW_HIDDEN int cw_in_watcher_process;

void cw_sigpipe_block(struct cw_sigpipe_guard *g)
{
    sigset_t pipe_set, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &g->old);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE);
}

void cw_sigpipe_restore(struct cw_sigpipe_guard *g)
{
    sigset_t pipe_set, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    if (!g->was_pending && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

void cw_warn(const char *a, const char *b, const char *c)
{
    char line[768];
    size_t n = 0;
    const char *parts[] = {"closewait: ", a, b, c, "\n"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        const char *p = parts[i];
        if (p == NULL) continue;
        size_t len = strnlen(p, 256);
        if (n + len >= sizeof line - 1) len = sizeof line - 1 - n;
        memcpy(line + n, p, len);
        n += len;
    }
    /* Never the program's time: a full pipe or a terminal nobody reads loses the line, a pipe
     * whose reader is gone raises no SIGPIPE in the program. */
    int fd = 2;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (S_ISSOCK(st.st_mode)) {
        ssize_t w = send(fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)w;
        return;
    }
    if (S_ISFIFO(st.st_mode)) {
        int size = fcntl(fd, F_GETPIPE_SZ), queued = 0;
        if (size <= 0 || ioctl(fd, FIONREAD, &queued) != 0 || size - queued < (int)n) return;
    }
    struct cw_sigpipe_guard g;
    cw_sigpipe_block(&g);
    ssize_t w = write(fd, line, n);
    (void)w;
    cw_sigpipe_restore(&g);
}

int cw_grow(void *array_ptr, size_t *cap, size_t count, size_t elem, size_t first)
{
    void **array = array_ptr;
    if (count < *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : first;
    void *p = realloc(*array, ncap * elem);
    if (p == NULL) return -1;
    *array = p;
    *cap = ncap;
    return 0;
}

int64_t cw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cw_tick_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cw_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cw_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
