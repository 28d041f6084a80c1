/* The watcher as the hooks see it: when it starts, what a fork, a change of credentials and an
 * exit mean for it.  Its inside is watcher/internal.h. */
#ifndef CLOSEWAIT_WATCHER_H
#define CLOSEWAIT_WATCHER_H
#include "base.h"

CW_HIDDEN void cw_watcher_start(void);
/* The first TCP socket of the process is being born: start the watcher if it waits for that. */
CW_HIDDEN void cw_watcher_first_tcp(void);
CW_HIDDEN void cw_watcher_before_fork(void);
CW_HIDDEN void cw_watcher_after_fork_child(void);
CW_HIDDEN void cw_watcher_at_exit(void);
/* The process changed its credentials: what watches it must have no more privilege. */
/* logfd: the log, opened before the change (-1: none); taken over. */
CW_HIDDEN void cw_watcher_credentials_changed(int logfd, int start_now);
/* Before a birth: is the watcher still there?  Replaces a dead one. */
CW_HIDDEN extern uint32_t cw_watcher_alive_seen;
CW_HIDDEN void cw_watcher_check_slow(void);
static inline void cw_watcher_check(_Atomic uint32_t *alive_word)
{
    if (CW_LIKELY(cw_watcher_alive_seen != 0 &&
                  atomic_load_explicit(alive_word, memory_order_relaxed) == cw_watcher_alive_seen))
        return;
    cw_watcher_check_slow();
}
/* In the watcher process: the loop over the region's processes. */
CW_HIDDEN void cw_watcher_run_process(void);
/* In the watcher process: the process that started it, whose pid `%p` in CLOSEWAIT_METRICS is. */
CW_HIDDEN void cw_metrics_set_owner(pid_t pid);
#endif
