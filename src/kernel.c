/* What the kernel knows: socket states by netlink sock_diag (as ss does), TCP_INFO, addresses. */
#define _GNU_SOURCE
#include "buf.h"
#include "region.h"
#include <sched.h>
#include "sink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void cw_inode_set_clear(struct inode_set *s)
{
    if (s->keys != NULL) memset(s->keys, 0, s->cap * sizeof *s->keys);
    s->count = 0;
}

static size_t slot_of(uint64_t ino, size_t cap)
{
    uint64_t h = ino * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 17) & (cap - 1);
}

int cw_inode_set_has(const struct inode_set *s, uint64_t ino)
{
    if (s->count == 0 || ino == 0) return 0;
    for (size_t i = slot_of(ino, s->cap);; i = (i + 1) & (s->cap - 1)) {
        if (s->keys[i] == ino) return 1;
        if (s->keys[i] == 0) return 0;
    }
}

void cw_inode_set_add(struct inode_set *s, uint64_t ino)
{
    if (ino == 0) return;
    if ((s->count + 1) * 2 > s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 256;
        uint64_t *nk = calloc(ncap, sizeof *nk);
        if (nk == NULL) return;
        for (size_t i = 0; i < s->cap; i++) {
            if (s->keys[i] == 0) continue;
            size_t j = slot_of(s->keys[i], ncap);
            while (nk[j] != 0) j = (j + 1) & (ncap - 1);
            nk[j] = s->keys[i];
        }
        free(s->keys);
        s->keys = nk;
        s->cap = ncap;
    }
    size_t i = slot_of(ino, s->cap);
    while (s->keys[i] != 0) {
        if (s->keys[i] == ino) return;
        i = (i + 1) & (s->cap - 1);
    }
    s->keys[i] = ino;
    s->count++;
}

static struct dumped_socket *dumped;
static size_t ndumped, dumped_cap;

const struct dumped_socket *cw_kernel_dumped(uint64_t inode)
{
    for (size_t i = 0; i < ndumped; i++)
        if (dumped[i].inode == inode) return &dumped[i];
    return NULL;
}

static void format_endpoint(int family, const __be32 *addr, __be16 port, char *out, size_t cap)
{
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

static void remember(const struct inet_diag_msg *m)
{
    /* addresses of a pathological number of sockets: not kept */
    if (ndumped >= 65536 || cw_grow(&dumped, &dumped_cap, ndumped, sizeof *dumped, 64) != 0) return;
    struct dumped_socket *d = &dumped[ndumped++];
    d->inode = m->idiag_inode;
    format_endpoint(m->idiag_family, m->id.idiag_src, m->id.idiag_sport, d->local, sizeof d->local);
    format_endpoint(m->idiag_family, m->id.idiag_dst, m->id.idiag_dport, d->peer, sizeof d->peer);
}

static int diag_fd = -1;
static uint64_t diag_ino;

static int diag_socket(void)
{
    if (diag_fd >= 0 && cw_kernel_socket_inode(diag_fd) == diag_ino && diag_ino != 0) return diag_fd;
    /* Lost (the program closed it, or forked): a fresh one; never close a number that may now
     * be the program's. */
    diag_fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (diag_fd < 0) return -1;
    diag_fd = cw_fd_move_high(diag_fd);
    diag_ino = cw_kernel_socket_inode(diag_fd);
    struct timeval tv = {2, 0};
    setsockopt(diag_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return diag_fd;
}

void cw_kernel_after_fork(void)
{
    /* The child shares the parent's netlink socket: replies could go to either; use its own. */
    diag_fd = -1;
    diag_ino = 0;
}

/* A connection in the accept queue whose peer has closed is a finding only if it waited there:
 * a client that sends its request and closes at once is accepted within milliseconds. */
static int queued_long(const struct nlmsghdr *h, const struct inet_diag_msg *m)
{
    const struct rtattr *a = (const struct rtattr *)(m + 1);
    int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof *m);
    for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type != INET_DIAG_INFO) continue;
        struct tcp_info ti;
        memset(&ti, 0, sizeof ti);
        size_t n = RTA_PAYLOAD(a) < sizeof ti ? RTA_PAYLOAD(a) : sizeof ti;
        memcpy(&ti, RTA_DATA(a), n);
        return ti.tcpi_last_data_recv >= CW_QUEUED_DEAD_MS;
    }
    return 0;
}

