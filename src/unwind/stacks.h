/* Backtraces: captured at a socket's birth and EOF, deduplicated in the region's stack store. */
#ifndef CLOSEWAIT_STACKS_H
#define CLOSEWAIT_STACKS_H
#include "base.h"

CW_HIDDEN void cw_stacks_init(void);
/* Capture the caller's stack (our own frames removed) and return its id, 0 on failure. */
CW_HIDDEN uint32_t cw_stack_capture(void);
/* The same, the walk to the program's call site starting at `frame`: the frame of the hook the
 * program called (its __builtin_frame_address(0)), so that our frames below it are not walked. */
CW_HIDDEN uint32_t cw_stack_capture_from(const void *frame);
/* Keep a list of words in the same deduplicated store, not as a backtrace of this thread: a stack
 * captured elsewhere (another process's, by the eBPF front-end, which publishes that process's
 * modules itself) or a list of callbacks (the caller makes sure the watcher knows the modules of
 * every code address in it).  At most CW_MAX_DEPTH words are kept; its id, 0 on failure. */
CW_HIDDEN uint32_t cw_stack_store(const uintptr_t *values, int n);
/* Frames of stack id; returns depth (0 if unknown). */
CW_HIDDEN int cw_stack_frames(uint32_t id, const uintptr_t **pcs);
/* Around fork(): no thread unwinding while the process is copied. */
CW_HIDDEN void cw_stacks_fork_prepare(void);
CW_HIDDEN void cw_stacks_fork_done(void);
/* The return address into the program of the hook running on this thread (our frames skipped):
 * 1 if found. */
CW_HIDDEN int cw_stack_program_return(uintptr_t *ret);
#endif
