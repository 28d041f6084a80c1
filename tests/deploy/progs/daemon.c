/*
 * A classic daemon: listens on 127.0.0.1, forks, the parent exits; the child calls setsid(),
 * puts /dev/null on 0, 1 and 2, writes its pid to PIDFILE and sleeps SECONDS.  Started as
 * `out=$(daemon ...)`, the caller's command substitution must end as soon as the parent exits.
 *
 *   daemon PIDFILE SECONDS
 */
#include "common.h"

#include <fcntl.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: daemon PIDFILE SECONDS\n");
        return 2;
    }
    int lfd = listen_local();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid > 0) {
        say("DAEMON %d", (int)pid);
        return 0;
    }
    if (setsid() < 0) die("setsid");
    int null = open("/dev/null", O_RDWR);
    if (null < 0) die("open /dev/null");
    for (int fd = 0; fd < 3; fd++)
        if (dup2(null, fd) < 0) _exit(4);
    if (null > 2) close(null);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) _exit(5);
    fprintf(f, "%d\n", (int)getpid());
    if (fclose(f) != 0 || rename(tmp, argv[1]) != 0) _exit(6);
    sleep((unsigned)atoi(argv[2]));
    close(lfd);
    return 0;
}
