/*
 * dup2() of one descriptor over every number from 3 to 1100: the library keeps its own (log,
 * netlink socket) at high numbers, and they are replaced under it.  Then two
 * sockets leak.  The reports must still reach CLOSEWAIT_LOG; in "file" mode the descriptor
 * dup'ed everywhere is a file of the program's, and nothing may be written into it.
 *
 * usage: h_dup2 devnull|file [PATH]
 */
#include "common.h"

#define TOP 1100

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: h_dup2 devnull|file [PATH]\n");
        return 2;
    }
    int file_mode = strcmp(argv[1], "file") == 0;
    if (file_mode && argc < 3) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);

    int port;
    int l = listen_local(64, &port);
    if (l < 0) fail_setup("listen");
    int c = connect_local(port), s = accept(l, NULL, NULL);
    if (c < 0 || s < 0) fail_setup("warm-up");
    close(c);
    drain_to_eof(s);
    close(s);
    sleep_ms(400); /* the watcher has run: its descriptors exist */

    int target = file_mode ? open(argv[2], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)
                           : open("/dev/null", O_RDWR | O_CLOEXEC);
    if (target < 0) fail_setup("open target");
    /* Keep the listener out of the way first: at the top. */
    int l2 = dup2(l, TOP + 5);
    close(l);
    l = l2;
    int replaced = 0, errors = 0;
    for (int fd = 3; fd <= TOP; fd++) {
        if (fd == target) continue;
        if (dup2(target, fd) == fd) replaced++;
        else errors++;
    }
    printf("replaced=%d errors=%d\n", replaced, errors);

    /* The program's descriptors now take numbers above TOP. */
    make_leak(l, port, "eof");
    make_leak(l, port, "unread");
    wait_for_leaks(2, 6000);

    struct stat st;
    if (fstat(target, &st) != 0) fail_setup("fstat");
    printf("target_size=%lld\n", (long long)st.st_size);
    /* Every replaced number still refers to the program's file, none was closed behind it. */
    int still = 0;
    struct stat t0;
    fstat(target, &t0);
    for (int fd = 3; fd <= TOP; fd++) {
        struct stat x;
        if (fstat(fd, &x) == 0 && x.st_ino == t0.st_ino && x.st_dev == t0.st_dev) still++;
    }
    printf("still_target=%d\n", still);
    return errors == 0 && st.st_size == 0 && still == TOP - 2 ? 0 : 1;
}
