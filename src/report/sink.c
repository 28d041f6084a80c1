/*
 * Where reports go.  Every write opens its target and closes it again, so that nothing of ours
 * stays open in the program (a daemon's close-all loop cannot take it, `ls /proc/self/fd` does not
 * show it, and the pipe of a caller that captures the program's output closes when the program's
 * copies do).  The one exception is the watcher process's fd 2: a copy of the stderr of the
 * process that started it, which it drops as soon as no process it watches has that stderr any
 * more (cw_sink_stderr_hold).  Writes never wait long: pipes are written only as far as they have
 * room, opened files are non-blocking, and what cannot be written is counted and said once.
 */
#define _GNU_SOURCE
#include "report/sink.h"
#include "sys/sockets.h"
#include "shared/region.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static long dropped;
static int warned_path, warned_drop;
/* The watcher process's copy of a stderr (its fd 2): what it is. */
static struct {
    int held;
    uint64_t dev, ino;
} held_err;
#define WRITE_BUDGET_MS 200

long cw_sink_dropped(void)
{
    return dropped;
}

/* A number high enough that the program's own descriptors (allocated lowest-first) never
 * collide with it, low enough to keep the kernel's fd table small. */
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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Room in a pipe, -1 if it cannot be told. */
static long pipe_room(int fd)
{
    int size = fcntl(fd, F_GETPIPE_SZ);
    int queued = 0;
    if (size <= 0 || ioctl(fd, FIONREAD, &queued) != 0) return -1;
    return size > queued ? size - queued : 0;
}

/* Writes as much as can go without waiting more than WRITE_BUDGET_MS in all; returns 0 when all
 * of it went.  `own`: the open file description is ours (opened O_NONBLOCK); otherwise it is the
 * program's too, and its blocking mode must stay as it is. */
static int write_bounded(int fd, const char *p, size_t n, int own)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    int is_pipe = S_ISFIFO(st.st_mode), is_sock = S_ISSOCK(st.st_mode);
    struct cw_sigpipe_guard guard;
    cw_sigpipe_block(&guard);
    int64_t deadline = now_ms() + WRITE_BUDGET_MS;
    int rc = 0;
    while (n > 0) {
        size_t chunk = n;
        if (is_pipe && !own) {
            long room = pipe_room(fd);
            if (room == 0) chunk = 0;
            else if (room > 0 && (size_t)room < chunk) chunk = (size_t)room;
        }
        ssize_t w = -1;
        if (chunk > 0) {
            w = is_sock ? send(fd, p, chunk, MSG_DONTWAIT | MSG_NOSIGNAL) : write(fd, p, chunk);
            if (w > 0) {
                p += w;
                n -= (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno != EAGAIN) {
                rc = -1;
                break;
            }
        }
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            rc = -1;
            break;
        }
        struct pollfd pfd = {fd, POLLOUT, 0};
        if (poll(&pfd, 1, (int)(left < 20 ? left : 20)) < 0 && errno != EINTR) {
            rc = -1;
            break;
        }
        if (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)) {
            rc = -1;
            break;
        }
    }
    cw_sigpipe_restore(&guard);
    return rc;
}

static void count_drop(const char *where, int err)
{
    dropped++;
    if (warned_drop) return;
    warned_drop = 1;
    char why[160];
    snprintf(why, sizeof why, " (%s); further reports that cannot be written are counted in the summary",
             err != 0 ? strerror(err) : "no room, or nobody reading");
    cw_warn("a report could not be written to ", where, why);
}

/* A log opened before a drop of privileges, for the reports about one process. */
static struct {
    int fd;
    pid_t pid;
} adopted_log = {-1, 0};

void cw_sink_adopt_log(int fd, pid_t pid)
{
    adopted_log.fd = fd;
    adopted_log.pid = pid;
}

/* The log at path, opened as the checks below allow; -1 (why in *refused or errno). */
static int open_log(const char *path, const char **refused)
{
    *refused = NULL;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK, 0600);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) *refused = "cannot be examined";
    else if (S_ISREG(st.st_mode) && st.st_uid != geteuid()) *refused = "belongs to another user";
    else if (S_ISREG(st.st_mode) && (st.st_mode & 022)) *refused = "is writable by group or others";
    else if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) *refused = "is not a file";
    if (*refused != NULL) {
        close(fd);
        return -1;
    }
    return fd;
}

int cw_sink_preopen(void)
{
    const char *spec = cw_cfg.log_spec;
    if (strcmp(spec, "stderr") == 0 || strcmp(spec, "syslog") == 0 || strcmp(spec, "off") == 0) return -1;
    int saved = errno;
    char path[600];
    expand_path(spec, path, sizeof path);
    const char *refused;
    int fd = open_log(path, &refused);
    errno = saved;
    return fd;
}

/* CLOSEWAIT_LOG=path: opened for each write.  Never a file that another user owns or could
 * write: a root program must not append to what a less privileged user prepared for it. */
static void write_file(const char *text, size_t len)
{
    if (adopted_log.fd >= 0 && adopted_log.pid == cw_program_pid()) {
        if (write_bounded(adopted_log.fd, text, len, 1) != 0) count_drop("CLOSEWAIT_LOG", errno);
        return;
    }
    char path[600];
    expand_path(cw_cfg.log_spec, path, sizeof path);
    const char *refused = NULL;
    int fd = open_log(path, &refused);
    if (fd < 0 && refused == NULL) {
        int err = errno;
        if (!warned_path) {
            warned_path = 1;
            cw_warn("cannot open CLOSEWAIT_LOG ", path,
                    err == ELOOP ? " (a symlink: refused); reports are not written"
                    : err == ENXIO ? " (a FIFO nobody reads); reports are not written"
                                   : "; reports are not written");
        }
        dropped++;
        return;
    }
    if (fd < 0) {
        if (!warned_path) {
            warned_path = 1;
            char why[120];
            snprintf(why, sizeof why, " %s: refused, reports are not written", refused);
            cw_warn("CLOSEWAIT_LOG ", path, why);
        }
        dropped++;
        return;
    }
    int err = 0;
    if (write_bounded(fd, text, len, 1) != 0) err = errno;
    close(fd);
    if (err != 0) count_drop(path, err);
}

