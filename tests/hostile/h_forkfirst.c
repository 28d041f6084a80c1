/*
 * Children forked before the program's first TCP socket, each making its own at once and
 * leaking one (its EOF read, the descriptor kept).  Each child starts a watcher of its own with
 * a copy of the table; a child can get there before its parent's fork() has written the child's
 * pid into the table, and its watcher must still find it (it once found no process and left,
 * and that child's leak was never reported).
 *
 * usage: h_forkfirst [children]   (default 6)
 */
#include "common.h"

#include <sys/wait.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int n = argc > 1 ? atoi(argv[1]) : 6;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) fail_setup("fork");
        if (pid == 0) {
            int port;
            int l = listen_local(4, &port);
            if (l < 0) fail_setup("listen");
            int s = make_leak(l, port, "eof");
            wait_for_leaks(1, 8000);
            close(s);
            _exit(0);
        }
    }
    int bad = 0, status;
    for (pid_t pid; (pid = wait(&status)) > 0;)
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) bad++;
    printf("children_failed=%d\n", bad);
    return 0;
}
