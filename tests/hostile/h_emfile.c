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

/* Both leaks come from here: one open site, reported twice. */
__attribute__((noinline)) static int accept_leak(int l, int client, const char *phase)
{
    int s = accept(l, NULL, NULL);
    if (s < 0) return -1;
    char b;
    write_all(client, "y", 1);
    printf("read_first_byte=%ld\n", (long)read(s, &b, 1));
    close(client);
    /* The client's number is free now: in the full phase, take it back at once. */
    if (strcmp(phase, "full") == 0) printf("refilled=%d\n", open("/dev/null", O_RDONLY) >= 0);
    printf("read_eof=%d\n", drain_to_eof(s));
    char a[64], p[64];
    endpoint(s, 0, a, sizeof a);
    endpoint(s, 1, p, sizeof p);
    printf("#leak fd=%d local=%s peer=%s kind=eof phase=%s\n", s, a, p, phase);
    return s;
}

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
    /* Two leaks from one call site: the first while the table is full, the second after the
     * program has freed it. */
    for (int phase = 0; phase < 2; phase++) {
        if (phase == 1) {
            for (int i = 0; i < n; i++)
                if (devnull_fds[i] != freed) close(devnull_fds[i]);
        }
        int sfd = accept_leak(l, clients[1 + phase], phase == 0 ? "full" : "free");
        if (phase == 0) {
            printf("accept_after_free_got_freed_number=%d\n", sfd == freed);
            if (sfd < 0) {
                printf("# accept after free: %s\n", strerror(errno));
                return 1;
            }
        } else {
            printf("accept_after_all_free=%d\n", sfd >= 0);
        }
        wait_for_leaks(1 + phase, 6000);
        /* clients[2] still waits in the queue. */
        if (phase == 0) show("accept_still_full", accept(l, NULL, NULL));
    }

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
