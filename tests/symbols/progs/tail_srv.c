/*
 * get_conn() is `return accept(...)`: at -O2 that is a jump, so get_conn has no frame of its
 * own on the stack when the library unwinds.  The report must still name it (tail_call).
 */
#include "common.h"

__attribute__((noinline, noclone)) int get_conn(int lfd)
{ /* @get_conn_start */
    return accept(lfd, NULL, NULL); /* @get_conn */
} /* @get_conn_end */

static __attribute__((noinline)) int handle(int lfd)
{
    int fd = get_conn(lfd); /* @handle */
    if (fd >= 0) cw_drain(fd);
    return fd;
}

int main(void)
{
    int lfd = cw_listen();
    int fd = handle(lfd);
    cw_say("HELD", fd);
    cw_say("READY", 1);
    cw_serve_stdin();
    return 0;
}
