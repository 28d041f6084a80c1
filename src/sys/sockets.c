/* What the kernel knows: socket states by netlink sock_diag (as ss does), TCP_INFO, addresses. */
#define _GNU_SOURCE
#include "sys/sockets.h"
#include "shared/fdtable.h"
#include <sched.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void cw_format_endpoint(int family, const void *addr_bytes, uint16_t port_be, char *out, size_t cap)
{
    const __be32 *addr = addr_bytes;
    __be16 port = port_be;
    char ip[INET6_ADDRSTRLEN];
    if (family == AF_INET) {
        inet_ntop(AF_INET, addr, ip, sizeof ip);
        snprintf(out, cap, "%s:%u", ip, ntohs(port));
    } else {
        const unsigned char *b = (const unsigned char *)addr;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(b, mapped, 12) == 0) {
            inet_ntop(AF_INET, b + 12, ip, sizeof ip);
            snprintf(out, cap, "%s:%u", ip, ntohs(port));
        } else {
            inet_ntop(AF_INET6, addr, ip, sizeof ip);
            snprintf(out, cap, "[%s]:%u", ip, ntohs(port));
        }
    }
}

/* ---- sock_diag dumps -------------------------------------------------------- */

static int diag_fd = -1;

/* Only a caller on the watcher's own table may use the socket kept there: the same number in
 * the program's table (the program's exit, writing its summary itself) is one of its own. */
#define ON_OWN_TABLE() (cw_in_watcher_process || cw_on_private_table)

static int diag_socket(void)
{
    if (ON_OWN_TABLE() && diag_fd >= 0) return diag_fd;
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -1;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    /* Kept only where the table is ours (the watcher process, a watcher thread on a table of its
     * own): in the program's table the number would be the program's to close and reuse. */
    if (ON_OWN_TABLE() && diag_fd < 0) diag_fd = fd;
    return fd;
}

static void diag_done(int fd, int failed)
{
    if (!ON_OWN_TABLE() || fd != diag_fd) {
        close(fd);
    } else if (failed) {
        /* desynchronised: start over with a new socket next time */
        close(fd);
        diag_fd = -1;
    }
}

/* The product's top bits, which every bit of the id reaches: a key's low 16 bits (its local
 * port) are the same for every connection of a listener. */
static size_t hash_inode(uint64_t ino, size_t cap)
{
    return (size_t)((ino * 0x9e3779b97f4a7c15ull) >> (64 - __builtin_ctzll((unsigned long long)cap))) & (cap - 1);
}

static void index_put(uint32_t *index, size_t cap, uint64_t id, size_t at)
{
    size_t i = hash_inode(id, cap);
    while (index[i] != 0) i = (i + 1) & (cap - 1);
    index[i] = (uint32_t)at + 1;
}

static void dump_index(struct cw_dump *d, size_t at)
{
    if ((d->n + 1) * 2 > d->index_cap) {
        size_t ncap = d->index_cap ? d->index_cap * 2 : 512;
        uint32_t *ni = calloc(ncap, sizeof *ni), *np = calloc(ncap, sizeof *np);
        if (ni == NULL || np == NULL) {
            free(ni);
            free(np);
            return;
        }
        free(d->index);
        free(d->peers);
        d->index = ni;
        d->peers = np;
        d->index_cap = ncap;
        for (size_t k = 0; k < at; k++) {
            index_put(ni, ncap, d->socks[k].inode, k);
            if (d->socks[k].key != 0) index_put(np, ncap, d->socks[k].key, k);
        }
    }
    index_put(d->index, d->index_cap, d->socks[at].inode, at);
    if (d->socks[at].key != 0) index_put(d->peers, d->index_cap, d->socks[at].key, at);
}

const struct cw_sock *cw_dump_find(const struct cw_dump *d, uint64_t inode)
{
    if (inode == 0 || d->index_cap == 0) return NULL;
    for (size_t i = hash_inode(inode, d->index_cap);; i = (i + 1) & (d->index_cap - 1)) {
        uint32_t k = d->index[i];
        if (k == 0) return NULL;
        if (d->socks[k - 1].inode == inode) return &d->socks[k - 1];
    }
}

