/*
 * Where reports go.  The log descriptor lives at a high number and is checked (device and
 * inode) before every write: daemons close every descriptor at start or dup2 over them, and a
 * report must neither vanish nor land in one of the program's own files.
 */
#define _GNU_SOURCE
#include "sink.h"
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

struct owned_fd {
    int fd;
    dev_t dev;
    ino_t ino;
};

static struct owned_fd log_out = {-1, 0, 0};
static enum { SINK_STDERR, SINK_FILE, SINK_SYSLOG, SINK_OFF } sink_kind = SINK_STDERR;
static char log_path[600];
static int syslog_opened;
static int path_warned;

/* A number high enough that the program's own descriptors (allocated lowest-first) never
 * collide with it, low enough to keep the kernel's fd table small: 1000, or just under a lower
 * limit (programs rarely reach the top; they all start at the bottom). */
static int high_fd_floor(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 3;
    rlim_t floor = 1000;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 1032) floor = rl.rlim_cur > 64 ? rl.rlim_cur - 32 : rl.rlim_cur / 2;
    return floor < 3 ? 3 : (int)floor;
}

int cw_fd_move_high(int fd)
{
    if (fd < 0) return fd;
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, high_fd_floor());
    if (hi < 0) return fd; /* keep the low one: better than nothing */
    close(fd);
    return hi;
}

static int still_ours(const struct owned_fd *o)
{
    struct stat st;
    return o->fd >= 0 && fstat(o->fd, &st) == 0 && st.st_dev == o->dev && st.st_ino == o->ino;
}

static void adopt(struct owned_fd *o, int fd)
{
    struct stat st;
    o->fd = fd;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        o->dev = st.st_dev;
        o->ino = st.st_ino;
    }
}

static void expand_path(const char *spec, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = spec; *p != '\0' && n + 24 < cap; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            n += (size_t)snprintf(out + n, cap - n, "%ld", (long)cw_program_pid());
            p++;
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

static int open_log_file(void)
{
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (fd < 0) {
        if (!path_warned) {
            path_warned = 1;
            cw_warn("cannot open CLOSEWAIT_LOG ", log_path, errno == ELOOP
                                                               ? " (a symlink: refused); reports go to stderr"
                                                               : "; reports go to stderr");
        }
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) &&
        !S_ISCHR(st.st_mode)) {
        close(fd);
        return -1;
    }
    return cw_fd_move_high(fd);
}

void cw_sink_open(void)
{
    if (strcmp(cw_cfg.log_spec, "stderr") == 0) {
        sink_kind = SINK_STDERR;
        adopt(&log_out, cw_fd_move_high(fcntl(2, F_DUPFD_CLOEXEC, 3)));
    } else if (strcmp(cw_cfg.log_spec, "syslog") == 0) {
        sink_kind = SINK_SYSLOG;
    } else if (strcmp(cw_cfg.log_spec, "off") == 0) {
        sink_kind = SINK_OFF;
    } else {
        sink_kind = SINK_FILE;
        expand_path(cw_cfg.log_spec, log_path, sizeof log_path);
        adopt(&log_out, open_log_file());
        if (log_out.fd < 0) {
            sink_kind = SINK_STDERR;
            adopt(&log_out, cw_fd_move_high(fcntl(2, F_DUPFD_CLOEXEC, 3)));
        }
    }
}

/* After fork, a %p path names the child's own file. */
void cw_sink_after_fork(void)
{
    if (syslog_opened) {
        closelog(); /* its ident names the parent */
        syslog_opened = 0;
    }
    if (sink_kind == SINK_FILE && strstr(cw_cfg.log_spec, "%p") != NULL) {
        if (still_ours(&log_out)) close(log_out.fd);
        log_out.fd = -1;
        expand_path(cw_cfg.log_spec, log_path, sizeof log_path);
        adopt(&log_out, open_log_file());
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

void cw_sink_write(const char *text, size_t len)
{
    switch (sink_kind) {
    case SINK_OFF:
        return;
    case SINK_SYSLOG:
        if (!syslog_opened) {
            /* The pid in each record is the program's, also when the watcher is a process. */
            static char ident[48];
            snprintf(ident, sizeof ident, "closewait[%ld]", (long)cw_program_pid());
            openlog(ident, LOG_NDELAY, LOG_DAEMON);
            syslog_opened = 1;
        }
        /* One record per line, as log pipelines expect. */
        for (size_t i = 0; i < len;) {
            size_t j = i;
            while (j < len && text[j] != '\n') j++;
            if (j > i) syslog(LOG_WARNING, "%.*s", (int)(j - i), text + i);
            i = j + 1;
        }
        return;
    case SINK_FILE:
        if (!still_ours(&log_out)) {
            log_out.fd = -1; /* not ours any more: never close it, it is the program's now */
            adopt(&log_out, open_log_file());
        }
        if (log_out.fd >= 0) write_all(log_out.fd, text, len);
        else write_all(2, text, len);
        return;
    case SINK_STDERR:
        if (still_ours(&log_out)) write_all(log_out.fd, text, len);
        else write_all(2, text, len);
        return;
    }
}

/* In the watcher process: the program's log, as a copy of its descriptor (never re-opened:
 * the copy stays valid whatever the program does with its own number). */
void cw_sink_use(int fd)
{
    if (strcmp(cw_cfg.log_spec, "syslog") == 0) sink_kind = SINK_SYSLOG;
    else if (strcmp(cw_cfg.log_spec, "off") == 0) sink_kind = SINK_OFF;
    else sink_kind = SINK_STDERR;
    if (fd >= 0) adopt(&log_out, fd);
}

int cw_sink_fd(void)
{
    return log_out.fd;
}
