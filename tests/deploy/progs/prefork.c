/*
 * A prefork server (Apache's prefork, gunicorn): listens on 127.0.0.1 and forks WORKERS workers
 * that each accept connections, greet them with "HELLO\n", read until EOF and close.  It reports
 * how many of its fork() calls failed; at stdin's EOF it stops the workers, reaps them and exits.
 *
 *   prefork WORKERS
 * Lines: PORT n / FORK_FAILED i errno-text / FORKED ok=N failed=N / EXIT reaped=N
 */
#include "common.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define MAXW 256

static void worker(int lfd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR) continue;
            _exit(3);
        }
        if (write(fd, "HELLO\n", 6) != 6) {
            close(fd);
            continue;
        }
        char buf[256];
        while (read(fd, buf, sizeof buf) > 0) {
        }
        close(fd);
    }
}

int main(int argc, char **argv)
{
    int want = argc > 1 ? atoi(argv[1]) : 60;
    if (want < 1 || want > MAXW) want = 60;
    int lfd = listen_local();
    pid_t pids[MAXW];
    int ok = 0, failed = 0;
    for (int i = 0; i < want; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            failed++;
            say("FORK_FAILED %d %s", i, strerror(errno));
            continue;
        }
        if (pid == 0) worker(lfd);
        pids[ok++] = pid;
    }
    say("FORKED ok=%d failed=%d", ok, failed);
    wait_stdin_eof();
    for (int i = 0; i < ok; i++) kill(pids[i], SIGTERM);
    int reaped = 0;
    for (int i = 0; i < ok; i++)
        if (waitpid(pids[i], NULL, 0) == pids[i]) reaped++;
    say("EXIT reaped=%d", reaped);
    return 0;
}