/* The first socket of the dump with the key, and how many have it. */
static const struct cw_sock *find_key(const struct cw_dump *d, uint64_t key, int *count)
{
    const struct cw_sock *found = NULL;
    *count = 0;
    if (key == 0 || d->index_cap == 0) return NULL;
    for (size_t i = hash_inode(key, d->index_cap); d->peers[i] != 0; i = (i + 1) & (d->index_cap - 1)) {
        const struct cw_sock *s = &d->socks[d->peers[i] - 1];
        if (s->key != key) continue;
        if (found == NULL) found = s;
        (*count)++;
    }
    return found;
}

int cw_dump_count_key(const struct cw_dump *d, uint64_t key)
{
    int n;
    find_key(d, key, &n);
    return n;
}

const struct cw_sock *cw_dump_find_id(const struct cw_dump *d, uint64_t id, int *ambiguous)
{
    if (!CW_ID_IS_PEER(id)) return cw_dump_find(d, id);
    int n;
    const struct cw_sock *found = find_key(d, id, &n);
    if (n <= 1) return found;
    if (ambiguous != NULL) *ambiguous = 1;
    return NULL;
}

/* The key of an IPv4 connection's ends, as accept() gave them to the program (shared/fdtable.h). */
static uint64_t sock_key(const struct cw_sock *s)
{
    if (s->state == TCPS_LISTEN || s->family != AF_INET) return 0;
    uint32_t peer;
    memcpy(&peer, s->dst, 4);
    return cw_peer_key(peer, s->dport, s->sport);
}

static void take_info(const struct nlmsghdr *h, const struct inet_diag_msg *m, struct cw_sock *s)
{
    const struct rtattr *a = (const struct rtattr *)(m + 1);
    int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof *m);
    for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type != INET_DIAG_INFO) continue;
        struct tcp_info ti;
        memset(&ti, 0, sizeof ti);
        size_t n = RTA_PAYLOAD(a) < sizeof ti ? RTA_PAYLOAD(a) : sizeof ti;
        memcpy(&ti, RTA_DATA(a), n);
        s->has_info = 1;
        s->notsent = ti.tcpi_notsent_bytes;
        s->unacked = ti.tcpi_unacked;
        s->last_data_sent = ti.tcpi_last_data_sent;
        s->last_data_recv = ti.tcpi_last_data_recv;
        s->last_ack_recv = ti.tcpi_last_ack_recv;
        return;
    }
}

static int dump_family(int fd, int family, uint32_t state_mask, struct cw_dump *d)
{
    struct {
        struct nlmsghdr nh;
        struct inet_diag_req_v2 req;
    } msg;
    memset(&msg, 0, sizeof msg);
    msg.nh.nlmsg_len = sizeof msg;
    msg.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.nh.nlmsg_seq = (uint32_t)family;
    msg.req.sdiag_family = (uint8_t)family;
    msg.req.sdiag_protocol = IPPROTO_TCP;
    msg.req.idiag_states = state_mask;
    msg.req.idiag_ext = 1 << (INET_DIAG_INFO - 1);
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    if (sendto(fd, &msg, sizeof msg, 0, (struct sockaddr *)&nl, sizeof nl) < 0) return -1;

    static char buf[32768] __attribute__((aligned(8)));
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) return -1;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != (uint32_t)family) continue; /* a stale reply to an earlier dump */
            if (h->nlmsg_type == NLMSG_DONE) return 0;
            if (h->nlmsg_type == NLMSG_ERROR) return -1;
            if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
            const struct inet_diag_msg *m = NLMSG_DATA(h);
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof *m)) continue;
            struct cw_sock s;
            memset(&s, 0, sizeof s);
            s.inode = m->idiag_inode;
            s.state = m->idiag_state;
            s.family = m->idiag_family;
            s.rqueue = m->idiag_rqueue;
            s.wqueue = m->idiag_wqueue;
            s.sport = m->id.idiag_sport;
            s.dport = m->id.idiag_dport;
            memcpy(s.src, m->id.idiag_src, 16);
            memcpy(s.dst, m->id.idiag_dst, 16);
            take_info(h, m, &s);
            if (s.inode != 0) s.key = sock_key(&s);
            if (s.inode == 0) {
                /* No process holds it yet: a connection in an accept queue.  Dead there if its
                 * peer closed and it waited long (a client that sends its request and closes at
                 * once is accepted within milliseconds). */
                if (s.state != TCPS_CLOSE_WAIT || !s.has_info || s.last_data_recv < CW_QUEUED_DEAD_MS) continue;
                uint16_t port = ntohs(s.sport);
                int i = 0;
                while (i < d->unowned.n && d->unowned.port[i] != port) i++;
                if (i == d->unowned.n && d->unowned.n < CW_MAX_UNOWNED_PORTS) {
                    d->unowned.port[i] = port;
                    d->unowned.count[i] = 0;
                    d->unowned.n++;
                }
                if (i < d->unowned.n) d->unowned.count[i]++;
                continue;
            }
            /* a pathological number of sockets: the rest are not kept */
            if (d->n >= (1u << 22) || cw_grow(&d->socks, &d->cap, d->n, sizeof *d->socks, 256) != 0) continue;
            d->socks[d->n] = s;
            dump_index(d, d->n);
            d->n++;
        }
    }
}

