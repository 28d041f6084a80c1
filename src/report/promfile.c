/*
 * CLOSEWAIT_METRICS: the metrics file, written as the textfile collector wants it: a whole new
 * file renamed over the old one, never a file rewritten in place.
 *
 * The same trust rules as CLOSEWAIT_LOG (sink.c), adapted to a file that is replaced rather than
 * appended to: an existing file at the path that is a symlink, not a regular file, another
 * user's, or writable by group or others is refused, and so is a directory that others may write
 * without the sticky bit (anyone could put their own numbers in our place there).  The name must
 * end in `.prom`: the collector reads nothing else, and a typo must not replace some other file.
 * The temporary file is created with O_EXCL and O_NOFOLLOW, so no name prepared by someone else
 * is ever written through; rename() replaces a name, it never follows one.
 *
 * Two watchers must not take turns at one file (each knows only its own processes: the numbers
 * would jump at every write).  The first line names the process that wrote it, with its start
 * time; a watcher that finds the file written by another one still alive leaves it alone and
 * says so once.  (A program that forks before its first TCP socket, or whose processes change
 * credentials, has a watcher per process: `%p` gives each a file.)
 */
#define _GNU_SOURCE
#include "report/promfile.h"
#include "sys/procfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int warned;

int cw_promfile_names_pid(const char *spec)
{
    for (const char *p = spec; *p != '\0'; p++)
        if (p[0] == '%' && p[1] == 'p') return 1;
    return 0;
}

static void expand(const char *spec, pid_t pid, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = spec; *p != '\0' && n + 24 < cap; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            n += (size_t)snprintf(out + n, cap - n, "%ld", (long)pid);
            p++;
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

/* The first failure of this watcher, said once: the path, then why. */
static int fail(const char *path, const char *why)
{
    if (!warned) {
        warned = 1;
        char line[160];
        snprintf(line, sizeof line, " %s; metrics are not written", why);
        cw_warn("CLOSEWAIT_METRICS ", path, line);
    }
    return -1;
}

static int fail_errno(const char *path, const char *what, int err)
{
    char why[120];
    snprintf(why, sizeof why, "%s: %s", what, strerror(err));
    return fail(path, why);
}

/* The first line of the file: who wrote it. */
static void writer_mark(char *out, size_t cap)
{
    char state;
    long ppid;
    unsigned long long start = 0;
    if (cw_proc_stat(getpid(), &state, &ppid, &start) != 0) start = 0;
    snprintf(out, cap, "# closewait: written by pid %ld started %llu\n", (long)getpid(), start);
}

/* The file as it is was written by another process that is still alive: its pid, else 0. */
static long other_writer(int dfd, const char *name)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return 0;
    char line[128];
    struct stat st;
    ssize_t n = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, line, sizeof line - 1) : -1;
    close(fd);
    if (n <= 0) return 0;
    line[n] = '\0';
    long pid;
    unsigned long long start, now_start;
    char state;
    long ppid;
    if (sscanf(line, "# closewait: written by pid %ld started %llu", &pid, &start) != 2 || pid <= 0 || pid == (long)getpid())
        return 0;
    if (cw_proc_stat((pid_t)pid, &state, &ppid, &now_start) != 0 || now_start != start || state == 'Z') return 0;
    return pid;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int cw_promfile_write(const char *spec, pid_t pid, const char *text, size_t len)
{
    char path[600];
    expand(spec, pid, path, sizeof path);
    if (path[0] != '/') return fail(path, "is not an absolute path");
    const char *slash = strrchr(path, '/');
    const char *name = slash + 1;
    size_t nlen = strlen(name);
    if (nlen <= 5 || strcmp(name + nlen - 5, ".prom") != 0)
        return fail(path, "does not end in .prom (the only files node_exporter's textfile collector reads)");
    char dir[600];
    size_t dlen = slash == path ? 1 : (size_t)(slash - path);
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';

    int saved = errno;
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        int err = errno;
        errno = saved;
        return fail_errno(path, "its directory cannot be opened", err);
    }
    int rc = -1;
    struct stat st;
    const char *refused = NULL;
    if (fstat(dfd, &st) != 0) refused = "its directory cannot be examined";
    else if ((st.st_mode & 002) && !(st.st_mode & S_ISVTX)) refused = "is in a directory anyone may write (no sticky bit)";
    else if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISLNK(st.st_mode)) refused = "is a symlink: refused";
        else if (!S_ISREG(st.st_mode)) refused = "is not a regular file: refused";
        else if (st.st_uid != geteuid()) refused = "belongs to another user: refused";
        else if (st.st_mode & 022) refused = "is writable by group or others: refused";
    } else if (errno != ENOENT) {
        refused = "cannot be examined";
    }
    char other[96];
    long writer = refused == NULL ? other_writer(dfd, name) : 0;
    if (writer != 0) {
        snprintf(other, sizeof other, "is written by another watcher (pid %ld): give each its own path (%%p)", writer);
        refused = other;
    }
    if (refused != NULL) {
        close(dfd);
        errno = saved;
        return fail(path, refused);
    }

    /* Hidden and not *.prom: the collector never reads a half-written file. */
    char tmp[320];
    if (snprintf(tmp, sizeof tmp, ".%s.%ld.tmp", name, (long)getpid()) >= (int)sizeof tmp) {
        close(dfd);
        errno = saved;
        return fail(path, "has too long a name");
    }
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    int fd = openat(dfd, tmp, flags, 0644);
    if (fd < 0 && errno == EEXIST) {
        /* Left by a watcher of the same pid that died while writing: ours to remove, nobody
         * else's. */
        struct stat old;
        if (fstatat(dfd, tmp, &old, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(old.st_mode) && old.st_uid == geteuid())
            unlinkat(dfd, tmp, 0);
        fd = openat(dfd, tmp, flags, 0644);
    }
    if (fd < 0) {
        int err = errno;
        close(dfd);
        errno = saved;
        return fail_errno(path, "a temporary file beside it cannot be created", err);
    }
    /* The collector runs as another user: the program's umask must not hide the file from it. */
    int err = 0;
    char mark[96];
    writer_mark(mark, sizeof mark);
    if (fchmod(fd, 0644) != 0 || write_all(fd, mark, strlen(mark)) != 0 || write_all(fd, text, len) != 0) err = errno;
    if (close(fd) != 0 && err == 0) err = errno;
    if (err == 0 && renameat(dfd, tmp, dfd, name) != 0) err = errno;
    if (err != 0) {
        unlinkat(dfd, tmp, 0);
        fail_errno(path, "cannot be replaced", err);
    } else {
        rc = 0;
    }
    close(dfd);
    errno = saved;
    return rc;
}
