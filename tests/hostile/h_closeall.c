/*
 * A daemon's start: close every descriptor from 3 up to the limit (the library's log, its
 * netlink socket among them), open a file of its own (it gets fd 3), then
 * serve and leak two sockets.  The reports must still reach CLOSEWAIT_LOG, and nothing of the
 * library's may land in the program's own file.
 *
 * usage: h_closeall loop|range|closefrom|syscall OWNFILE
 */
#include "common.h"

#include <sys/syscall.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: h_closeall loop|range|closefrom|syscall OWNFILE\n");
        return 2;
    }
    const char *mode = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Warm up: a connection opened and closed, time for the watcher to run (its netlink
     * socket is open then). */
    int port;
    int l = listen_local(64, &port);
    if (l < 0) fail_setup("listen");
    int c = connect_local(port), s = accept(l, NULL, NULL);
    if (c < 0 || s < 0) fail_setup("warm-up");
    close(c);
    drain_to_eof(s);
    close(s);
    close(l);
    sleep_ms(400);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    int closed = 0;
    if (strcmp(mode, "loop") == 0) {
        for (int fd = 3; fd < (int)rl.rlim_cur; fd++)
            if (close(fd) == 0) closed++;
    } else if (strcmp(mode, "range") == 0) {
        if (close_range(3, ~0u, 0) != 0) fail_setup("close_range");
    } else if (strcmp(mode, "closefrom") == 0) {
        closefrom(3);
    } else if (strcmp(mode, "syscall") == 0) {
        if (syscall(SYS_close_range, 3, ~0u, 0) != 0) fail_setup("syscall(close_range)");
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("# closed %d descriptor(s) one by one\n", closed);
    printf("fds_open_after_close=%d\n", count_fds_below((int)rl.rlim_cur));

    int own = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    printf("own_file_fd=%d\n", own);

    l = listen_local(64, &port);
    if (l < 0) fail_setup("listen after close");
    /* A healthy exchange, then two leaks. */
    c = connect_local(port);
    s = accept(l, NULL, NULL);
    write_all(c, "hi", 2);
    close(c);
    drain_to_eof(s);
    close(s);
    make_leak(l, port, "eof");
    make_leak(l, port, "unread");
    /* The program writes its own file meanwhile, as a daemon writes its log. */
    for (int i = 0; i < 10; i++) {
        dprintf(own, "own line %d\n", i);
        sleep_ms(50);
    }
    wait_for_leaks(2, 6000);
    dprintf(own, "own line end\n");
    close(own);

    /* The program's file holds its own lines only. */
    FILE *f = fopen(argv[2], "re");
    int lines = 0, foreign = 0;
    char line[4096];
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        lines++;
        if (strncmp(line, "own line ", 9) != 0) foreign++;
    }
    if (f != NULL) fclose(f);
    printf("own_file_lines=%d foreign_lines=%d\n", lines, foreign);
    return foreign == 0 && lines == 11 ? 0 : 1;
}
