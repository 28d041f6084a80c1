/*
 * A leak the peer then resets: the client half-closes, the program reads the EOF and keeps
 * the descriptor (a leak), then the client aborts (SO_LINGER 0: RST).  The kernel now says
 * CLOSE, not CLOSE_WAIT, but the program still holds the descriptor it read EOF on: the leak
 * must be reported all the same.  A second connection, treated the same way but closed by the
 * program, must not be.  (Under heavy churn on loopback a recycled client port resets a leaked
 * socket the same way.)
 *
 * usage: h_reset
 */
#include "common.h"

static int one(int l, int port, int keep)
{
    int c = connect_local(port);
    int s = accept(l, NULL, NULL);
    if (c < 0 || s < 0) fail_setup("connect/accept");
    write_all(c, "x", 1);
    shutdown(c, SHUT_WR);
    char b;
    if (read(s, &b, 1) != 1) fail_setup("read");
    if (drain_to_eof(s) != 0) fail_setup("read EOF");
    char a[64], p[64];
    endpoint(s, 0, a, sizeof a);
    endpoint(s, 1, p, sizeof p);
    struct linger lg = {1, 0};
    setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c); /* RST */
    sleep_ms(50);
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len);
    printf("state_after_reset=%d\n", ti.tcpi_state); /* 7: TCP_CLOSE */
    if (keep) {
        printf("#leak fd=%d local=%s peer=%s kind=eof\n", s, a, p);
        return s;
    }
    close(s);
    return -1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int port;
    int l = listen_local(16, &port);
    if (l < 0) fail_setup("listen");
    one(l, port, 1);
    one(l, port, 0);
    wait_for_leaks(1, 4000);
    return 0;
}
