/*
 * terrno: calls hooked functions in ways that succeed and fail and prints their return
 * values and errno. The output must be identical with and without the library.
 * Descriptor numbers are never printed (the library may hold descriptors of its own).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAGIC 4242

extern ssize_t __read_chk(int fd, void *buf, size_t nbytes, size_t buflen);
extern ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
extern ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
                              struct sockaddr *addr, socklen_t *addrlen);

static void show(const char *what, long ret, int err)
{
    /* non-negative results that are descriptors are shown as "ok" */
    printf("%-28s ret=%ld errno=%d\n", what, ret, err);
}
#define CHECK(label, expr)                                                               \
    do {                                                                                 \
        errno = MAGIC;                                                                   \
        long r_ = (long)(expr);                                                          \
        int e_ = errno;                                                                  \
        show(label, r_, e_);                                                             \
    } while (0)
#define CHECKFD(label, var, expr)                                                        \
    do {                                                                                 \
        errno = MAGIC;                                                                   \
        var = (expr);                                                                    \
        int e_ = errno;                                                                  \
        show(label, var >= 0 ? 1 : var, e_);                                             \
    } while (0)

int main(void)
{
    char buf[64];
    int fd, lfd, cfd, sfd, nul;
    struct sockaddr_in sa;
    socklen_t sl;
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(30);

    /* failures */
    CHECK("read(-1)", read(-1, buf, sizeof buf));
    CHECK("read(9999)", read(9999, buf, sizeof buf));
    struct iovec iov = {buf, sizeof buf};
    CHECK("readv(9999)", readv(9999, &iov, 1));
    CHECK("close(-1)", close(-1));
    CHECK("close(9999)", close(9999));
    CHECKFD("open(/dev/null)", nul, open("/dev/null", O_RDWR));
    CHECK("recv(devnull)", recv(nul, buf, sizeof buf, 0));
    CHECK("recvfrom(devnull)", recvfrom(nul, buf, sizeof buf, 0, NULL, NULL));
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    CHECK("recvmsg(devnull)", recvmsg(nul, &mh, 0));
    CHECK("__read_chk(9999)", __read_chk(9999, buf, sizeof buf, sizeof buf));
    CHECK("__recv_chk(devnull)", __recv_chk(nul, buf, sizeof buf, sizeof buf, 0));
    CHECK("__recvfrom_chk(devnull)",
          __recvfrom_chk(nul, buf, sizeof buf, sizeof buf, 0, NULL, NULL));
    struct mmsghdr mm;
    memset(&mm, 0, sizeof mm);
    mm.msg_hdr.msg_iov = &iov;
    mm.msg_hdr.msg_iovlen = 1;
    CHECK("recvmmsg(devnull)", recvmmsg(nul, &mm, 1, 0, NULL));
    CHECK("recvmmsg(9999)", recvmmsg(9999, &mm, 1, 0, NULL));
    CHECK("accept(devnull)", accept(nul, NULL, NULL));
    CHECK("socket(badfamily)", socket(12345, SOCK_STREAM, 0));
    CHECK("socket(badtype)", socket(AF_INET, 12345, 0));
    CHECKFD("socket(unbound)", sfd, socket(AF_INET, SOCK_STREAM, 0));
    CHECK("accept(notlistening)", accept(sfd, NULL, NULL));
    CHECK("accept4(notlistening)", accept4(sfd, NULL, NULL, SOCK_CLOEXEC));
    CHECK("accept4(badflags)", accept4(sfd, NULL, NULL, 0x7fff0000));
    CHECK("shutdown(notconnected)", shutdown(sfd, SHUT_WR));
    CHECK("recv(notconnected)", recv(sfd, buf, sizeof buf, 0));
    CHECK("dup2(9999,sfd)", dup2(9999, sfd));
    CHECK("dup(9999)", dup(9999));
    CHECK("close(sfd)", close(sfd));
    CHECK("close(sfd) again", close(sfd));

    /* successes: errno must stay MAGIC */
    CHECK("read(devnull) eof", read(nul, buf, sizeof buf));
    int p[2];
    CHECK("pipe", pipe(p));
    CHECK("write(pipe)", write(p[1], "xyz", 3));
    CHECK("close(pipe w)", close(p[1]));
    CHECK("read(pipe) data", read(p[0], buf, sizeof buf));
    CHECK("read(pipe) eof", read(p[0], buf, sizeof buf));
    CHECK("close(pipe r)", close(p[0]));

    CHECKFD("socket(listen)", lfd, socket(AF_INET, SOCK_STREAM, 0));
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK("bind", bind(lfd, (struct sockaddr *)&sa, sizeof sa));
    CHECK("listen", listen(lfd, 8));
    sl = sizeof sa;
    CHECK("getsockname", getsockname(lfd, (struct sockaddr *)&sa, &sl));
    CHECKFD("socket(client)", cfd, socket(AF_INET, SOCK_STREAM, 0));
    CHECK("connect", connect(cfd, (struct sockaddr *)&sa, sizeof sa));
    CHECKFD("accept", fd, accept(lfd, NULL, NULL));
    CHECK("send", send(cfd, "hello", 5, 0));
    CHECK("recv data", recv(fd, buf, sizeof buf, 0));
    CHECK("send more", send(cfd, "more", 4, 0));
    usleep(20000);
    CHECK("recv 0 bytes live", recv(fd, buf, 0, 0));
    CHECK("recv rest", recv(fd, buf, sizeof buf, 0));
    CHECK("recv nonblock empty", recv(fd, buf, sizeof buf, MSG_DONTWAIT));
    CHECK("close(client)", close(cfd));
    CHECK("recv eof", recv(fd, buf, sizeof buf, 0));
    CHECK("read eof", read(fd, buf, sizeof buf));
    CHECK("__read_chk eof", __read_chk(fd, buf, sizeof buf, sizeof buf));
    CHECK("__recv_chk eof", __recv_chk(fd, buf, sizeof buf, sizeof buf, 0));
    CHECK("__recvfrom_chk eof", __recvfrom_chk(fd, buf, sizeof buf, sizeof buf, 0, NULL, NULL));
    CHECK("recvmmsg eof", recvmmsg(fd, &mm, 1, 0, NULL));
    CHECK("shutdown", shutdown(fd, SHUT_WR));
    CHECK("close(accepted)", close(fd));
    CHECK("close(accepted) again", close(fd));

    CHECKFD("socket(client2)", cfd, socket(AF_INET, SOCK_STREAM, 0));
    CHECK("connect2", connect(cfd, (struct sockaddr *)&sa, sizeof sa));
    CHECKFD("accept4", fd, accept4(lfd, NULL, NULL, SOCK_CLOEXEC));
    CHECK("close(client2)", close(cfd));
    CHECKFD("dup", sfd, dup(fd));
    CHECK("readv eof", readv(fd, &iov, 1));
    CHECK("dup2(nul,fd)", dup2(nul, fd) == fd);
    CHECK("read(fd now devnull)", read(fd, buf, sizeof buf));
    CHECK("close(dup)", close(sfd));
    CHECK("syscall close", syscall(SYS_close, fd));
    CHECK("close(listen)", close(lfd));
    CHECK("close(nul)", close(nul));
    return 0;
}
