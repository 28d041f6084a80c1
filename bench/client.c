/*
 * Load clients for the benchmarks, with exact request counts (wrk runs for a time instead).
 *
 *   client http PORT PATH REQUESTS ka|close
 *       REQUESTS sequential GETs of PATH on 127.0.0.1:PORT: all on one keep-alive connection
 *       (ka), or one connection each, with "Connection: close" (close).
 *   client echo PORT CONNECTIONS MESSAGES
 *       CONNECTIONS sequential connections; on each, MESSAGES round trips of 64 bytes, then
 *       close().
 *   client line PORT CONNECTIONS
 *       CONNECTIONS sequential connections; on each, one line of 64 bytes ("...\n") sent and
 *       the same line read back, then close() (the fork-per-connection echo server of
 *       bench/forking_echo.py).
 *   client pair PORT_A PORT_B CONNECTIONS
 *       The same one-line connections, alternating between two servers (A B, then B A, ...),
 *       each connection timed from connect to close.  Prints "pair_us MEDIAN_A MEDIAN_B RATIO":
 *       each server's median connection time in microseconds and the median of the per-pair
 *       ratios B/A.  Two servers side by side, one connection apart: what the machine does
 *       meanwhile falls on both alike.
 *   client httppair PORT_A PORT_B CONNECTIONS
 *       One GET of /f512 with "Connection: close" per connection, alternating between two HTTP
 *       servers the same way; prints "pair_us" as the pair mode does.
 *   client pgpair PORT_A PORT_B CONNECTIONS
 *       What `pgbench -S -C` does for one transaction, against two PostgreSQL servers in turn (A B,
 *       then B A, ...): connect as user postgres to database postgres (trust authentication),
 *       one SELECT of an account's balance from pgbench_accounts, terminate, close.  Each
 *       transaction timed; prints "pair_us" as the pair mode does.
 * Prints "elapsed_s X" (from the first connect to the last close) and exits 0 if every reply
 * came back whole.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dial(void)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) break;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
        close(fd);
        usleep(20000);
    }
    fprintf(stderr, "client: connect: %s\n", strerror(errno));
    exit(1);
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            fprintf(stderr, "client: write: %s\n", strerror(errno));
            exit(1);
        }
        p += w;
        n -= (size_t)w;
    }
}

/* One HTTP response: headers, then Content-Length bytes of body. */
static void read_response(int fd)
{
    char buf[16384];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
        if (r <= 0) {
            fprintf(stderr, "client: response cut short\n");
            exit(1);
        }
        have += (size_t)r;
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end == NULL) continue;
        char *cl = strcasestr(buf, "\r\nContent-Length:");
        size_t body = cl != NULL ? strtoul(cl + 17, NULL, 10) : 0;
        size_t want = (size_t)(end + 4 - buf) + body;
        while (have < want) {
            r = read(fd, buf, sizeof buf < want - have ? sizeof buf : want - have);
            if (r <= 0) {
                fprintf(stderr, "client: body cut short\n");
                exit(1);
            }
            have += (size_t)r;
        }
        return;
    }
}

static void run_http(const char *path, long requests, int keepalive)
{
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", path,
                     keepalive ? "" : "Connection: close\r\n");
    int fd = keepalive ? dial() : -1;
    for (long i = 0; i < requests; i++) {
        if (!keepalive) fd = dial();
        send_all(fd, req, (size_t)n);
        read_response(fd);
        if (!keepalive) {
            char c;
            (void)!read(fd, &c, 1); /* the server's FIN: it closes first */
            close(fd);
        }
    }
    if (keepalive && fd >= 0) close(fd);
}

static void run_echo(long conns, long messages)
{
    char msg[64], back[64];
    memset(msg, 'e', sizeof msg);
    for (long c = 0; c < conns; c++) {
        int fd = dial();
        for (long m = 0; m < messages; m++) {
            send_all(fd, msg, sizeof msg);
            size_t got = 0;
            while (got < sizeof back) {
                ssize_t r = read(fd, back + got, sizeof back - got);
                if (r <= 0) {
                    fprintf(stderr, "client: echo cut short\n");
                    exit(1);
                }
                got += (size_t)r;
            }
        }
        close(fd);
    }
}

static void one_line(void)
{
    char msg[64], back[64];
    memset(msg, 'l', sizeof msg);
    msg[sizeof msg - 1] = '\n';
    {
        int fd = dial();
        send_all(fd, msg, sizeof msg);
        size_t got = 0;
        while (got < sizeof back) {
            ssize_t r = read(fd, back + got, sizeof back - got);
            if (r <= 0) {
                fprintf(stderr, "client: line cut short\n");
                exit(1);
            }
            got += (size_t)r;
        }
        if (memcmp(msg, back, sizeof msg) != 0) {
            fprintf(stderr, "client: line came back different\n");
            exit(1);
        }
        close(fd);
    }
}

