/* Small files of /proc and /sys: read whole, bounded. */
#define _GNU_SOURCE
#include "sys/procfs.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* A small file of /proc or /sys, as a string: its length, -1 if it cannot be read. */
ssize_t cw_read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    return n;
}

/* From /proc/pid/stat: state, parent and start time (clock ticks since boot).  -1 if there is no
 * such process. */
int cw_proc_stat(pid_t pid, char *state, long *ppid, unsigned long long *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    if (cw_read_small(path, buf, sizeof buf) < 0) return -1;
    /* pid (comm) state ppid ...: comm may hold spaces and parentheses, the last ')' ends it */
    const char *p = strrchr(buf, ')');
    if (p == NULL ||
        sscanf(p + 1, " %c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", state, ppid,
               start) != 3)
        return -1;
    return 0;
}


