/* Small files of /proc and /sys (sys/procfs.c). */
#ifndef CLOSEWAIT_PROCFS_H
#define CLOSEWAIT_PROCFS_H
#include "base.h"

/* The file as a string: its length, -1 if it cannot be read. */
CW_HIDDEN ssize_t cw_read_small(const char *path, char *buf, size_t cap);
/* From /proc/pid/stat (which any process may read): state, parent and start time (clock ticks
 * since boot).  -1 if there is no such process. */
CW_HIDDEN int cw_proc_stat(pid_t pid, char *state, long *ppid, unsigned long long *start);
#endif
