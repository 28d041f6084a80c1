/*
 * LD_PRELOAD helper for the micro-benchmarks: starts one idle thread and does nothing else.
 * With it, a single-threaded program pays what any second thread costs it (glibc then takes
 * the cancellation path on every cancellable system call), without any hook; the difference
 * to the run with closewait is the hooks' own cost.
 */
#include <pthread.h>
#include <unistd.h>

static void *idle(void *arg)
{
    (void)arg;
    for (;;) pause();
    return NULL;
}

__attribute__((constructor)) static void start_idle_thread(void)
{
    pthread_t t;
    pthread_create(&t, NULL, idle, NULL);
    pthread_detach(t);
}
