/*
 * New processes while other threads are inside the hooks: vfork()+execve(), posix_spawn() and
 * system().  The new program is this one again ("child" mode: a TCP exchange through the
 * hooks, exit 0), so with LD_PRELOAD set it loads the library afresh.  Every start must
 * succeed and every child exit 0 within its deadline.
 *
 * usage: h_spawn vfork|spawn|system [count]
 *        h_spawn child PORT
 */
#include "common.h"

#include <spawn.h>
#include <stdatomic.h>

extern char **environ;

static int port;
static int lfd;
static _Atomic int stop;
static _Atomic long worker_rounds, worker_errors;

static void *worker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int c = connect_local(port);
        if (c < 0) {
            atomic_fetch_add(&worker_errors, 1);
            continue;
        }
        int s = accept(lfd, NULL, NULL);
        if (s < 0) {
            atomic_fetch_add(&worker_errors, 1);
            close(c);
            continue;
        }
        write_all(c, "hello", 5);
        close(c);
        if (drain_to_eof(s) != 0) atomic_fetch_add(&worker_errors, 1);
        close(s);
        atomic_fetch_add(&worker_rounds, 1);
    }
    return NULL;
}

static int child(int parent_port)
{
    alarm(20);
    int cport;
    int l = listen_local(16, &cport);
    if (l < 0) return 3;
    int c = connect_local(cport);
    int s = accept(l, NULL, NULL);
    if (c < 0 || s < 0) return 4;
    if (write_all(c, "ping", 4) != 0) return 5;
    char b[4];
    if (read(s, b, 4) != 4 || memcmp(b, "ping", 4) != 0) return 6;
    close(c);
    if (drain_to_eof(s) != 0) return 7;
    close(s);
    close(l);
    /* The parent's listener was opened with CLOEXEC: the child does not hold it, but can
     * connect to it. */
    int p = connect_local(parent_port);
    if (p < 0) return 8;
    close(p);
    return 0;
}

static int wait_child(pid_t pid, int *hang)
{
    int64_t deadline = now_ms() + 10000;
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < deadline) sleep_ms(1);
    if (w == 0) {
        *hang = 1;
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
    }
    return status;
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "child") == 0) return child(atoi(argv[2]));
    if (argc < 2) {
        fprintf(stderr, "usage: h_spawn vfork|spawn|system [count]\n");
        return 2;
    }
    const char *mode = argv[1];
    int count = argc > 2 ? atoi(argv[2]) : 50;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) fail_setup("readlink");
    self[n] = '\0';

    lfd = listen_local(4096, &port);
    if (lfd < 0) fail_setup("listen");
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0) fail_setup("pthread_create");
    sleep_ms(30);

    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    char *cargv[] = {self, "child", portstr, NULL};
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "'%s' child %d", self, port);

    int ok = 0, failed = 0, hangs = 0, start_errors = 0;
    for (int i = 0; i < count; i++) {
        int hang = 0, status = -1;
        if (strcmp(mode, "vfork") == 0) {
            pid_t pid = vfork();
            if (pid == 0) {
                execve(self, cargv, environ);
                _exit(127);
            }
            if (pid < 0) {
                start_errors++;
                continue;
            }
            status = wait_child(pid, &hang);
        } else if (strcmp(mode, "spawn") == 0) {
            pid_t pid;
            int r = posix_spawn(&pid, self, NULL, NULL, cargv, environ);
            if (r != 0) {
                start_errors++;
                continue;
            }
            status = wait_child(pid, &hang);
        } else if (strcmp(mode, "system") == 0) {
            status = system(cmd);
        } else {
            fprintf(stderr, "unknown mode %s\n", mode);
            return 2;
        }
        if (hang) hangs++;
        else if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) ok++;
        else {
            failed++;
            fprintf(stderr, "%s #%d: status 0x%x\n", mode, i, status);
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) {
        int c = connect_local(port);
        if (c >= 0) close(c);
    }
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    printf("# worker_rounds=%ld\n", atomic_load(&worker_rounds));
    printf("%s count=%d ok=%d failed=%d hangs=%d start_errors=%d\n", mode, count, ok, failed, hangs,
           start_errors);
    printf("worker_errors=%ld\n", atomic_load(&worker_errors));
    return ok == count && atomic_load(&worker_errors) == 0 ? 0 : 1;
}
