/*
 * A root parent and a worker that gives up root, as servers do: the parent listens on 127.0.0.1
 * and forks the worker; the worker becomes nobody (groups, gid 65534, uid 65534), then accepts
 * COUNT connections in leak_here() and never reads or closes them.  At stdin's EOF the worker
 * exits and the parent reaps it and exits.
 *
 *   privdrop_worker COUNT
 * Lines: PORT n / WORKER pid / DROPPED uid=.. euid=.. / ACCEPT L fd peerport / REAPED status
 */
#include "common.h"

#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>

__attribute__((noinline)) static int leak_here(int lfd)
{
    int fd = accept(lfd, NULL, NULL);
    __asm__ volatile("" ::: "memory");
    return fd;
}

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 3;
    int lfd = listen_local();
    pid_t worker = fork();
    if (worker < 0) die("fork");
    if (worker == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        drop_to_nobody();
        for (int i = 0; i < count; i++) {
            int fd = leak_here(lfd);
            if (fd < 0) die("accept");
            say("ACCEPT L %d %d", fd, peer_port(fd));
        }
        wait_stdin_eof();
        return 0;
    }
    say("WORKER %d", (int)worker);
    int status = 0;
    while (waitpid(worker, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    say("REAPED %d", status);
    return 0;
}
