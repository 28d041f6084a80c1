/*
 * The first process of a PID namespace (a container's init): it listens on 127.0.0.1, forks 3
 * children that each make a TCP socket and exit, and reaps with wait() until ECHILD.  Every pid
 * wait() returns must be one of its 3 children: anything else is a process it never made.  Then
 * it accepts one connection in leak_here() and never reads or closes it, until stdin's EOF.
 *
 * Lines: PID n / PORT n / CHILD pid (x3) / REAPED pid status / ECHILD | WAIT_TIMEOUT /
 *        ACCEPT L fd peerport / EXIT
 */
#include "common.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

__attribute__((noinline)) static int leak_here(int lfd)
{
    int fd = accept(lfd, NULL, NULL);
    __asm__ volatile("" ::: "memory");
    return fd;
}

static void on_alarm(int sig)
{
    (void)sig;
}

int main(void)
{
    say("PID %d", (int)getpid());
    int lfd = listen_local();
    for (int i = 0; i < 3; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0) _exit(3);
            struct timespec ts = {0, 200 * 1000000L};
            nanosleep(&ts, NULL);
            exit(0);
        }
        say("CHILD %d", (int)pid);
    }
    /* wait() until ECHILD, bounded: an alarm interrupts a wait for a process that never ends */
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    alarm(8);
    for (;;) {
        int status = 0;
        pid_t r = wait(&status);
        if (r > 0) {
            say("REAPED %d %d", (int)r, status);
            continue;
        }
        if (errno == ECHILD) say("ECHILD");
        else say("WAIT_TIMEOUT %s", strerror(errno));
        break;
    }
    alarm(0);
    int fd = leak_here(lfd);
    if (fd < 0) die("accept");
    say("ACCEPT L %d %d", fd, peer_port(fd));
    wait_stdin_eof();
    say("EXIT");
    return 0;
}
