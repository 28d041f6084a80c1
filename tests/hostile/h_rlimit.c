/*
 * RLIMIT_NOFILE at its hard limit, the program's sockets dup2()'ed to the very top numbers
 * (hard - 10 .. hard - 1), the listener too; connections accepted and served through those
 * numbers; two of them leak at the top.  The reports must name those numbers.
 *
 * usage: h_rlimit
 */
#include "common.h"

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) fail_setup("getrlimit");
    rlim_t hard = rl.rlim_max;
    if (hard == RLIM_INFINITY || hard > 1048576) hard = 1048576;
    rl.rlim_cur = hard;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) fail_setup("setrlimit");
    int top = (int)hard - 1;
    printf("# hard limit %d\n", (int)hard);

    int port;
    int l0 = listen_local(256, &port);
    if (l0 < 0) fail_setup("listen");
    int lfd = top;                         /* the listener at the last number */
    if (dup2(l0, lfd) != lfd) fail_setup("dup2 listener");
    close(l0);

    /* Ten connections, served through numbers top-10 .. top-1. */
    int served = 0, errors = 0;
    int high[9];
    int clients[9];
    for (int i = 0; i < 9; i++) {
        clients[i] = connect_local(port);
        int s = accept(lfd, NULL, NULL);
        if (clients[i] < 0 || s < 0) fail_setup("connect/accept");
        high[i] = top - 9 + i;
        if (dup2(s, high[i]) != high[i]) fail_setup("dup2 high");
        close(s);
        if (write_all(clients[i], "ping", 4) != 0) errors++;
        char b[4];
        if (read(high[i], b, 4) != 4 || memcmp(b, "ping", 4) != 0) errors++;
        if (write_all(high[i], "pong", 4) != 0) errors++;
        if (read(clients[i], b, 4) != 4 || memcmp(b, "pong", 4) != 0) errors++;
        served++;
    }
    /* Peers close; the program closes all but two. */
    int leak_eof = high[5], leak_unread = high[7];
    for (int i = 0; i < 9; i++) close(clients[i]);
    for (int i = 0; i < 9; i++) {
        if (high[i] == leak_unread) continue;
        if (drain_to_eof(high[i]) != 0) errors++;
        if (high[i] != leak_eof) close(high[i]);
    }
    char a[64], p[64];
    endpoint(leak_eof, 0, a, sizeof a);
    endpoint(leak_eof, 1, p, sizeof p);
    printf("#leak fd=%d local=%s peer=%s kind=eof\n", leak_eof, a, p);
    endpoint(leak_unread, 0, a, sizeof a);
    endpoint(leak_unread, 1, p, sizeof p);
    printf("#leak fd=%d local=%s peer=%s kind=unread\n", leak_unread, a, p);
    printf("leak_fds=top-%d,top-%d\n", top - leak_eof, top - leak_unread);
    wait_for_leaks(2, 6000);
    printf("served=%d errors=%d\n", served, errors);
    return errors == 0 ? 0 : 1;
}
