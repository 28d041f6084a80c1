/* dl_host LIBRARY: dlopen()s LIBRARY after start and lets its plugin_accept() take one
 * connection, which it keeps. */
#include "common.h"

#include <dlfcn.h>

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 3;
    }
    int (*plugin_accept)(int) = (int (*)(int))dlsym(h, "plugin_accept");
    if (plugin_accept == NULL) return 4;
    int lfd = cw_listen();
    int fd = plugin_accept(lfd);
    cw_say("HELD", fd);
    cw_say("READY", 1);
    cw_serve_stdin();
    return 0;
}
