/*
 * A server whose accepted connection crosses into a child.
 *   spawner MODE PARENT_LINGER_S CHILD_LINGER_S
 * MODE: exec   fork, the child execs `sleep CHILD_LINGER_S`
 *       fork   fork, the child sleeps CHILD_LINGER_S without exec
 *       spawn  posix_spawn of `sleep CHILD_LINGER_S`
 *       system system("sleep CHILD_LINGER_S &"): the socket ends in a grandchild
 * The parent closes its copy right after the spawn and lingers PARENT_LINGER_S, then exits
 * (without waiting for the child in fork mode, so that the child outlives it).
 * Prints "PORT n", then "CHILD pid" (when known), then "CLOSED".
 */
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static __attribute__((noinline)) int accept_connection(int l)
{
    int c = accept(l, NULL, NULL); /* no SOCK_CLOEXEC: the connection crosses into children */
    return c;
}

static __attribute__((noinline)) pid_t hand_to_child(const char *mode, const char *secs)
{
    pid_t pid = 0;
    if (strcmp(mode, "spawn") == 0) {
        char *argv[] = {"sleep", (char *)secs, NULL};
        if (posix_spawnp(&pid, "sleep", NULL, NULL, argv, environ) != 0) return -1;
        return pid;
    }
    if (strcmp(mode, "system") == 0) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "sleep %s &", secs);
        if (system(cmd) != 0) return -1;
        return 0;
    }
    pid = fork();
    if (pid == 0) {
        if (strcmp(mode, "exec") == 0) {
            execlp("sleep", "sleep", secs, (char *)NULL);
            _exit(127);
        }
        sleep((unsigned)atoi(secs));
        _exit(0);
    }
    return pid;
}

int main(int argc, char **argv)
{
    if (argc < 4) return 2;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 8) != 0) return 1;
    getsockname(l, (struct sockaddr *)&a, &len);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    int c = accept_connection(l);
    if (c < 0) return 1;
    pid_t child = hand_to_child(argv[1], argv[3]);
    if (child < 0) return 1;
    if (child > 0) printf("CHILD %d\n", (int)child);
    close(c);
    close(l);
    printf("CLOSED\n");
    fflush(stdout);
    sleep((unsigned)atoi(argv[2]));
    return 0;
}
