/*
 * LD_PRELOAD helper for the micro-benchmarks: starts one idle thread and does nothing else.
 * With it, a single-threaded program pays what any second thread costs it, without any hook:
 * the kernel takes and drops a reference on the file at every descriptor system call once the
 * descriptor table is shared, and glibc brackets every cancellable call with the cancellation
 * switch.  The difference to the run with closewait is the hooks' own cost.
 *
 * IDLETHREAD_UNSHARE=1: the thread gives itself a private descriptor table (unshare
 * CLONE_FILES, then closes its copies), so only glibc's part of the cost is left; this shows
 * what a watcher thread that does the same would save.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready = PTHREAD_COND_INITIALIZER;
static int started;

static void *idle(void *arg)
{
    (void)arg;
    const char *u = getenv("IDLETHREAD_UNSHARE");
    if (u != NULL && *u == '1' && unshare(CLONE_FILES) == 0) syscall(SYS_close_range, 0u, ~0u, 0);
    pthread_mutex_lock(&lock);
    started = 1;
    pthread_cond_signal(&ready);
    pthread_mutex_unlock(&lock);
    for (;;) pause();
    return NULL;
}

__attribute__((constructor)) static void start_idle_thread(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, idle, NULL) != 0) return;
    pthread_detach(t);
    pthread_mutex_lock(&lock); /* the program starts once the thread has settled */
    while (!started) pthread_cond_wait(&ready, &lock);
    pthread_mutex_unlock(&lock);
}
