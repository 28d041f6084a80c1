/*
 * A pre-forking server: the parent listens and forks 3 workers; each accepts 2 connections in
 * accept_conn(), reads them to EOF and keeps them, says "WORKER pid", and waits for stdin's
 * EOF (all workers share the parent's stdin) before exiting normally.
 */
#include "common.h"

#include <sys/wait.h>

#define WORKERS 3
#define PER_WORKER 2

/* volatile: the loop stays a loop, so both accepts come from one call site (one stack) */
static volatile int per_worker = PER_WORKER;

static __attribute__((noinline)) int accept_conn(int lfd)
{
    int fd = accept(lfd, NULL, NULL); /* @accept_conn */
    if (fd >= 0) cw_drain(fd);
    return fd;
}

static __attribute__((noinline, noreturn)) void worker(int lfd)
{
    int held[PER_WORKER];
    for (int i = 0; i < per_worker && i < PER_WORKER; i++) held[i] = accept_conn(lfd); /* @worker */
    cw_say("WORKER", (int)getpid());
    cw_serve_stdin();
    exit(held[0] >= 0 && held[PER_WORKER - 1] >= 0 ? 0 : 1);
}

int main(void)
{
    int lfd = cw_listen();
    /* Set-up time before forking, as servers have: the library's watcher thread does its first
     * passes over the new listener (and their few allocations) now, not during the forks.  An
     * allocator without fork handlers (ASan's, when the suite runs with a sanitizer runtime)
     * can otherwise leave a child's first malloc waiting forever on a lock held at fork time. */
    usleep(300 * 1000);
    pid_t kids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        fflush(stdout);
        kids[i] = fork();
        if (kids[i] < 0) return 5;
        if (kids[i] == 0) worker(lfd);
    }
    cw_say("FORKED", WORKERS);
    int bad = 0;
    for (int i = 0; i < WORKERS; i++) {
        int st = 0;
        if (waitpid(kids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
    }
    return bad;
}
