/*
 * tserver: a configurable TCP server on 127.0.0.1 used by tests/run.py.
 *
 * stdout protocol (one line each, flushed):
 *   PORT <port>               the bound port, always the first line
 *   ACCEPT <fd> <peer_port>   a connection was accepted
 *   WOKE <fd>                 the sleep before the first read is over
 *   DATA <fd> <bytes>         bytes read before EOF (sum)
 *   EOF <fd>                  the read call returned end of file
 *   BATCH_EOF <fd>            recvmmsg returned data and the EOF in one call
 *   CLOSED <fd> <how>         the connection was disposed of (how = close mode)
 *   LEAK <fd>                 the descriptor is kept open on purpose
 *   REUSE <oldfd> <newfd>     close via syscall, then a new socket (or file) took the number
 *   DUP <oldfd> <newfd>       the socket was dup()ed and the original closed
 *   DONE                      all connections handled, lingering before exit
 *
 * options:
 *   -n N      connections to accept (default 1)
 *   -m M      read call: read recv recvfrom recvmsg recvmmsg recvmmsg2 readv
 *             read_chk recv_chk recvfrom_chk
 *   -c C      after EOF: close leak shutdown fclose close_range syscall dup2 reuse reusefile
 *             dupkeep (dup, close the original, keep the copy) dupboth (dup, keep both)
 *             highfd (dup2 to 15000, close the original, keep 15000)
 *             (a request containing "LEAK" always leaks, "CLOSE" always closes)
 *   -A        use accept4 instead of accept
 *   -s MS     sleep before the first read
 *   -w MS     sleep before each accept
 *   -d MS     sleep after EOF before the reply / close action
 *   -R        write "REPLY\n" after EOF (after -d)
 *   -e        echo every chunk read
 *   -t        one thread per connection
 *   -l MS     linger after all connections (default 1000)
 *   -q        linger ends early when stdin is readable or closed
 *   -T S      hard limit in seconds (alarm), default 60
 *   -W MS     after EOF, stream a reply (1 KiB every 50 ms) for MS, then "END\n"
 *   -6        AF_INET6 socket bound to ::ffff:127.0.0.1 (still 127.0.0.1 only)
 *   -Z        close stdin before accepting (the first connection gets fd 0; no -q)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

extern ssize_t __read_chk(int fd, void *buf, size_t nbytes, size_t buflen);
extern ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
extern ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
                              struct sockaddr *addr, socklen_t *addrlen);

static const char *opt_method = "read";
static const char *opt_close = "close";
static int opt_n = 1, opt_accept4, opt_reply, opt_echo, opt_threads, opt_quit_on_stdin;
static int opt_sleep_read_ms, opt_sleep_accept_ms, opt_delay_ms, opt_linger_ms = 1000;
static int opt_limit_s = 60, opt_stream_ms, opt_inet6, opt_close_stdin;

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&out_lock);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- one function per read entry point, so a stack names the caller ---- */

static volatile int sink;

NOINLINE ssize_t rd_read(int fd, char *buf, size_t len)
{
    ssize_t n = read(fd, buf, len); /* @rd_read */
    sink = (int)n;
    return n;
}

NOINLINE ssize_t rd_recv(int fd, char *buf, size_t len)
{
    ssize_t n = recv(fd, buf, len, 0); /* @rd_recv */
    sink = (int)n;
    return n;
}

NOINLINE ssize_t rd_recvfrom(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    ssize_t n = recvfrom(fd, buf, len, 0, (struct sockaddr *)&ss, &sl); /* @rd_recvfrom */
    sink = (int)n;
    return n;
}

NOINLINE ssize_t rd_recvmsg(int fd, char *buf, size_t len)
{
    struct iovec iov = {buf, len};
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ssize_t n = recvmsg(fd, &mh, 0); /* @rd_recvmsg */
    sink = (int)n;
    return n;
}