long cw_dumps_taken[2];

static void dump_empty(struct cw_dump *d)
{
    d->n = 0;
    d->unowned.n = 0;
    if (d->index != NULL) memset(d->index, 0, d->index_cap * sizeof *d->index);
    if (d->peers != NULL) memset(d->peers, 0, d->index_cap * sizeof *d->peers);
}

int cw_dump_take(struct cw_dump *d, uint32_t state_mask, int with_inet6)
{
    cw_dumps_taken[(state_mask & ~(1u << TCPS_LISTEN)) != 0 ? CW_DUMP_CONNECTIONS : CW_DUMP_LISTENERS]++;
    dump_empty(d);
    d->ok = 0;
    int fd = diag_socket();
    if (fd < 0) return -1;
    int rc = dump_family(fd, AF_INET, state_mask, d);
    if (rc == 0 && with_inet6) rc = dump_family(fd, AF_INET6, state_mask, d);
    diag_done(fd, rc != 0);
    d->ok = rc == 0;
    return rc;
}

void cw_dump_take_none(struct cw_dump *d)
{
    dump_empty(d);
    d->ok = 1;
}

void cw_sock_endpoint(const struct cw_sock *s, int peer, char *out, size_t cap)
{
    __be32 addr[4];
    memcpy(addr, peer ? s->dst : s->src, sizeof addr);
    cw_format_endpoint(s->family, addr, peer ? s->dport : s->sport, out, cap);
}

int cw_kernel_tcp_info(int fd, struct tcp_info *ti)
{
    socklen_t len = sizeof *ti;
    memset(ti, 0, sizeof *ti);
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len);
}

uint64_t cw_kernel_socket_inode(int fd)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return 0;
    return (uint64_t)st.st_ino;
}

void cw_kernel_endpoint(int fd, int peer, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len = sizeof ss;
    int r = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
                 : getsockname(fd, (struct sockaddr *)&ss, &len);
    char ip[INET6_ADDRSTRLEN];
    if (r == 0 && ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(out, cap, "%s:%u", ip, ntohs(a->sin_port));
    } else if (r == 0 && ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
            inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], ip, sizeof ip);
            snprintf(out, cap, "%s:%u", ip, ntohs(a->sin6_port));
        } else {
            inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
            snprintf(out, cap, "[%s]:%u", ip, ntohs(a->sin6_port));
        }
    } else {
        snprintf(out, cap, "?");
    }
}

const char *cw_tcp_state_name(int state)
{
    static const char *const names[] = {
        "UNKNOWN",  "ESTABLISHED", "SYN_SENT", "SYN_RECV",   "FIN_WAIT1", "FIN_WAIT2",
        "TIME_WAIT", "CLOSE",      "CLOSE_WAIT", "LAST_ACK", "LISTEN",    "CLOSING",
    };
    if (state < 0 || state >= (int)(sizeof names / sizeof names[0])) return "UNKNOWN";
    return names[state];
}


int cw_watcher_private_table(void)
{
    /* A copy of the program's table: every descriptor in it is a copy of one of the program's,
     * and holding one would keep its socket open.  Marked first, so that the hooks leave the
     * program's records alone while the copies are closed. */
    cw_on_private_table = 0;
    if (unshare(CLONE_FILES) != 0) return -1;
    cw_on_private_table = 1;
    syscall(SYS_close_range, 0u, ~0u, 0);
    /* 0, 1 and 2 of this table: nothing of ours may take them and be written to as "stderr". */
    for (int i = 0; i < 3; i++)
        if (open("/dev/null", O_RDWR | O_CLOEXEC) < 0) break;
    return 0;
}