static int dump_family(int fd, int family, uint32_t state_mask, struct inode_set *out,
                       struct unowned_ports *unowned)
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
    /* TCP_INFO of each socket too, for the ones no process holds: how long they waited */
    if (unowned != NULL) msg.req.idiag_ext = 1 << (INET_DIAG_INFO - 1);
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
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != (uint32_t)family) continue; /* a stale reply to an earlier dump */
            if (h->nlmsg_type == NLMSG_DONE) return 0;
            if (h->nlmsg_type == NLMSG_ERROR) return -1;
            if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
            const struct inet_diag_msg *m = NLMSG_DATA(h);
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof *m)) continue;
            if (m->idiag_inode != 0) {
                cw_inode_set_add(out, m->idiag_inode);
                remember(m);
            } else if (unowned != NULL && m->idiag_state == TCPS_CLOSE_WAIT &&
                       queued_long(h, m)) {
                uint16_t port = ntohs(m->id.idiag_sport);
                int i = 0;
                while (i < unowned->n && unowned->port[i] != port) i++;
                if (i == unowned->n && unowned->n < CW_MAX_UNOWNED_PORTS) {
                    unowned->port[i] = port;
                    unowned->count[i] = 0;
                    unowned->n++;
                }
                if (i < unowned->n) unowned->count[i]++;
            }
        }
    }
}

int cw_kernel_tcp_inodes(uint32_t state_mask, struct inode_set *out, struct unowned_ports *unowned)
{
    cw_inode_set_clear(out);
    ndumped = 0;
    if (unowned != NULL) unowned->n = 0;
    int fd = diag_socket();
    if (fd < 0) return -1;
    if (dump_family(fd, AF_INET, state_mask, out, unowned) != 0) {
        diag_fd = -1; /* desynchronised: start over with a new socket next time */
        return -1;
    }
    if (dump_family(fd, AF_INET6, state_mask, out, unowned) != 0) {
        diag_fd = -1;
        return -1;
    }
    return 0;
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

int cw_kernel_peer(int fd, struct cw_peer *out)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        out->family = AF_INET;
        out->port = ntohs(a->sin_port);
        memcpy(out->addr, &a->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        out->family = AF_INET6;
        out->port = ntohs(a->sin6_port);
        memcpy(out->addr, &a->sin6_addr, 16);
    } else {
        return -1;
    }
    return 0;
}

void cw_peer_format(const struct cw_peer *p, char *out, size_t cap)
{
    if (p->family == AF_INET || p->family == AF_INET6) {
        __be32 addr[4];
        memcpy(addr, p->addr, sizeof addr);
        format_endpoint(p->family, addr, htons(p->port), out, cap);
    } else {
        snprintf(out, cap, "?");
    }
}

static _Atomic(struct cw_peer *) peer_chunks[CW_MAX_CHUNKS];

struct cw_peer *cw_peer_slot(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (fd < 0 || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_peer *chunk = atomic_load_explicit(&peer_chunks[c], memory_order_acquire);
    if (chunk == NULL) {
        struct cw_shared *sh = cw_sh;
        if (sh == NULL || c >= sh->nchunks) return NULL;
        atomic_store_explicit(&sh->peer_chunk[c], 1, memory_order_release);
        chunk = cw_region_peers + (size_t)c * CW_CHUNK_SLOTS;
        atomic_store_explicit(&peer_chunks[c], chunk, memory_order_release);
    }
    return &chunk[(unsigned)fd % CW_CHUNK_SLOTS];
}

void cw_peer_detach(void)
{
    for (unsigned c = 0; c < CW_MAX_CHUNKS; c++) atomic_store(&peer_chunks[c], NULL);
}

CW_HIDDEN _Atomic int cw_epoll_fd = -1;
static uint64_t epoll_ino;
static uint32_t epoll_generation;

int cw_epoll_ensure(void)
{
    /* On its own table the watcher's copy cannot be touched by the program. */
    if (cw_on_private_table && atomic_load(&cw_epoll_fd) >= 0) return 0;
    int fd = atomic_load(&cw_epoll_fd);
    if (fd >= 0 && cw_kernel_socket_inode(fd) == 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && (uint64_t)st.st_ino == epoll_ino) return 0;
    }
    /* Gone (a daemon's close-all loop) or never made: a new instance; never close the old
     * number, it may be the program's now. */
    int nfd = epoll_create1(EPOLL_CLOEXEC);
    if (nfd < 0) return -1;
    nfd = cw_fd_move_high(nfd);
    struct stat st;
    epoll_ino = fstat(nfd, &st) == 0 ? (uint64_t)st.st_ino : 0;
    epoll_generation++;
    atomic_store(&cw_epoll_fd, nfd);
    return 0;
}

void cw_epoll_adopt(int fd, uint32_t generation)
{
    epoll_generation = generation;
    atomic_store(&cw_epoll_fd, fd);
}