NOINLINE ssize_t rd_recvmmsg(int fd, char *buf, size_t len)
{
    struct iovec iov = {buf, len};
    struct mmsghdr mm;
    memset(&mm, 0, sizeof mm);
    mm.msg_hdr.msg_iov = &iov;
    mm.msg_hdr.msg_iovlen = 1;
    int r = recvmmsg(fd, &mm, 1, 0, NULL); /* @rd_recvmmsg */
    sink = r;
    if (r < 0)
        return -1;
    if (r == 0)
        return 0;
    return (ssize_t)mm.msg_len;
}

/* two messages per call: on a stream socket the call returns [data, 0] when the peer sent
 * data and closed, so the EOF arrives in the second message, not as the return value */
static __thread int batch_eof;

NOINLINE ssize_t rd_recvmmsg2(int fd, char *buf, size_t len)
{
    struct iovec iov[2] = {{buf, len / 2}, {buf + len / 2, len - len / 2}};
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 2; i++) {
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    int r = recvmmsg(fd, mm, 2, 0, NULL); /* @rd_recvmmsg2 */
    sink = r;
    if (r <= 0)
        return r;
    if (mm[0].msg_len == 0)
        return 0;
    if (r == 2 && mm[1].msg_len == 0)
        batch_eof = 1;
    /* the second message's bytes follow the first's in buf only when the first filled
     * its half; the tests send less, so copy them down */
    size_t n0 = mm[0].msg_len, n1 = r == 2 ? mm[1].msg_len : 0;
    memmove(buf + n0, buf + len / 2, n1);
    return (ssize_t)(n0 + n1);
}

NOINLINE ssize_t rd_readv(int fd, char *buf, size_t len)
{
    struct iovec iov[2] = {{buf, len / 2}, {buf + len / 2, len - len / 2}};
    ssize_t n = readv(fd, iov, 2); /* @rd_readv */
    sink = (int)n;
    return n;
}

NOINLINE ssize_t rd_read_chk(int fd, char *buf, size_t len)
{
    ssize_t n = __read_chk(fd, buf, len, len); /* @rd_read_chk */
    sink = (int)n;
    return n;
}

NOINLINE ssize_t rd_recv_chk(int fd, char *buf, size_t len)
{
    ssize_t n = __recv_chk(fd, buf, len, len, 0); /* @rd_recv_chk */
    sink = (int)n;
    return n;
}

NOINLINE ssize_t rd_recvfrom_chk(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    ssize_t n = __recvfrom_chk(fd, buf, len, len, 0, (struct sockaddr *)&ss, &sl); /* @rd_recvfrom_chk */
    sink = (int)n;
    return n;
}

typedef ssize_t (*reader_fn)(int, char *, size_t);

static const struct {
    const char *name;
    reader_fn fn;
} readers[] = {
    {"read", rd_read},         {"recv", rd_recv},         {"recvfrom", rd_recvfrom},
    {"recvmsg", rd_recvmsg},   {"recvmmsg", rd_recvmmsg}, {"readv", rd_readv},
    {"recvmmsg2", rd_recvmmsg2},
    {"read_chk", rd_read_chk}, {"recv_chk", rd_recv_chk}, {"recvfrom_chk", rd_recvfrom_chk},
};

static reader_fn reader;

/* ---- accept ---- */

NOINLINE int tserver_accept_conn(int lfd, int *peer_port)
{
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    int fd;
    if (opt_accept4)
        fd = accept4(lfd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC); /* @accept4 */
    else
        fd = accept(lfd, (struct sockaddr *)&sa, &sl); /* @accept */
    if (fd >= 0)
        *peer_port = sa.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&sa)->sin6_port)
                                              : ntohs(((struct sockaddr_in *)&sa)->sin_port);
    sink = fd;
    return fd;
}

/* ---- disposal ---- */

