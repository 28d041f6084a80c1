/*
 * Children: a socket accepted without SOCK_CLOEXEC crosses into whatever the program spawns
 * (and with fork without exec, CLOEXEC does not even help).  When the parent closes its copy
 * the connection lives on in the child, which never knew it had it, and `ss` shows only the
 * child.  Each spawn is recorded here with its backtrace and the sockets open at that moment;
 * the watcher later finds which of them sit in CLOSE_WAIT held by another process.
 */
#define _GNU_SOURCE
#include "sys/sockets.h"
#include "watcher/watcher.h"
#include "watcher/process.h"
#include "unwind/stacks.h"
#include "shared/region.h"

#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#pragma GCC visibility push(default)

#define spawn_next (cw_private.spawn_next)

/* Snapshot of the tracked connections (not listeners: a prefork child inheriting the listener
 * is the design, not a leak).  In the region, not malloc'ed: fork may be called from a signal
 * handler; and the watcher process reads them there. */
static void record(int kind, pid_t child, uint32_t stack)
{
    struct cw_area *me = cw_me;
    if (me == NULL) return;
    size_t n = 0;
    for (int fd = cw_table_next(0); fd >= 0; fd = cw_table_next(fd + 1)) {
        struct cw_slot *s = cw_slot_peek(fd);
        if (s != NULL && CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire)) == CW_KIND_TCP) n++;
    }
    if (n == 0) return;
    if (n > CW_SPAWN_SOCKS) n = CW_SPAWN_SOCKS;
    /* Take the next record in the ring; one still being read by the watcher is skipped. */
    struct cw_spawn *r = NULL;
    struct cw_crossed *socks = NULL;
    for (int tries = 0; tries < CW_MAX_SPAWNS; tries++) {
        unsigned i = atomic_fetch_add(&spawn_next, 1) % CW_MAX_SPAWNS;
        struct cw_spawn *cand = &me->spawns[i];
        int expected = atomic_load(&cand->state);
        if (expected == 1 || !atomic_compare_exchange_strong(&cand->state, &expected, 1)) continue;
        r = cand;
        socks = me->crossed[i];
        break;
    }
    if (r == NULL) return;
    size_t k = 0;
    for (int fd = cw_table_next(0); fd >= 0 && k < n; fd = cw_table_next(fd + 1)) {
        struct cw_slot *s = cw_slot_peek(fd);
        if (s == NULL || CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire)) != CW_KIND_TCP) continue;
        uint64_t id = atomic_load_explicit(&s->id, memory_order_relaxed);
        if (id == 0) {
            struct stat st;
            if (fstat(fd, &st) != 0) continue;
            id = (uint64_t)st.st_ino;
        }
        socks[k].fd = fd;
        socks[k].id = id;
        socks[k].open_stack = atomic_load_explicit(&s->open_stack, memory_order_relaxed);
        socks[k].open_ms = atomic_load_explicit(&s->open_ms, memory_order_relaxed);
        socks[k].opened_by = atomic_load_explicit(&s->opened_by, memory_order_relaxed);
        socks[k].w_done = 0;
        socks[k].w_searches = 0;
        socks[k].w_fin_ms = 0;
        k++;
    }
    r->kind = kind;
    r->child = child;
    r->stack = stack;
    r->when_ms = cw_now_ms();
    r->nsocks = k;
    atomic_store(&r->state, k > 0 ? 2 : 0);
}

static uint32_t spawn_stack(void)
{
    return cw_in_lib ? 0 : cw_stack_capture();
}

CW_FORK_PATH pid_t fork(void)
{
    CW_REAL(fork);
    int saved = errno;
    uint32_t stack = spawn_stack();
    cw_stacks_fork_prepare();
    cw_private.fork_hooked = 1;
    /* errno lives in a private page the program may not write between its forks: written
     * after a fork, that page is copied (a fault) each time; so only when it changed. */
    if (errno != saved) errno = saved;
    pid_t r = real_fork();
    int err = errno;
    if (r != 0) cw_region_fork_result(r, stack);
    /* Out of pids (a container's pids limit): the program's own fork must not fail for the pid
     * our watcher takes.  It leaves, and the fork is tried again while the pid is freed. */
    if (r < 0 && err == EAGAIN && cw_watcher_process_give_way() == 0) {
        cw_warn("the pids limit is reached: the watcher process left so that the program's fork could have its pid; ",
                "reports are written at exit only", NULL);
        for (int i = 0; i < 40; i++) {
            struct timespec ts = {0, 5 * 1000000L};
            nanosleep(&ts, NULL);
            r = real_fork();
            err = errno;
            if (r != 0) cw_region_fork_result(r, stack);
            if (r >= 0 || err != EAGAIN) break;
        }
    }
    cw_stacks_fork_done();
    if (r != 0) cw_private.fork_hooked = 0;
    if (r > 0) record(CW_SPAWN_FORK, r, stack);
    if (errno != err) errno = err;
    return r;
}

/* posix_spawn and posix_spawnp: the same bookkeeping around either. */
static int after_spawn(int r, pid_t child, pid_t *pid)
{
    if (pid != NULL) *pid = child;
    if (r == 0) {
        int saved = errno;
        record(CW_SPAWN_POSIX_SPAWN, child, spawn_stack());
        errno = saved;
    }
    return r;
}

int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    CW_REAL(posix_spawn);
    pid_t child = 0;
    int r = real_posix_spawn(&child, path, fa, attr, argv, envp);
    return after_spawn(r, child, pid);
}

int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    CW_REAL(posix_spawnp);
    pid_t child = 0;
    int r = real_posix_spawnp(&child, file, fa, attr, argv, envp);
    return after_spawn(r, child, pid);
}

/* system() returns when its child has exited; what matters is what the command left running
 * in the background, whose pid we never learn: record before the call. */
int system(const char *command)
{
    CW_REAL(system);
    if (command != NULL) {
        int saved = errno;
        record(CW_SPAWN_SYSTEM, 0, spawn_stack());
        errno = saved;
    }
    return real_system(command);
}

FILE *popen(const char *command, const char *type)
{
    CW_REAL(popen);
    FILE *r = real_popen(command, type);
    if (r != NULL) {
        int saved = errno;
        record(CW_SPAWN_POPEN, 0, spawn_stack());
        errno = saved;
    }
    return r;
}

#pragma GCC visibility pop

