/* The watcher process (watcher/process.c): started by a program, serving it and the processes it
 * forks through the region. */
#ifndef CLOSEWAIT_WATCHER_PROCESS_H
#define CLOSEWAIT_WATCHER_PROCESS_H
#include "shared/region.h"

/* Start it; 0 when it runs (wait: for its first word).  logfd: the log, opened for it while the
 * program could (before a drop of privileges), or -1. */
CW_HIDDEN int cw_watcher_process_start(int wait, int logfd);
/* Is this process a watcher? */
CW_HIDDEN extern int cw_in_watcher_process;
/* Does the region have a watcher process that is alive? */
CW_HIDDEN int cw_watcher_process_alive(void);
/* Are the pids of the process's pids cgroup all but used up? */
CW_HIDDEN int cw_pids_all_but_spent(void);
/* Ask the watcher for something about our area and wait until it is done (at most timeout_ms);
 * 0 when answered. */
CW_HIDDEN int cw_watcher_request(_Atomic uint32_t *req, _Atomic uint32_t *done, int timeout_ms);
/* In the constructor: CLOSEWAIT_WATCHER_OF set means this process is a watcher; never returns. */
CW_HIDDEN void cw_watcher_process_main_if_asked(void);
/* In the watcher: it is ready (error NULL), or failed (said in the region, then exit). */
CW_HIDDEN void cw_watcher_process_ready(const char *error);
/* The region's watcher process must leave, and its pid be free, so that a fork can have it. */
CW_HIDDEN int cw_watcher_process_give_way(void);
#endif