NOINLINE static void dispose(int fd, const char *how)
{
    if (strcmp(how, "leak") == 0) {
        say("LEAK %d", fd);
    } else if (strcmp(how, "close") == 0) {
        close(fd);
        say("CLOSED %d close", fd);
    } else if (strcmp(how, "shutdown") == 0) {
        shutdown(fd, SHUT_WR);
        say("LEAK %d", fd);
    } else if (strcmp(how, "fclose") == 0) {
        FILE *f = fdopen(fd, "r+");
        if (!f) {
            perror("fdopen");
            exit(3);
        }
        fclose(f);
        say("CLOSED %d fclose", fd);
    } else if (strcmp(how, "close_range") == 0) {
        if (close_range((unsigned)fd, (unsigned)fd, 0) != 0) {
            perror("close_range");
            exit(3);
        }
        say("CLOSED %d close_range", fd);
    } else if (strcmp(how, "syscall") == 0) {
        syscall(SYS_close, fd);
        say("CLOSED %d syscall", fd);
    } else if (strcmp(how, "dup2") == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul < 0 || dup2(nul, fd) != fd) {
            perror("dup2");
            exit(3);
        }
        close(nul);
        say("CLOSED %d dup2", fd); /* fd now refers to /dev/null and stays open */
    } else if (strcmp(how, "reuse") == 0) {
        int held[64], nheld = 0, s;
        syscall(SYS_close, fd);
        /* the lowest free number is taken; climb until we get fd back */
        for (;;) {
            s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0 || s >= fd || nheld == 64)
                break;
            held[nheld++] = s;
        }
        for (int i = 0; i < nheld; i++)
            close(held[i]);
        say("REUSE %d %d", fd, s); /* the new socket stays open, unconnected */
    } else if (strcmp(how, "reusefile") == 0) {
        syscall(SYS_close, fd);
        int f = open("/dev/null", O_RDONLY);
        say("REUSE %d %d", fd, f); /* a regular descriptor now holds the number */
    } else if (strcmp(how, "dupboth") == 0) {
        int d = dup(fd);
        say("DUP %d %d", fd, d);
        say("LEAK %d", fd);
    } else if (strcmp(how, "highfd") == 0) {
        int h = dup2(fd, 15000);
        if (h != 15000) {
            perror("dup2 15000");
            exit(3);
        }
        close(fd);
        say("DUP %d %d", fd, h);
        say("LEAK %d", h);
    } else if (strcmp(how, "dupkeep") == 0) {
        int d = dup(fd);
        close(fd);
        say("DUP %d %d", fd, d);
        say("LEAK %d", d);
    } else {
        fprintf(stderr, "unknown close mode %s\n", how);
        exit(2);
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

NOINLINE static void serve(int fd)
{
    char buf[4096];
    char req[256];
    size_t reqlen = 0;
    long total = 0;
    int eof = 0;

    if (opt_sleep_read_ms) {
        sleep_ms(opt_sleep_read_ms);
        say("WOKE %d", fd);
    }
    for (;;) {
        ssize_t n = reader(fd, buf, sizeof buf);
        if (n > 0) {
            total += n;
            size_t room = sizeof req - 1 - reqlen;
            size_t c = (size_t)n < room ? (size_t)n : room;
            memcpy(req + reqlen, buf, c);
            reqlen += c;
            if (opt_echo)
                write_all(fd, buf, (size_t)n);
            if (batch_eof) {
                say("BATCH_EOF %d", fd);
                eof = 1;
                break;
            }
            continue;
        }
        if (n == 0) {
            eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        break;
    }
    req[reqlen] = 0;
    if (total)
        say("DATA %d %ld", fd, total);
    if (eof)
        say("EOF %d", fd);
    else
        say("ERROR %d %s", fd, strerror(errno));
    if (opt_delay_ms)
        sleep_ms(opt_delay_ms);
    if (opt_reply)
        write_all(fd, "REPLY\n", 6);
    if (opt_stream_ms) {
        /* a reply that keeps streaming after the client's half-close */
        char chunk[1024];
        memset(chunk, 'z', sizeof chunk);
        for (int t = 0; t < opt_stream_ms; t += 50) {
            write_all(fd, chunk, sizeof chunk);
            sleep_ms(50);
        }
        write_all(fd, "END\n", 4);
    }
    const char *how = opt_close;
    if (strstr(req, "LEAK"))
        how = "leak";
    else if (strstr(req, "CLOSE"))
        how = "close";
    dispose(fd, how);
}

static void *worker(void *arg)
{
    int fd = (int)(long)arg;
    serve(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    int c;
    while ((c = getopt(argc, argv, "n:m:c:As:w:d:Retl:qT:W:6Z")) != -1) {
        switch (c) {
        case 'n': opt_n = atoi(optarg); break;
        case 'm': opt_method = optarg; break;
        case 'c': opt_close = optarg; break;
        case 'A': opt_accept4 = 1; break;
        case 's': opt_sleep_read_ms = atoi(optarg); break;
        case 'w': opt_sleep_accept_ms = atoi(optarg); break;
        case 'd': opt_delay_ms = atoi(optarg); break;
        case 'R': opt_reply = 1; break;
        case 'e': opt_echo = 1; break;
        case 't': opt_threads = 1; break;
        case 'l': opt_linger_ms = atoi(optarg); break;
        case 'q': opt_quit_on_stdin = 1; break;
        case 'T': opt_limit_s = atoi(optarg); break;
        case 'W': opt_stream_ms = atoi(optarg); break;
        case '6': opt_inet6 = 1; break;
        case 'Z': opt_close_stdin = 1; break;
        default:
            fprintf(stderr, "usage: see the comment at the top of tserver.c\n");
            return 2;
        }
    }
    for (size_t i = 0; i < sizeof readers / sizeof readers[0]; i++)
        if (strcmp(readers[i].name, opt_method) == 0)
            reader = readers[i].fn;
    if (!reader) {
        fprintf(stderr, "unknown read method %s\n", opt_method);
        return 2;
    }
    alarm((unsigned)opt_limit_s);

    int lfd = socket(opt_inet6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int one = 1, port;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (opt_inet6) {
        /* IPv6 socket, still 127.0.0.1 only: the v4-mapped address ::ffff:127.0.0.1 */
        struct sockaddr_in6 s6;
        memset(&s6, 0, sizeof s6);
        s6.sin6_family = AF_INET6;
        inet_pton(AF_INET6, "::ffff:127.0.0.1", &s6.sin6_addr);
        if (bind(lfd, (struct sockaddr *)&s6, sizeof s6) != 0 || listen(lfd, 512) != 0) {
            perror("bind/listen");
            return 1;
        }
        socklen_t sl = sizeof s6;
        getsockname(lfd, (struct sockaddr *)&s6, &sl);
        port = ntohs(s6.sin6_port);
    } else {
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = 0;
        if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 512) != 0) {
            perror("bind/listen");
            return 1;
        }
        socklen_t sl = sizeof sa;
        getsockname(lfd, (struct sockaddr *)&sa, &sl);
        port = ntohs(sa.sin_port);
    }
    say("PORT %d", port);

    if (opt_close_stdin) {
        close(0); /* the next accepted connection gets descriptor 0 */
        opt_quit_on_stdin = 0;
    }
    pthread_t *tids = calloc((size_t)(opt_n > 0 ? opt_n : 1), sizeof *tids);
    int ntids = 0;
    for (int i = 0; i < opt_n; i++) {
        if (opt_sleep_accept_ms)
            sleep_ms(opt_sleep_accept_ms);
        int pport = 0;
        int fd = tserver_accept_conn(lfd, &pport);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                i--;
                continue;
            }
            perror("accept");
            return 1;
        }
        say("ACCEPT %d %d", fd, pport);
        if (opt_threads) {
            if (pthread_create(&tids[ntids], NULL, worker, (void *)(long)fd) != 0) {
                perror("pthread_create");
                return 1;
            }
            ntids++;
        } else {
            serve(fd);
        }
    }
    for (int i = 0; i < ntids; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    say("DONE");
    if (opt_quit_on_stdin) {
        struct pollfd p = {0, POLLIN, 0};
        poll(&p, 1, opt_linger_ms);
    } else {
        sleep_ms(opt_linger_ms);
    }
    return 0;
}
