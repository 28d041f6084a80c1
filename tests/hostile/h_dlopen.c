/*
 * Sockets opened and leaked inside a dlopen()'ed library (build/libleaky.so).  The report's
 * open stack must name the library's function.  In "dlclose" mode the library is unloaded
 * before the library's watcher reports (the sockets stay open): the reports must still come.
 *
 * usage: h_dlopen keep|dlclose LIBPATH [count]
 */
#include "common.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: h_dlopen keep|dlclose LIBPATH [count]\n");
        return 2;
    }
    int unload = strcmp(argv[1], "dlclose") == 0;
    int count = argc > 3 ? atoi(argv[3]) : 3;
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *h = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    int (*serve)(int) = (int (*)(int))dlsym(h, "leaky_serve_one");
    if (serve == NULL) fail_setup("dlsym");
    int port;
    int l = listen_local(64, &port);
    if (l < 0) fail_setup("listen");
    int ok = 0;
    for (int i = 0; i < count; i++) {
        int c = connect_local(port);
        if (c < 0) fail_setup("connect");
        write_all(c, "hello", 5);
        char b[5];
        /* serve() answers, then waits for our close: run it after the write, read after. */
        shutdown(c, SHUT_WR);
        int fd = serve(l);
        if (fd >= 0 && read(c, b, 5) == 5 && memcmp(b, "hello", 5) == 0) ok++;
        char a[64], p[64];
        endpoint(fd, 0, a, sizeof a);
        endpoint(fd, 1, p, sizeof p);
        printf("#leak fd=%d local=%s peer=%s kind=eof\n", fd, a, p);
        close(c);
    }
    printf("served=%d of %d\n", ok, count);
    if (unload) printf("dlclose=%d\n", dlclose(h));
    wait_for_leaks(count, 6000);
    return ok == count ? 0 : 1;
}
