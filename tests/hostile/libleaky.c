/*
 * A plugin that leaks: leaky_serve_one() accepts a connection, answers, reads to EOF and keeps
 * the descriptor.  Loaded by h_dlopen with dlopen(); the report must name this function.
 */
#include "common.h"

static int kept[64];
static int nkept;

__attribute__((noinline)) int leaky_accept_one(int lfd)
{
    int fd = accept(lfd, NULL, NULL);
    if (fd >= 0 && nkept < 64) kept[nkept++] = fd; /* work after the call: no tail call */
    return fd;
}

int leaky_serve_one(int lfd)
{
    int fd = leaky_accept_one(lfd);
    if (fd < 0) return -1;
    char b[16];
    ssize_t r = read(fd, b, sizeof b);
    if (r > 0) write_all(fd, b, (size_t)r);
    drain_to_eof(fd);
    return fd; /* never closed */
}

int leaky_count(void)
{
    return nkept;
}