/* PostgreSQL's protocol 3.0: reads messages until ReadyForQuery ('Z'); exits on an error ('E'). */
static void pg_until_ready(int fd)
{
    char buf[8192];
    size_t have = 0;
    for (;;) {
        while (have >= 5) {
            uint32_t len;
            memcpy(&len, buf + 1, 4);
            len = ntohl(len);
            if (len < 4 || len + 1 > sizeof buf) {
                fprintf(stderr, "client: a PostgreSQL message of %u bytes\n", len);
                exit(1);
            }
            if (have < len + 1) break;
            char type = buf[0];
            if (type == 'E') {
                fprintf(stderr, "client: PostgreSQL said an error: %.*s\n", (int)len - 4, buf + 5);
                exit(1);
            }
            memmove(buf, buf + len + 1, have - len - 1);
            have -= len + 1;
            if (type == 'Z') return;
        }
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        if (r <= 0) {
            fprintf(stderr, "client: PostgreSQL closed the connection\n");
            exit(1);
        }
        have += (size_t)r;
    }
}

static void one_pg_transaction(long aid)
{
    int fd = dial();
    static const char params[] = "user\0postgres\0database\0postgres\0\0";
    char msg[256];
    uint32_t len = htonl((uint32_t)(8 + sizeof params - 1)), version = htonl(196608);
    memcpy(msg, &len, 4);
    memcpy(msg + 4, &version, 4);
    memcpy(msg + 8, params, sizeof params - 1);
    send_all(fd, msg, 8 + sizeof params - 1);
    pg_until_ready(fd);
    char sql[128];
    int n = snprintf(sql, sizeof sql, "SELECT abalance FROM pgbench_accounts WHERE aid = %ld;", aid);
    msg[0] = 'Q';
    len = htonl((uint32_t)(4 + n + 1));
    memcpy(msg + 1, &len, 4);
    memcpy(msg + 5, sql, (size_t)n + 1);
    send_all(fd, msg, 5 + (size_t)n + 1);
    pg_until_ready(fd);
    const char term[5] = {'X', 0, 0, 0, 4};
    send_all(fd, term, sizeof term);
    close(fd);
}

static void run_line(long conns)
{
    for (long c = 0; c < conns; c++) one_line();
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

enum pair_kind { PAIR_LINE, PAIR_PG, PAIR_HTTP };

static void run_pair(unsigned short port_a, unsigned short port_b, long conns, enum pair_kind kind)
{
    double *a = calloc((size_t)conns, sizeof *a), *b = calloc((size_t)conns, sizeof *b);
    double *ratio = calloc((size_t)conns, sizeof *ratio);
    if (a == NULL || b == NULL || ratio == NULL) exit(1);
    for (long c = 0; c < conns; c++) {
        for (int k = 0; k < 2; k++) {
            int to_b = (c % 2 == 0) == (k == 1); /* A B, B A, A B, ... */
            addr.sin_port = htons(to_b ? port_b : port_a);
            double t0 = now_s();
            if (kind == PAIR_PG) one_pg_transaction(1 + (c * 7919) % 100000); /* pgbench -s 1: 100,000 accounts */
            else if (kind == PAIR_HTTP) run_http("/f512", 1, 0);
            else one_line();
            (to_b ? b : a)[c] = (now_s() - t0) * 1e6;
        }
        ratio[c] = b[c] / a[c];
    }
    double ma = median(a, conns), mb = median(b, conns), mr = median(ratio, conns);
    printf("pair_us %.1f %.1f %.4f\n", ma, mb, mr);
    free(a);
    free(b);
    free(ratio);
}

int main(int argc, char **argv)
{
    if (argc == 5 && (strcmp(argv[1], "pair") == 0 || strcmp(argv[1], "pgpair") == 0 || strcmp(argv[1], "httppair") == 0)) {
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        double t0 = now_s();
        enum pair_kind kind = argv[1][0] == 'p' && argv[1][1] == 'g' ? PAIR_PG : argv[1][0] == 'h' ? PAIR_HTTP : PAIR_LINE;
        run_pair((unsigned short)atoi(argv[2]), (unsigned short)atoi(argv[3]), atol(argv[4]), kind);
        printf("elapsed_s %.6f\n", now_s() - t0);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "line") == 0) {
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons((unsigned short)atoi(argv[2]));
        double t0 = now_s();
        run_line(atol(argv[3]));
        printf("elapsed_s %.6f\n", now_s() - t0);
        return 0;
    }
    if (argc < 6) {
        fprintf(stderr, "usage: client http PORT PATH REQUESTS ka|close | client echo PORT CONNS MSGS x | "
                        "client line PORT CONNS\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    double t0 = now_s();
    if (strcmp(argv[1], "http") == 0) run_http(argv[3], atol(argv[4]), strcmp(argv[5], "ka") == 0);
    else if (strcmp(argv[1], "echo") == 0) run_echo(atol(argv[3]), atol(argv[4]));
    else return 2;
    printf("elapsed_s %.6f\n", now_s() - t0);
    return 0;
}
