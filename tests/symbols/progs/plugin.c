/* A shared library the host opens with dlopen(): its function opens the leaked socket. */
#include "common.h"

int plugin_accept(int lfd)
{
    int fd = accept(lfd, NULL, NULL); /* @plugin_accept */
    if (fd >= 0) cw_drain(fd);
    return fd;
}