uint32_t cw_epoll_generation(void)
{
    return epoll_generation;
}

int cw_epoll_watch(int fd, int number, uint64_t inode)
{
    int ep = atomic_load(&cw_epoll_fd);
    if (ep < 0 || fd < 0) return -1;
    if (!cw_on_private_table) {
        /* The program's table: the number may have become the program's own (a close-all
         * loop, then a new epoll instance of its own at the same number). */
        struct stat st;
        if (fstat(ep, &st) != 0 || (uint64_t)st.st_ino != epoll_ino) return -1;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLRDHUP | EPOLLET;
    ev.data.u64 = (uint64_t)(uint32_t)number << 32 | (uint32_t)inode;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0 || errno == EEXIST) return 0;
    return -1;
}

void cw_epoll_after_fork(void)
{
    /* The instance is shared with the parent: its events must stay the parent's.  Dropping
     * this process's reference does not disturb the parent's registrations. */
    int fd = atomic_load(&cw_epoll_fd);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_ino == epoll_ino) close(fd);
    atomic_store(&cw_epoll_fd, -1);
}

_Static_assert(sizeof(struct cw_peer) == 24, "three words");

void cw_peer_store(struct cw_peer *slot, const struct cw_peer *value)
{
    uint64_t w[3];
    memcpy(w, value, sizeof w);
    _Atomic uint64_t *dst = (_Atomic uint64_t *)(void *)slot;
    for (int i = 0; i < 3; i++) atomic_store_explicit(&dst[i], w[i], memory_order_relaxed);
}

void cw_peer_load(const struct cw_peer *slot, struct cw_peer *value)
{
    uint64_t w[3];
    const _Atomic uint64_t *src = (const _Atomic uint64_t *)(const void *)slot;
    for (int i = 0; i < 3; i++) w[i] = atomic_load_explicit(&src[i], memory_order_relaxed);
    memcpy(value, w, sizeof w);
}

CW_HIDDEN __thread int cw_on_private_table __attribute__((tls_model("initial-exec")));
static int self_pidfd = -1;

int cw_watcher_private_table(const int *keep, int nkeep)
{
    cw_on_private_table = 0;
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0) return -1;
    /* Make sure a copy can be had before letting go of the shared table. */
    int probe = keep[0] >= 0 ? keep[0] : 0;
    int copy = (int)syscall(SYS_pidfd_getfd, pidfd, probe, 0);
    if (copy < 0) {
        close(pidfd);
        return -1;
    }
    close(copy);
    /* Made again once on our own table, so that the program's table never keeps it. */
    close(pidfd);
    if (unshare(CLONE_FILES) != 0) return -1;
    /* From here on this thread's descriptor calls are on its own table: the hooks must leave the
     * program's records alone (the close_range below would otherwise forget them all). */
    cw_on_private_table = 1;
    pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0) return -1; /* cannot happen after the probe; then the copies simply fail */
    /* This table is a copy of the program's: drop every copy of the program's descriptors
     * (holding one would keep its socket open), keeping ours and the pidfd. */
    int mine[16];
    int n = 0;
    for (int i = 0; i < nkeep && n < 15; i++)
        if (keep[i] >= 0) mine[n++] = keep[i];
    mine[n++] = pidfd;
    unsigned lo = 0;
    for (;;) {
        unsigned next = ~0u;
        for (int i = 0; i < n; i++)
            if ((unsigned)mine[i] >= lo && (unsigned)mine[i] < next) next = (unsigned)mine[i];
        if (next == ~0u) {
            syscall(SYS_close_range, lo, ~0u, 0);
            break;
        }
        if (next > lo) syscall(SYS_close_range, lo, next - 1, 0);
        lo = next + 1;
    }
    self_pidfd = pidfd;
    cw_on_private_table = 1;
    return 0;
}

void cw_kernel_borrow_from(int pidfd)
{
    self_pidfd = pidfd;
    cw_on_private_table = 1;
}

int cw_borrowed(struct cw_borrow *b)
{
    if (!cw_on_private_table) return b->fd;
    if (b->copy < 0 && b->fd >= 0) {
        b->copy = (int)syscall(SYS_pidfd_getfd, self_pidfd, b->fd, 0);
        static int refused;
        if (b->copy < 0 && errno == EPERM && !refused) {
            /* The program changed its credentials or made itself non-dumpable after we started. */
            refused = 1;
            cw_warn("the program's descriptors can no longer be reached (pidfd_getfd: permission denied); ",
                    "no further reports", NULL);
        }
    }
    return b->copy;
}

void cw_borrow_end(struct cw_borrow *b)
{
    if (b->copy >= 0) close(b->copy);
    b->copy = -1;
}
