/*
 * Descriptor exhaustion.  With every number up to RLIMIT_NOFILE taken, accept() and friends
 * must fail exactly as without the library (-1, EMFILE), the pending connection must stay in
 * the queue, and a number freed by the program must be the one its next accept() gets.  A
 * socket leaked while the table is full must still be reported; one leaked from the same
 * site after the table is freed must be reported too.  Other failures' errno values are
 * printed as well, for the runner to compare with a run without the library.
 *
 * usage: h_emfile
 */
#include "common.h"

#include <sys/syscall.h>
#include <sys/uio.h>

static void show(const char *what, long r)
{
    int e = errno;
    printf("%s=%ld errno=%s\n", what, r < 0 ? -1L : r >= 0 ? 0L : r, r < 0 ? errno_name(e) : "-");
}

static int devnull_fds[1 << 20];

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int port;
    int l = listen_local(64, &port);
    if (l < 0) fail_setup("listen");
    int clients[3];
    for (int i = 0; i < 3; i++) {
        clients[i] = connect_local(port);
        if (clients[i] < 0) fail_setup("connect");
    }
    /* One exchange first, so the library's own descriptors exist before the table fills. */
    int s0 = accept(l, NULL, NULL);
    write_all(clients[0], "x", 1);
    close(clients[0]);
    drain_to_eof(s0);
    close(s0);
    sleep_ms(300);

    /* Fill the table. */
    int n = 0;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) {
            printf("exhausted_errno=%s\n", errno_name(errno));
            break;
        }
        if (n < (int)(sizeof devnull_fds / sizeof devnull_fds[0])) devnull_fds[n++] = fd;
    }
    printf("# filled %d descriptors\n", n);

    errno = 0;
    show("accept", accept(l, NULL, NULL));
    show("accept4", accept4(l, NULL, NULL, SOCK_CLOEXEC));
    show("socket", socket(AF_INET, SOCK_STREAM, 0));
    int sv[2];
    show("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    int pp[2];
    show("pipe", pipe(pp));
    show("pipe2", pipe2(pp, O_CLOEXEC));
    show("dup", dup(l));
    show("fcntl_dupfd", fcntl(l, F_DUPFD, 0));
    show("fcntl_dupfd_cloexec", fcntl(l, F_DUPFD_CLOEXEC, 0));
    show("open", open("/dev/null", O_RDONLY));
    show("syscall_accept4", syscall(SYS_accept4, l, NULL, NULL, 0));

    /* Free one number: the next accept gets exactly that one, and the connection that waited
     * in the queue is still there.  The watcher runs meanwhile. */
    int freed = devnull_fds[n / 2];
    close(freed);
    sleep_ms(400);
    int s1 = accept(l, NULL, NULL);
    printf("accept_after_free_got_freed_number=%d\n", s1 == freed);
    if (s1 < 0) {
        printf("# accept after free: %s\n", strerror(errno));
        return 1;
    }
    /* A leak while the table is full. */
    write_all(clients[1], "y", 1);
    char b;
    printf("read_first_byte=%ld\n", (long)read(s1, &b, 1));
    close(clients[1]);
    int c1fd = clients[1];
    (void)c1fd;
    /* clients[1] freed one more number: take it back so the table stays full. */
    int refill = open("/dev/null", O_RDONLY);
    printf("refilled=%d\n", refill >= 0);
    printf("read_eof=%d\n", drain_to_eof(s1));
    char a[64], p[64];
    endpoint(s1, 0, a, sizeof a);
    endpoint(s1, 1, p, sizeof p);
    printf("#leak fd=%d local=%s peer=%s kind=eof phase=full\n", s1, a, p);
    wait_for_leaks(1, 6000);
    show("accept_still_full", accept(l, NULL, NULL));

    /* Free everything; the same code leaks once more. */
    for (int i = 0; i < n; i++)
        if (devnull_fds[i] != freed) close(devnull_fds[i]);
    if (refill >= 0) close(refill);
    int c2 = connect_local(port);
    if (c2 < 0) fail_setup("connect 2");
    int s2 = accept(l, NULL, NULL);
    write_all(c2, "z", 1);
    close(c2);
    read(s2, &b, 1);
    printf("read_eof_2=%d\n", drain_to_eof(s2));
    endpoint(s2, 0, a, sizeof a);
    endpoint(s2, 1, p, sizeof p);
    printf("#leak fd=%d local=%s peer=%s kind=eof phase=free\n", s2, a, p);
    wait_for_leaks(2, 6000);
    close(clients[2]);

    /* Other failures: the same errno with and without the library. */
    int dn = open("/dev/null", O_RDONLY);
    int unl = socket(AF_INET, SOCK_STREAM, 0);
    int nb = listen_local(4, NULL);
    fcntl(nb, F_SETFL, O_NONBLOCK);
    char buf[8];
    struct iovec iov = {buf, sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    show("accept_badfd", accept(-1, NULL, NULL));
    show("accept_notsock", accept(dn, NULL, NULL));
    show("accept_notlistening", accept(unl, NULL, NULL));
    show("accept_empty_nonblocking", accept(nb, NULL, NULL));
    show("accept4_badflags", accept4(nb, NULL, NULL, 0x40000000));
    show("read_badfd", read(-1, buf, 1));
    show("readv_badfd", readv(-1, &iov, 1));
    show("recv_notsock", recv(dn, buf, 1, 0));
    show("recvfrom_badfd", recvfrom(-1, buf, 1, 0, NULL, NULL));
    show("recvmsg_badfd", recvmsg(-1, &mh, 0));
    show("recv_notconn", recv(unl, buf, 1, 0));
    show("shutdown_notconn", shutdown(unl, SHUT_WR));
    show("shutdown_notsock", shutdown(dn, SHUT_RDWR));
    show("listen_notsock", listen(dn, 1));
    show("socket_badtype", socket(AF_INET, 99, 0));
    show("dup_badfd", dup(-1));
    show("dup2_badfd", dup2(-1, 100));
    show("dup3_same", dup3(dn, dn, 0));
    show("fcntl_dupfd_badfd", fcntl(-1, F_DUPFD, 0));
    show("close_range_inverted", close_range(5, 3, 0));
    show("syscall_close_badfd", syscall(SYS_close, -1));
    show("close_badfd", close(-1));
    int gone = dup(dn);
    close(gone);
    show("close_closed", close(gone));
    show("connect_refused", connect_local(1));
    show("close_dn", close(dn));
    show("close_unl", close(unl));
    return 0;
}
