/*
 * The accept() happens in a static inline helper that the compiler inlines into a static
 * function: the report must show the helper as an inlined frame, then the static caller
 * (named from .symtab), each with its own line.
 *
 *   inline_srv [N [clean [STATUS]]]
 * accepts N connections (default 1), reads each to EOF and keeps it (or closes it with
 * "clean"), prints READY, serves stdin until EOF and exits with STATUS (default 0).  The stdin
 * command "close" closes the held descriptors.
 */
#include "common.h"

static volatile int accepted;

static inline __attribute__((always_inline)) int take_conn(int lfd)
{
    int fd = accept(lfd, NULL, NULL); /* @take_conn */
    if (fd >= 0) accepted++;
    return fd;
}

static __attribute__((noinline)) int serve_one(int lfd)
{
    int fd = take_conn(lfd); /* @serve_one */
    if (fd < 0) return -1;
    cw_drain(fd); /* @serve_one_drain */
    return fd;
}

static int fds[16];
static int nfds;

static void close_held(void)
{
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0) close(fds[i]);
    nfds = 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1;
    int clean = argc > 2 && strcmp(argv[2], "clean") == 0;
    int status = argc > 3 ? atoi(argv[3]) : 0;
    if (n < 0 || n > 16) return 2;
    int lfd = cw_listen();
    for (int i = 0; i < n; i++) {
        fds[i] = serve_one(lfd);
        nfds = i + 1;
        cw_say("HELD", fds[i]);
    }
    if (clean) close_held();
    cw_say("READY", accepted);
    cw_serve_stdin_with(close_held);
    return status;
}