/* The program's stderr, as this process can reach it. */
static void write_stderr(const char *text, size_t len)
{
    if (cw_in_watcher_process) {
        struct cw_area *a = cw_current_area();
        if (a != NULL && !cw_sink_holds_stderr_of(a)) {
            /* Not the stderr we were handed: a file or a terminal is opened by name; a pipe or a
             * socket of another process cannot be reached. */
            uint32_t kind = a->err.kind;
            char path[sizeof a->err.path];
            memcpy(path, a->err.path, sizeof path);
            path[sizeof path - 1] = '\0';
            if ((kind == ERR_FILE || kind == ERR_TTY) && path[0] == '/') {
                int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
                struct stat st;
                if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_dev == a->err.dev && (uint64_t)st.st_ino == a->err.ino) {
                    if (write_bounded(fd, text, len, 1) != 0) count_drop("stderr", errno);
                } else {
                    dropped++;
                }
                if (fd >= 0) close(fd);
            } else if (kind != ERR_NONE) {
                dropped++;
            }
            return;
        }
        if (held_err.held && write_bounded(2, text, len, 0) != 0) count_drop("stderr", errno);
        return;
    }
    /* In the program: its fd 2 as it is now, unless that is a network socket (an inetd-style
     * server's client).  A watcher thread on a table of its own reaches it through /proc. */
    int fd = 2, own = 0;
    if (cw_on_private_table) {
        fd = open("/proc/self/fd/2", O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
            dropped++;
            return;
        }
        own = 1;
    }
    struct stat st;
    int domain = AF_UNIX;
    socklen_t dl = sizeof domain;
    if (fstat(fd, &st) != 0 ||
        (S_ISSOCK(st.st_mode) && (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) != 0 || domain != AF_UNIX))) {
        dropped++;
    } else if (write_bounded(fd, text, len, own) != 0) {
        count_drop("stderr", errno);
    }
    if (own) close(fd);
}

void cw_sink_write(const char *text, size_t len)
{
    const char *spec = cw_cfg.log_spec;
    if (strcmp(spec, "off") == 0) return;
    if (strcmp(spec, "syslog") == 0) {
        /* The pid in each record is the program's, also when the watcher is a process. */
        char ident[48];
        snprintf(ident, sizeof ident, "closewait[%ld]", (long)cw_program_pid());
        openlog(ident, 0, LOG_DAEMON);
        /* One record per line, as log pipelines expect. */
        for (size_t i = 0; i < len;) {
            size_t j = i;
            while (j < len && text[j] != '\n') j++;
            if (j > i) syslog(LOG_WARNING, "%.*s", (int)(j - i), text + i);
            i = j + 1;
        }
        /* No socket of ours left open in the program. */
        closelog();
        return;
    }
    if (strcmp(spec, "stderr") == 0) write_stderr(text, len);
    else write_file(text, len);
}

/* ---- stderr: the program publishes it, the watcher holds a copy while it must ---- */

void cw_sink_publish_stderr(void)
{
    struct cw_area *me = cw_me;
    if (me == NULL || cw_in_watcher_process) return;
    int saved = errno;
    struct cw_stderr_id *e = &me->err;
    uint32_t gen = atomic_load_explicit(&e->gen, memory_order_relaxed);
    atomic_store_explicit(&e->gen, gen | 1u, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    struct stat st;
    e->path[0] = '\0';
    if (fstat(2, &st) != 0) {
        e->kind = ERR_NONE;
        e->dev = e->ino = 0;
    } else {
        e->dev = (uint64_t)st.st_dev;
        e->ino = (uint64_t)st.st_ino;
        e->kind = S_ISREG(st.st_mode) ? ERR_FILE
                  : S_ISCHR(st.st_mode) ? ERR_TTY
                  : S_ISFIFO(st.st_mode) ? ERR_PIPE
                  : S_ISSOCK(st.st_mode) ? ERR_UNIX
                                         : ERR_OTHER;
        if (e->kind == ERR_FILE || e->kind == ERR_TTY) {
            ssize_t n = readlink("/proc/self/fd/2", e->path, sizeof e->path - 1);
            e->path[n > 0 ? n : 0] = '\0';
        }
    }
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&e->gen, (gen | 1u) + 1u, memory_order_release);
    errno = saved;
}

int cw_sink_holds_stderr_of(const struct cw_area *a)
{
    return held_err.held && a->err.dev == held_err.dev && a->err.ino == held_err.ino &&
           (atomic_load(&a->err.gen) & 1u) == 0;
}

void cw_sink_stderr_hold(int needed)
{
    static int looked;
    if (!looked) {
        looked = 1;
        struct stat st, null;
        if (fstat(2, &st) == 0 && !(stat("/dev/null", &null) == 0 && st.st_rdev == null.st_rdev && S_ISCHR(st.st_mode))) {
            held_err.held = 1;
            held_err.dev = (uint64_t)st.st_dev;
            held_err.ino = (uint64_t)st.st_ino;
        }
    }
    if (needed || !held_err.held) return;
    held_err.held = 0;
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 2);
        close(null);
    }
}
