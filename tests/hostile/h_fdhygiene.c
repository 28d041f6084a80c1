/*
 * The program's descriptor table after a report.  A leak is made and reported (the library
 * then symbolizes its stack); the program must see no descriptor it did not open, at any
 * number, and a program it executes must inherit none.  What was open at the start and the
 * size of the descriptor table (FDSize: a descriptor of ours at a high number would grow it,
 * and every fork() copies it) are printed as compared lines: the run without the library says
 * what they must be.  Its mappings, which every fork() copies too, are printed (#maps) for the
 * caller to count the library's.  All the program's own descriptors are CLOEXEC, so the child,
 * a new instance of this program, counts what it inherited besides what was open at the
 * parent's start.
 *
 * usage: h_fdhygiene
 *        h_fdhygiene child BASELINE   (BASELINE: comma-separated fds open at the parent's start)
 */
#include "common.h"

#include <dirent.h>
#include <spawn.h>

extern char **environ;

static int in_list(const char *list, int fd)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%d", fd);
    size_t n = strlen(buf);
    for (const char *p = list; p != NULL && *p != '\0';) {
        if (strncmp(p, buf, n) == 0 && (p[n] == ',' || p[n] == '\0')) return 1;
        p = strchr(p, ',');
        if (p != NULL) p++;
    }
    return 0;
}

/* The descriptors open now, in increasing order, as "0,1,2"; returns how many. */
static int open_fds(char *out, size_t cap)
{
    int fds[4096], n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) fail_setup("opendir /proc/self/fd");
    int own = dirfd(d);
    for (struct dirent *e; (e = readdir(d)) != NULL && n < 4096;) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        int fd = atoi(e->d_name);
        if (fd != own) fds[n++] = fd;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort: a handful of numbers */
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
            int t = fds[j];
            fds[j] = fds[j - 1];
            fds[j - 1] = t;
        }
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < n && len + 16 < cap; i++) len += (size_t)snprintf(out + len, cap - len, "%s%d", i ? "," : "", fds[i]);
    return n;
}

/* FDSize from /proc/self/status: how many slots the kernel's descriptor table has. */
static int fd_table_size(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    if (f == NULL) return -1;
    char line[256];
    int size = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "FDSize:", 7) == 0) size = atoi(line + 7);
    fclose(f);
    return size;
}

/* The process's mappings, as "#maps COUNT PATH,PATH,..." (the distinct named ones): every one of
 * them is copied by each fork() and torn down by each child's exit, so the library's are
 * counted against the run without it. */
static void print_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL) fail_setup("fopen /proc/self/maps");
    char line[512], names[8192] = "";
    size_t len = 0;
    int count = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        count++;
        char *path = strchr(line, '/');
        if (path == NULL) path = strstr(line, "memfd:");
        if (path == NULL) continue;
        path[strcspn(path, " \n")] = '\0';
        if (strstr(names, path) != NULL || len + strlen(path) + 2 >= sizeof names) continue;
        len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", len ? "," : "", path);
    }
    fclose(f);
    printf("#maps %d %s\n", count, names);
}

/* Open descriptors, at any number, that are not in `baseline`, printed as "fd=target". */
static int foreign_fds(const char *baseline, const char *who)
{
    int n = 0;
    char now[8192];
    open_fds(now, sizeof now);
    for (char *p = now; *p != '\0';) {
        int fd = atoi(p);
        p = strchr(p, ',');
        p = p == NULL ? (char *)"" : p + 1;
        if (fcntl(fd, F_GETFD) < 0 || in_list(baseline, fd)) continue;
        char path[64], target[256];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t len = readlink(path, target, sizeof target - 1);
        target[len > 0 ? len : 0] = '\0';
        printf("# %s: fd %d -> %s%s\n", who, fd, target, (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? " (cloexec)" : "");
        n++;
    }
    return n;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && strcmp(argv[1], "child") == 0) {
        printf("child_inherited=%d\n", foreign_fds(argv[2], "inherited by the exec'd child"));
        return 0;
    }
    /* What was open before this program did anything: the caller's, and nothing of the
     * library's (the run without it says what the caller's are). */
    char baseline[8192];
    open_fds(baseline, sizeof baseline);
    printf("open_at_start=%s\n", baseline);

    int port;
    int l = listen_local(16, &port);
    if (l < 0) fail_setup("listen");
    int c = connect_local(port);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0 || s < 0) fail_setup("connect/accept");
    char a[64], p[64];
    endpoint(s, 0, a, sizeof a);
    endpoint(s, 1, p, sizeof p);
    close(c);
    drain_to_eof(s);
    printf("#leak fd=%d local=%s peer=%s kind=eof\n", s, a, p);
    wait_for_leaks(1, 6000);

    /* The program's own: l and s. */
    char mine[8256];
    snprintf(mine, sizeof mine, "%s,%d,%d", baseline, l, s);
    printf("foreign_after_report=%d\n", foreign_fds(mine, "in the program after the report"));
    printf("fd_table_size=%d\n", fd_table_size());
    print_mappings();

    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) fail_setup("readlink");
    self[n] = '\0';
    char *cargv[] = {self, "child", baseline, NULL};
    pid_t pid;
    if (posix_spawn(&pid, self, NULL, NULL, cargv, environ) != 0) fail_setup("posix_spawn");
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
