/*
 * A fork-per-connection server's burst: FORKS children in a row that exit at once (each
 * reaped), as fast as fork() goes; then HELD children alive at the same time (a PostgreSQL
 * with that many backends), all released and reaped at once; then one more child that leaks a
 * connection (its EOF read, the descriptor kept) after WAIT_MS.  Each forked child takes an
 * area of the library's shared table, given back once the watcher sees the child gone: a child
 * forked before the watcher has looked must still have its sockets tracked (with more held
 * children than the library has areas, it has none at the fork and takes one at its first
 * socket, once the watcher has given some back: WAIT_MS lets it).
 *
 * usage: h_forkburst [forks [held [wait_ms]]]   (default 1000 600 0)
 * Exit status 77 with "#skip ..." when the held children cannot all be forked (a pids limit).
 */
#include "common.h"

#include <sys/wait.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int forks = argc > 1 ? atoi(argv[1]) : 1000;
    int held = argc > 2 ? atoi(argv[2]) : 600;
    int wait_ms = argc > 3 ? atoi(argv[3]) : 0;
    int port;
    int l = listen_local(16, &port);
    if (l < 0) fail_setup("listen");
    int64_t t0 = now_ms();
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0) fail_setup("fork");
        if (pid == 0) _exit(0);
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) fail_setup("waitpid");
    }
    printf("# %d forks in %lld ms\n", forks, (long long)(now_ms() - t0));

    int gate[2];
    if (pipe2(gate, O_CLOEXEC) != 0) fail_setup("pipe");
    pid_t *kids = calloc((size_t)held, sizeof *kids);
    if (kids == NULL) fail_setup("calloc");
    for (int i = 0; i < held; i++) {
        kids[i] = fork();
        if (kids[i] < 0 && errno == EAGAIN) {
            printf("#skip only %d of %d children could be forked at once: %s\n", i, held, strerror(errno));
            close(gate[1]);
            while (wait(NULL) > 0) {
            }
            return 77;
        }
        if (kids[i] < 0) fail_setup("fork (held children)");
        if (kids[i] == 0) {
            char b;
            close(gate[1]);
            while (read(gate[0], &b, 1) < 0 && errno == EINTR) {
            }
            _exit(0);
        }
    }
    close(gate[1]); /* every held child reads EOF and exits */
    for (int i = 0; i < held; i++) {
        int status;
        if (waitpid(kids[i], &status, 0) != kids[i] || !WIFEXITED(status)) fail_setup("waitpid (held children)");
    }
    free(kids);
    close(gate[0]);
    printf("# %d children held at once, released and reaped\n", held);
    pid_t pid = fork();
    if (pid < 0) fail_setup("fork");
    if (pid == 0) {
        if (wait_ms > 0) sleep_ms(wait_ms);
        int s = make_leak(l, port, "eof");
        wait_for_leaks(1, 8000);
        close(s);
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) fail_setup("waitpid (the leaking child)");
    printf("child_status=%d\n", WEXITSTATUS(status));
    return 0;
}
