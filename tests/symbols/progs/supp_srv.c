/* Two open sites: quiet_site (accept4) first, then loud_site (accept).  A suppression of
 * quiet_site must leave exactly the loud one reported. */
#include "common.h"

static __attribute__((noinline)) int quiet_site(int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC); /* @quiet_site */
    if (fd >= 0) cw_drain(fd);
    return fd;
}

static __attribute__((noinline)) int loud_site(int lfd)
{
    int fd = accept(lfd, NULL, NULL); /* @loud_site */
    if (fd >= 0) cw_drain(fd);
    return fd;
}

int main(void)
{
    int lfd = cw_listen();
    cw_say("HELD", quiet_site(lfd));
    cw_say("HELD", loud_site(lfd));
    cw_say("READY", 2);
    cw_serve_stdin();
    return 0;
}
