/* What every part of the library uses: visibility, branch hints, the clock, one-line warnings, and
 * the next definition of an interposed function.  Each part has a header of its own beside it. */
#ifndef CLOSEWAIT_BASE_H
#define CLOSEWAIT_BASE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/types.h>

#define CW_HIDDEN __attribute__((visibility("hidden")))
#define CW_LIKELY(x) __builtin_expect(!!(x), 1)
/* Code a forked child runs before it returns from fork(), kept together: a fork does not copy the
 * page tables of a file mapping, so each stretch of this library's text a child runs is a page
 * fault in every child (the kernel maps 64 KiB around it). */
#define CW_FORK_PATH __attribute__((section(".text.hot.cw_fork")))
#define CW_UNLIKELY(x) __builtin_expect(!!(x), 0)
/* Frames kept per backtrace, at most (CLOSEWAIT_STACK_DEPTH). */
#define CW_MAX_DEPTH 64

/* The next definition of an interposed function (libc's), resolved on first use: calls arrive
 * before any constructor has run. */
CW_HIDDEN void *cw_resolve(const char *name);
#define CW_REAL(fn)                                                                        \
    static _Atomic(__typeof__(fn) *) real_##fn##_ptr;                                      \
    __typeof__(fn) *real_##fn = atomic_load_explicit(&real_##fn##_ptr, memory_order_relaxed); \
    if (CW_UNLIKELY(real_##fn == NULL)) {                                                  \
        real_##fn = (__typeof__(fn) *)cw_resolve(#fn);                                     \
        atomic_store_explicit(&real_##fn##_ptr, real_##fn, memory_order_relaxed);          \
    }

/* Set while the library itself runs on this thread: its calls pass the hooks untouched. */
CW_HIDDEN extern __thread int cw_in_lib __attribute__((tls_model("initial-exec")));
/* Set while this thread unwinds: a socket born in a signal handler meanwhile gets no stack. */
CW_HIDDEN extern __thread int cw_in_unwind __attribute__((tls_model("initial-exec")));
/* This process is a watcher process (watcher/process.c), not a program. */
CW_HIDDEN extern int cw_in_watcher_process;

/* The clock */
CW_HIDDEN int64_t cw_now_ms(void);      /* CLOCK_MONOTONIC */
/* CLOCK_MONOTONIC_COARSE: the same clock at its last tick (a few ms behind, never ahead), read
 * without the time counter: for the hooks' timestamps, which are shown in milliseconds and taken
 * at every connection's birth. */
CW_HIDDEN int64_t cw_tick_ms(void);
CW_HIDDEN int64_t cw_wall_ms(void);     /* CLOCK_REALTIME */
CW_HIDDEN int64_t cw_now_ns(void);      /* CLOCK_MONOTONIC */

/* A write of ours to a pipe whose reader is gone must not raise SIGPIPE in the program's thread:
 * blocked around the write, and taken back if it was not pending already. */
struct cw_sigpipe_guard {
    sigset_t old;
    int was_pending;
};
CW_HIDDEN void cw_sigpipe_block(struct cw_sigpipe_guard *g);
CW_HIDDEN void cw_sigpipe_restore(struct cw_sigpipe_guard *g);

/* The library's start (hooks/io.c): the constructor's work, done at most once, whoever comes
 * first (a hooked call can come before the constructor, and so can the public API). */
CW_HIDDEN void cw_init(void);

/* One line on stderr, prefixed, never blocking, never raising SIGPIPE: usable before anything else
 * is set up (options/options.c). */
CW_HIDDEN void cw_warn(const char *a, const char *b, const char *c);
/* Room for one more element at index `count` of a growing array (doubling from `first`); 0 on
 * success, -1 (array unchanged) when memory is short. */
CW_HIDDEN int cw_grow(void *array_ptr, size_t *cap, size_t count, size_t elem, size_t first);
#endif
