/* Unwinding another process's stack from a copy of its top and its registers at a system call
 * (what perf record --call-graph dwarf does), with the CFI of its modules through libdw. */
#ifndef CLOSEWAIT_EBPF_REMOTE_UNWIND_H
#define CLOSEWAIT_EBPF_REMOTE_UNWIND_H
#include <linux/types.h>
#include <stdint.h>
#include <sys/types.h>

#include "ebpf/events.h"

/* Forget the modules of pid (they changed: an exec, a dlopen); read again at the next unwind. */
void cw_remote_unwind_reset(void);
/* The return addresses of the event's stack, innermost (the system call's pc) first; how many
 * (0: no CFI, no stack copy, or libdw missing). */
int cw_remote_unwind(pid_t pid, const struct cw_ev *e, uintptr_t *pcs, int max);
#endif
