/*
 * The program's descriptor table after a report.  A leak is made and reported (the library
 * then symbolizes its stack); afterwards the program must see no descriptor it did not open
 * below the library's high range, and a program it executes must inherit none of the
 * library's descriptors.  All the program's own descriptors are CLOEXEC, so the child, a new
 * instance of this program, counts what it inherited besides 0, 1, 2 and what was already
 * open when the parent started.
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

/* Open descriptors below 900 that are not in `baseline`, printed as "fd=target". */
static int foreign_fds(const char *baseline, const char *who)
{
    int n = 0;
    for (int fd = 3; fd < 900; fd++) {
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
    /* What was open before this program did anything (the caller's, the library's). */
    char baseline[4096] = "";
    size_t bl = 0;
    for (int fd = 0; fd < 900 && bl < sizeof baseline - 16; fd++)
        if (fcntl(fd, F_GETFD) >= 0) bl += (size_t)snprintf(baseline + bl, sizeof baseline - bl, "%s%d", bl ? "," : "", fd);

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
    char mine[4200];
    snprintf(mine, sizeof mine, "%s,%d,%d", baseline, l, s);
    printf("foreign_after_report=%d\n", foreign_fds(mine, "in the program after the report"));

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
