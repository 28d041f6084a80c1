/*
 * The interposed libc functions.  Each one calls the real function first and looks at the
 * result afterwards, except the closes, which drop the record before the real close runs (a
 * concurrent accept() may get the same number the moment the kernel frees it).
 *
 * Discipline, because these run inside the host program, on any thread, in signal handlers:
 * the real function is resolved lazily (calls arrive before our constructor); the common case
 * (a read that returned data, a close of an untracked fd) costs a compare or two loads; no
 * malloc, no stdio, no lock; errno is saved around anything of ours that may touch it.
 */
#define _GNU_SOURCE
#include "shared/region.h"
#include "options/options.h"
#include "shared/modules.h"
#include "watcher/process.h"
#include "watcher/watcher.h"
#include "unwind/stacks.h"
#include "hooks/jvm.h"
#include "shared/langstack.h"
#include "shared/peers.h"
#include "report/sink.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <grp.h>
#include <limits.h>
#include <linux/futex.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The interposed functions are the library's interface to the program: exported (the version
 * script in exports.map keeps everything else local). */
#pragma GCC visibility push(default)

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

static _Atomic int init_state; /* 0 none, 1 running, 2 done */

/* The watcher thread on its own descriptor table: its numbers are not the program's, so none of
 * its calls may touch the program's records. */
#define ON_WATCHER_TABLE() CW_UNLIKELY(cw_on_private_table)

void *cw_resolve(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    if (p == NULL) {
        /* Nothing to forward to is fatal for the caller; say which symbol before failing. */
        cw_warn("cannot resolve the real ", name, "; aborting");
        abort();
    }
    return p;
}

/* The real functions of the calls a connection's life goes through, resolved all at once when
 * the process makes its first TCP socket, rather than each at its first call: a
 * fork-per-connection server's children would otherwise each look up again (dlsym) the calls the
 * parent never made itself, and write the page that keeps them. */
/* glibc declares the fortified entry points only under _FORTIFY_SOURCE. */
ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *addr,
                       socklen_t *len);
#define IO_CALLS(X) X(read) X(__read_chk) X(recv) X(__recv_chk) X(recvfrom) X(__recvfrom_chk) X(recvmsg) X(recvmmsg) X(readv) X(write) X(send) X(sendto) X(sendmsg) X(close) X(shutdown) X(accept) X(accept4) X(socket) X(connect) X(getsockopt) X(listen) X(dup) X(dup2) X(dup3) X(fcntl) X(fcntl64) X(syscall) X(close_range)
#define IO_REAL_DECLARE(fn) static _Atomic(__typeof__(fn) *) io_real_##fn;
IO_CALLS(IO_REAL_DECLARE)
#define CW_REAL_IO(fn)                                                                      \
    __typeof__(fn) *real_##fn = atomic_load_explicit(&io_real_##fn, memory_order_relaxed);  \
    if (CW_UNLIKELY(real_##fn == NULL)) {                                                   \
        real_##fn = (__typeof__(fn) *)cw_resolve(#fn);                                      \
        atomic_store_explicit(&io_real_##fn, real_##fn, memory_order_relaxed);             \
    }
/* A call this libc lacks stays unresolved here: only a call of it would need it. */
#define IO_REAL_RESOLVE(fn)                                                                 \
    if (atomic_load_explicit(&io_real_##fn, memory_order_relaxed) == NULL)                   \
        atomic_store_explicit(&io_real_##fn, (__typeof__(fn) *)dlsym(RTLD_NEXT, #fn), memory_order_relaxed);

static void io_resolve_all(void)
{
    IO_CALLS(IO_REAL_RESOLVE)
}

CW_FORK_PATH static void at_fork_prepare(void)
{
    /* Asked here, so that the child need not read the region's header (a page a child faults
     * in: a fork does not copy the page tables of a shared mapping). */
    cw_watcher_before_fork();
    cw_region_fork_prepare();
}

CW_FORK_PATH static void at_fork_child(void)
{
    /* Forked while another thread copied the table: that thread is not in the child. */
    if (CW_UNLIKELY(atomic_load_explicit(&cw_private.first_tcp_busy, memory_order_relaxed)))
        atomic_store(&cw_private.first_tcp_busy, 0);
    /* First of all: until the child has its own area, every write lands in the parent's. */
    cw_region_fork_child();
    cw_threads_after_fork_child();
    cw_watcher_after_fork_child();
}

void cw_init(void)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&init_state, &expected, 1)) return;
    int saved = errno;
    if (getenv("CLOSEWAIT_WATCHER_OF") != NULL) {
        /* The watcher process (watcher/process.c): its constructor takes over; its calls are its own. */
        cw_in_lib = 1;
        cw_on_private_table = 1;
        cw_self_rec = CW_OWN_THREAD;
        cw_self_tid_cache = -1;
        errno = saved;
        return;
    }
    cw_in_lib++;
    if (cw_region_create() != 0) cw_warn("cannot map the descriptor table; ", "nothing will be tracked", NULL);
    cw_config_load();
    if (cw_sh != NULL) memcpy(&cw_sh->cfg, &cw_cfg, sizeof cw_cfg);
    cw_stacks_init();
    cw_threads_init();
    /* Registered first, so its prepare handler runs last, right before the fork. */
    pthread_atfork(at_fork_prepare, cw_region_fork_parent, at_fork_child);
    cw_watcher_start();
    cw_in_lib--;
    atomic_store(&init_state, 2);
    errno = saved;
}

__attribute__((constructor)) static void closewait_constructor(void)
{
    cw_watcher_process_main_if_asked();
    cw_init();
}

__attribute__((destructor)) static void closewait_destructor(void)
{
    if (atomic_load(&init_state) == 2) cw_watcher_at_exit();
}

/* ---- what a thread is blocked in, who owns a descriptor ----------------- */

/* Around a call that may block: its record says what the thread waits for, and a call that
 * succeeded makes the thread the descriptor's owner.  No system call: stores, the start time is
 * the watcher's last tick (shared/owners.h). */
/* Declares `blocking`, for BLOCK_LEAVE after the call; `nowait`: the call cannot block
 * (MSG_DONTWAIT). */
#define BLOCK_ENTER(call, fd, nowait) \
    struct cw_blocking blocking;      \
    cw_block_enter(&blocking, (call), (fd), (nowait), (uintptr_t)__builtin_return_address(0))
#define BLOCK_LEAVE() cw_block_leave(&blocking)
/* Not a TCP socket of the table: nothing to do after the call (no owner, no EOF to note), so the
 * real function is called last and nothing waits for it. */
#define UNTRACKED_CALL(call)                                                  \
    do {                                                                      \
        if (!(blocking.word & CW_OWNER_TRACKED)) return call;                 \
    } while (0)

/* ---- births ---------------------------------------------------------- */

static int is_tcp_request(int domain, int type, int protocol)
{
    return (domain == AF_INET || domain == AF_INET6) && (type & 0xf) == SOCK_STREAM &&
           (protocol == 0 || protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP);
}

static uint64_t inode_of(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* An IPv4 listener's port, for the keys of the connections it gives (shared/fdtable.h): asked
 * once.  0 for any other (an IPv6 listener's connections keep their inode).  Its address goes
 * into its peers entry (family 0: no peer; never taken for a connection's ends): the local
 * address of the connections it gives, which the hooks keep at their EOF or shutdown(). */
static void listener_port(struct cw_slot *s, int fd)
{
    struct sockaddr_in in = {0};
    socklen_t len = sizeof in;
    uint16_t port = 0;
    if (getsockname(fd, (struct sockaddr *)&in, &len) == 0 && in.sin_family == AF_INET && len == sizeof in)
        port = in.sin_port;
    /* A transparent proxy's listener gives connections to other addresses and ports than its
     * own: they keep their inode. */
    int transparent = 0;
    len = sizeof transparent;
    CW_REAL_IO(getsockopt);
    if (port != 0 && real_getsockopt(fd, SOL_IP, IP_TRANSPARENT, &transparent, &len) == 0 && transparent) port = 0;
    atomic_store_explicit(&s->port, port, memory_order_relaxed);
    struct cw_peer *p = cw_peer_slot(fd);
    if (p != NULL && port != 0) {
        struct cw_peer own = {.seq = atomic_load_explicit(&s->seq, memory_order_relaxed), .lport = ntohs(port)};
        memcpy(own.laddr, &in.sin_addr, 4);
        cw_peer_store(p, &own);
    }
}

/* Which socket accept() returned: the key of its ends when accept() wrote an IPv4 peer's address
 * and the listener's port is known; its inode otherwise (shared/fdtable.h).  The length is read
 * only after the call succeeded: the kernel read and wrote it, so it is there (before, a bad
 * pointer would crash here where the kernel returns EFAULT). */
static uint64_t accepted_id(int fd, uint16_t lport, const struct sockaddr *addr, const socklen_t *len)
{
    if (lport != 0 && addr != NULL && len != NULL && *len == sizeof(struct sockaddr_in) && addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        return cw_peer_key(in->sin_addr.s_addr, in->sin_port, lport);
    }
    return inode_of(fd);
}

/* Where accept() was asked to write the peer's address. */
struct peer_out {
    const struct sockaddr *addr;
    const socklen_t *len;
};

/* The slot of the new life, or NULL (no slot, no table).  `frame`: the frame of the hook the program
 * called (where the walk to the program's call site starts). */
/* Another thread is copying the table for the watcher it starts (a few milliseconds, once per
 * process): wait for it, bounded. */
static void first_tcp_wait(void)
{
    int saved = errno;
    for (int i = 0; i < 40 && atomic_load_explicit(&cw_private.first_tcp_busy, memory_order_acquire); i++)
        cw_futex_wait(&cw_private.first_tcp_busy, 1, 50);
    errno = saved;
}

static struct cw_slot *birth(int fd, enum cw_kind kind, int op, int nonblocking, const void *frame, uint64_t id)
{
    if (CW_UNLIKELY(atomic_load_explicit(&init_state, memory_order_acquire) != 2)) cw_init();
    /* Is the watcher still there?  One word; a new one if it died. */
    struct cw_shared *sh = cw_sh;
    if (sh != NULL) cw_watcher_check(&sh->watcher_alive);
    struct cw_area *me = cw_me;
    if ((kind == CW_KIND_TCP || kind == CW_KIND_LISTEN) && me != NULL &&
        CW_UNLIKELY(!atomic_load_explicit(&me->any_tcp, memory_order_relaxed))) {
        /* The first TCP socket of the process: the watcher starts now, before anything is
         * written (its start gives this process a region of its own, at the same address). */
        int expected = 0;
        if (atomic_compare_exchange_strong(&me->any_tcp, &expected, 1)) {
            /* While the table is copied into the new watcher's region, other threads' births
             * wait: a slot given meanwhile would be written to the old copy and lost, and a
             * chunk of slots taken meanwhile would be given a second time (two ranges of
             * descriptors sharing one: leaks missed under a multithreaded start). */
            atomic_store(&cw_private.first_tcp_busy, 1);
            io_resolve_all();
            cw_watcher_first_tcp();
            atomic_store(&cw_private.first_tcp_busy, 0);
            cw_futex_wake(&cw_private.first_tcp_busy);
        }
    }
    if (CW_UNLIKELY(atomic_load_explicit(&cw_private.first_tcp_busy, memory_order_acquire)) && !cw_in_lib)
        first_tcp_wait();
    struct cw_slot *s = cw_slot_get(fd);
    if (s == NULL) return NULL;
    uint32_t stack = (kind == CW_KIND_TCP || kind == CW_KIND_LISTEN) && !cw_in_lib ? cw_stack_capture_from(frame) : 0;
    cw_slot_birth(s, kind, op, stack, id);
    if (nonblocking) cw_owner_born_nonblocking(s);
    if (kind == CW_KIND_TCP && !cw_in_lib) {
        uint32_t java = cw_jvm_stack();
        if (CW_UNLIKELY(java != 0)) cw_lang_note_id(fd, CW_LANG_OPEN, java);
    }
    return s;
}

/* A descriptor we did not see born: is it a TCP socket?  Asked once, the answer is kept. */
static enum cw_kind classify(int fd)
{
    int proto = 0;
    socklen_t len = sizeof proto;
    CW_REAL_IO(getsockopt);
    if (real_getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 &&
        (proto == IPPROTO_TCP || proto == IPPROTO_MPTCP)) {
        int type = 0;
        len = sizeof type;
        if (real_getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM) {
            int domain = 0;
            len = sizeof domain;
            if (real_getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_INET6 && cw_me != NULL)
                atomic_store_explicit(&cw_me->any_inet6, 1, memory_order_relaxed);
            return CW_KIND_TCP;
        }
    }
    return CW_KIND_OTHER;
}

static void on_accept(int lfd, int fd, int op, int nonblocking, const void *frame, struct peer_out peer)
{
    int saved = errno;
    /* The listener's slot is there already unless it was inherited: no chunk to make then. */
    struct cw_slot *ls = cw_slot_peek(lfd);
    if (CW_UNLIKELY(ls == NULL)) ls = cw_slot_get(lfd);
    enum cw_kind lkind = CW_KIND_OTHER;
    if (ls != NULL) {
        lkind = (enum cw_kind)CW_SEQ_KIND(atomic_load_explicit(&ls->seq, memory_order_acquire));
        if (lkind == CW_KIND_FREE) {
            /* A listener we did not see created (inherited, or made by a raw syscall). */
            lkind = classify(lfd) == CW_KIND_TCP ? CW_KIND_LISTEN : CW_KIND_OTHER;
            cw_slot_birth(ls, lkind, CW_OP_INHERITED, 0, lkind == CW_KIND_LISTEN ? inode_of(lfd) : 0);
            if (lkind == CW_KIND_LISTEN) listener_port(ls, lfd);
        }
    }
    if (lkind == CW_KIND_TCP || lkind == CW_KIND_LISTEN) {
        uint16_t lport = lkind == CW_KIND_LISTEN ? atomic_load_explicit(&ls->port, memory_order_relaxed) : 0;
        struct cw_slot *s = birth(fd, CW_KIND_TCP, op, nonblocking, frame, accepted_id(fd, lport, peer.addr, peer.len));
        if (s != NULL) atomic_store_explicit(&s->origin_fd, lfd, memory_order_relaxed);
        /* For the watcher: did the queue turn over between two looks?  Not a locked add: two
         * threads accepting at once may lose one, which only makes the watcher ask more. */
        if (ls != NULL && lkind == CW_KIND_LISTEN)
            atomic_store_explicit(&ls->accepts, atomic_load_explicit(&ls->accepts, memory_order_relaxed) + 1u,
                                  memory_order_relaxed);
        /* Only while the watcher sees a queue on this listener: did the client give up
         * before we got to it? */
        if (s != NULL && ls != NULL &&
            (atomic_load_explicit(&ls->flags, memory_order_relaxed) & CW_SF_BACKLOGGED)) {
            struct tcp_info ti;
            socklen_t tlen = sizeof ti;
            CW_REAL_IO(getsockopt);
            if (real_getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0 && ti.tcpi_state == 8 &&
                ti.tcpi_last_data_recv >= CW_QUEUED_DEAD_MS) {
                atomic_fetch_or_explicit(&s->flags, CW_SF_DEAD_ON_ACCEPT, memory_order_relaxed);
                atomic_fetch_add_explicit(&ls->dead_accepts, 1, memory_order_relaxed);
            }
        }
    } else {
        cw_slot_forget(fd);
    }
    errno = saved;
}

int socket(int domain, int type, int protocol)
{
    CW_REAL_IO(socket);
    if (ON_WATCHER_TABLE()) return real_socket(domain, type, protocol);
    int fd = real_socket(domain, type, protocol);
    if (fd >= 0) {
        int saved = errno;
        if (is_tcp_request(domain, type, protocol)) {
            birth(fd, CW_KIND_TCP, CW_OP_SOCKET, (type & SOCK_NONBLOCK) != 0, __builtin_frame_address(0), inode_of(fd));
            if (domain == AF_INET6 && cw_me != NULL) atomic_store_explicit(&cw_me->any_inet6, 1, memory_order_relaxed);
        } else {
            cw_slot_forget(fd);
        }
        errno = saved;
    }
    return fd;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    CW_REAL_IO(accept);
    if (ON_WATCHER_TABLE()) return real_accept(fd, addr, len);
    int r = real_accept(fd, addr, len);
    if (r >= 0) on_accept(fd, r, CW_OP_ACCEPT, 0, __builtin_frame_address(0), (struct peer_out){addr, len});
    return r;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    CW_REAL_IO(accept4);
    if (ON_WATCHER_TABLE()) return real_accept4(fd, addr, len, flags);
    int r = real_accept4(fd, addr, len, flags);
    if (r >= 0) on_accept(fd, r, CW_OP_ACCEPT4, (flags & SOCK_NONBLOCK) != 0, __builtin_frame_address(0),
                              (struct peer_out){addr, len});
    return r;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    CW_REAL_IO(connect);
    if (ON_WATCHER_TABLE()) return real_connect(fd, addr, len);
    BLOCK_ENTER(CW_CALL_CONNECT, fd, 0);
    UNTRACKED_CALL(real_connect(fd, addr, len));
    int r = real_connect(fd, addr, len);
    BLOCK_LEAVE();
    struct cw_slot *s = cw_slot_peek(fd);
    if (s != NULL && CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_relaxed)) == CW_KIND_TCP)
        atomic_fetch_or_explicit(&s->flags, CW_SF_CLIENT, memory_order_relaxed);
    return r;
}

int listen(int fd, int backlog)
{
    CW_REAL_IO(listen);
    if (ON_WATCHER_TABLE()) return real_listen(fd, backlog);
    int r = real_listen(fd, backlog);
    if (r == 0) {
        int saved = errno;
        struct cw_slot *s = cw_slot_get(fd);
        if (s != NULL) {
            enum cw_kind k = (enum cw_kind)CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire));
            if (k == CW_KIND_FREE) k = classify(fd);
            if (k == CW_KIND_TCP || k == CW_KIND_LISTEN) {
                /* The listen() site is what a backlog finding points at. */
                birth(fd, CW_KIND_LISTEN, CW_OP_SOCKET, 0, __builtin_frame_address(0), inode_of(fd));
                atomic_store_explicit(&s->backlog, backlog, memory_order_relaxed);
                listener_port(s, fd);
            } else if (k == CW_KIND_OTHER) {
                cw_slot_birth(s, CW_KIND_OTHER, CW_OP_NONE, 0, 0);
            }
        }
        errno = saved;
    }
    return r;
}

ssize_t write(int fd, const void *buf, size_t n)
{
    CW_REAL_IO(write);
    BLOCK_ENTER(CW_CALL_WRITE, fd, 0);
    UNTRACKED_CALL(real_write(fd, buf, n));
    ssize_t r = real_write(fd, buf, n);
    BLOCK_LEAVE();
    return r;
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    CW_REAL_IO(send);
    BLOCK_ENTER(CW_CALL_SEND, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real_send(fd, buf, n, flags));
    ssize_t r = real_send(fd, buf, n, flags);
    BLOCK_LEAVE();
    return r;
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t len)
{
    CW_REAL_IO(sendto);
    BLOCK_ENTER(CW_CALL_SENDTO, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real_sendto(fd, buf, n, flags, addr, len));
    ssize_t r = real_sendto(fd, buf, n, flags, addr, len);
    BLOCK_LEAVE();
    return r;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    CW_REAL_IO(sendmsg);
    BLOCK_ENTER(CW_CALL_SENDMSG, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real_sendmsg(fd, msg, flags));
    ssize_t r = real_sendmsg(fd, msg, flags);
    BLOCK_LEAVE();
    return r;
}

/* ---- reads: only a return of 0 for a non-empty buffer is worth a look -- */

/* The local address of a connection its listener gave, if that listener is bound to one (its
 * peers entry, listener_port()); 0.0.0.0 otherwise. */
static uint32_t listener_addr(const struct cw_slot *s, uint16_t lport)
{
    int lfd = atomic_load_explicit(&s->origin_fd, memory_order_relaxed);
    const struct cw_slot *ls = lfd >= 0 ? cw_slot_peek(lfd) : NULL;
    const struct cw_peer *lp = ls != NULL ? cw_peer_slot(lfd) : NULL;
    if (lp == NULL) return 0;
    uint32_t lseq = atomic_load_explicit(&ls->seq, memory_order_acquire);
    struct cw_peer own;
    cw_peer_load(lp, &own);
    uint32_t addr = 0;
    if (CW_SEQ_KIND(lseq) == CW_KIND_LISTEN && own.seq == lseq && own.family == 0 && own.lport == ntohs(lport))
        memcpy(&addr, own.laddr, 4);
    return addr;
}

/* Both ends of the connection in fd.  One accept() gave from an IPv4 peer has them in its key
 * and its listener: no system call (a server that shuts down each connection, Apache's lingering
 * close, would make two per connection); the local address is asked only of a listener bound to
 * all addresses. */
static int ends_of(int fd, const struct cw_slot *s, struct cw_peer *out)
{
    uint64_t id = atomic_load_explicit(&s->id, memory_order_relaxed);
    if (!CW_ID_IS_PEER(id)) return cw_peer_from_fd(fd, out);
    uint32_t addr = 0;
    uint16_t pport = 0, lport = 0;
    cw_peer_key_ends(id, &addr, &pport, &lport);
    uint32_t laddr = listener_addr(s, lport);
    if (laddr == 0) {
        struct sockaddr_in in = {0};
        socklen_t len = sizeof in;
        if (getsockname(fd, (struct sockaddr *)&in, &len) != 0 || in.sin_family != AF_INET || len != sizeof in ||
            in.sin_port != lport)
            return cw_peer_from_fd(fd, out);
        laddr = in.sin_addr.s_addr;
    }
    out->family = AF_INET;
    out->port = ntohs(pport);
    out->lport = ntohs(lport);
    memcpy(out->addr, &addr, 4);
    memcpy(out->laddr, &laddr, 4);
    return 0;
}

static void keep_ends(int fd, const struct cw_slot *s, uint32_t seq)
{
    struct cw_peer *p = cw_peer_slot(fd);
    if (p == NULL) return;
    struct cw_peer cur;
    cw_peer_load(p, &cur);
    if (cur.seq == seq && cur.family != 0) return;
    struct cw_peer fresh = {.seq = seq};
    if (ends_of(fd, s, &fresh) == 0) cw_peer_store(p, &fresh);
}

static void on_eof(int fd, int op)
{
    if (ON_WATCHER_TABLE()) return;
    struct cw_slot *s = cw_slot_peek(fd);
    if (s == NULL) return;
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (CW_SEQ_KIND(seq) != CW_KIND_TCP) return;
    if (atomic_load_explicit(&s->flags, memory_order_relaxed) & CW_SF_EOF) return;
    int saved = errno;
    uint32_t stack = cw_in_lib ? 0 : cw_stack_capture();
    /* Both ends now, while the kernel still has them: a write to the half-closed peer can reset
     * the connection into CLOSE, where no dump lists it and getpeername() fails. */
    keep_ends(fd, s, seq);
    if (!cw_in_lib) {
        uint32_t java = cw_jvm_stack();
        if (CW_UNLIKELY(java != 0)) cw_lang_note_id(fd, CW_LANG_EOF, java);
    }
    atomic_store_explicit(&s->eof_stack, stack, memory_order_relaxed);
    atomic_store_explicit(&s->eof_by, (uint8_t)op, memory_order_relaxed);
    atomic_store_explicit(&s->eof_ms, cw_tick_ms(), memory_order_relaxed);
    atomic_fetch_or_explicit(&s->flags, CW_SF_EOF, memory_order_release);
    /* The thread that read the EOF is the one that should close it. */
    cw_owner_claim(cw_owner_peek(fd));
    errno = saved;
}

static size_t iov_total(const struct iovec *iov, size_t n)
{
    size_t t = 0;
    for (size_t i = 0; i < n && t == 0; i++) t += iov[i].iov_len;
    return t;
}

ssize_t read(int fd, void *buf, size_t n)
{
    CW_REAL_IO(read);
    BLOCK_ENTER(CW_CALL_READ, fd, 0);
    UNTRACKED_CALL(real_read(fd, buf, n));
    ssize_t r = real_read(fd, buf, n);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && n != 0) on_eof(fd, CW_OP_READ);
    return r;
}

ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
    CW_REAL_IO(readv);
    BLOCK_ENTER(CW_CALL_READV, fd, 0);
    UNTRACKED_CALL(real_readv(fd, iov, cnt));
    ssize_t r = real_readv(fd, iov, cnt);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && cnt > 0 && iov_total(iov, (size_t)cnt) != 0) on_eof(fd, CW_OP_READV);
    return r;
}

ssize_t recv(int fd, void *buf, size_t n, int flags)
{
    CW_REAL_IO(recv);
    BLOCK_ENTER(CW_CALL_RECV, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real_recv(fd, buf, n, flags));
    ssize_t r = real_recv(fd, buf, n, flags);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && n != 0) on_eof(fd, CW_OP_RECV);
    return r;
}

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *len)
{
    CW_REAL_IO(recvfrom);
    BLOCK_ENTER(CW_CALL_RECVFROM, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real_recvfrom(fd, buf, n, flags, addr, len));
    ssize_t r = real_recvfrom(fd, buf, n, flags, addr, len);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && n != 0) on_eof(fd, CW_OP_RECVFROM);
    return r;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    CW_REAL_IO(recvmsg);
    BLOCK_ENTER(CW_CALL_RECVMSG, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real_recvmsg(fd, msg, flags));
    ssize_t r = real_recvmsg(fd, msg, flags);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && msg != NULL && msg->msg_iovlen > 0 &&
        iov_total(msg->msg_iov, msg->msg_iovlen) != 0)
        on_eof(fd, CW_OP_RECVMSG);
    return r;
}

int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout)
{
    CW_REAL_IO(recvmmsg);
    BLOCK_ENTER(CW_CALL_RECVMMSG, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real_recvmmsg(fd, vec, vlen, flags, timeout));
    int r = real_recvmmsg(fd, vec, vlen, flags, timeout);
    BLOCK_LEAVE();
    /* On a stream socket the kernel ends the batch at EOF with an empty last message. */
    if (CW_UNLIKELY(r > 0) && vec[r - 1].msg_len == 0 && vec[r - 1].msg_hdr.msg_iovlen > 0 &&
        iov_total(vec[r - 1].msg_hdr.msg_iov, vec[r - 1].msg_hdr.msg_iovlen) != 0)
        on_eof(fd, CW_OP_RECVMMSG);
    return r;
}

/* _FORTIFY_SOURCE entry points: distro builds call these instead of read/recv/recvfrom. */
ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen)
{
    CW_REAL_IO(__read_chk);
    BLOCK_ENTER(CW_CALL_READ, fd, 0);
    UNTRACKED_CALL(real___read_chk(fd, buf, n, buflen));
    ssize_t r = real___read_chk(fd, buf, n, buflen);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && n != 0) on_eof(fd, CW_OP_READ_CHK);
    return r;
}

ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags)
{
    CW_REAL_IO(__recv_chk);
    BLOCK_ENTER(CW_CALL_RECV, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real___recv_chk(fd, buf, n, buflen, flags));
    ssize_t r = real___recv_chk(fd, buf, n, buflen, flags);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && n != 0) on_eof(fd, CW_OP_RECV_CHK);
    return r;
}

ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *addr,
                       socklen_t *len);
ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *addr,
                       socklen_t *len)
{
    CW_REAL_IO(__recvfrom_chk);
    BLOCK_ENTER(CW_CALL_RECVFROM, fd, (flags & MSG_DONTWAIT) != 0);
    UNTRACKED_CALL(real___recvfrom_chk(fd, buf, n, buflen, flags, addr, len));
    ssize_t r = real___recvfrom_chk(fd, buf, n, buflen, flags, addr, len);
    BLOCK_LEAVE();
    if (CW_UNLIKELY(r == 0) && n != 0) on_eof(fd, CW_OP_RECVFROM_CHK);
    return r;
}

/* ---- shutdown, closes and duplicates ---------------------------------- */

int shutdown(int fd, int how)
{
    CW_REAL_IO(shutdown);
    if (ON_WATCHER_TABLE()) return real_shutdown(fd, how);
    struct cw_slot *s = cw_slot_peek(fd);
    uint32_t seq = s != NULL ? atomic_load_explicit(&s->seq, memory_order_relaxed) : 0;
    int tracked = s != NULL && CW_SEQ_KIND(seq) == CW_KIND_TCP && (how == SHUT_WR || how == SHUT_RDWR);
    if (tracked) {
        /* Once both sides have closed, getpeername() fails: keep the ends now. */
        int saved = errno;
        keep_ends(fd, s, seq);
        errno = saved;
    }
    int r = real_shutdown(fd, how);
    if (r == 0 && tracked) atomic_fetch_or_explicit(&s->flags, CW_SF_SHUT_WR, memory_order_release);
    return r;
}

/* The program moved or closed its fd 2: the watcher must know where its stderr is now (and let
 * go of a copy of the old one: a caller capturing the output waits for it). */
static void stderr_moved(void)
{
    int saved = errno;
    cw_sink_publish_stderr();
    cw_doorbell();
    errno = saved;
}
#define STDERR_IN(first, last) CW_UNLIKELY((unsigned)(first) <= 2u && 2u <= (unsigned)(last))

int close(int fd)
{
    CW_REAL_IO(close);
    if (ON_WATCHER_TABLE()) return real_close(fd);
    cw_slot_forget(fd);
    int r = real_close(fd);
    if (CW_UNLIKELY(fd == 2)) stderr_moved();
    return r;
}

int fclose(FILE *fp)
{
    CW_REAL(fclose);
    if (ON_WATCHER_TABLE()) return real_fclose(fp);
    if (fp != NULL) {
        int saved = errno;
        int fd = fileno(fp);
        if (fd >= 0) cw_slot_forget(fd);
        errno = saved;
    }
    return real_fclose(fp);
}

static void on_dup(int from, int to)
{
    struct cw_slot *s = cw_slot_peek(from);
    uint32_t kind = s == NULL ? CW_KIND_FREE : CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire));
    if (kind == CW_KIND_TCP || kind == CW_KIND_LISTEN) {
        int saved = errno;
        cw_slot_copy(from, to);
        errno = saved;
    } else {
        cw_slot_forget(to);
    }
}

int dup(int fd)
{
    CW_REAL_IO(dup);
    if (ON_WATCHER_TABLE()) return real_dup(fd);
    int r = real_dup(fd);
    if (r >= 0) on_dup(fd, r);
    return r;
}

/* dup2/dup3 replace `to` atomically in the kernel: the number is never free in between, so the
 * record is updated after the call. */
int dup2(int from, int to)
{
    CW_REAL_IO(dup2);
    if (ON_WATCHER_TABLE()) return real_dup2(from, to);
    int r = real_dup2(from, to);
    if (r >= 0 && from != to) on_dup(from, to);
    if (CW_UNLIKELY(to == 2) && r >= 0) stderr_moved();
    return r;
}

int dup3(int from, int to, int flags)
{
    CW_REAL_IO(dup3);
    if (ON_WATCHER_TABLE()) return real_dup3(from, to, flags);
    int r = real_dup3(from, to, flags);
    if (r >= 0) on_dup(from, to);
    if (CW_UNLIKELY(to == 2) && r >= 0) stderr_moved();
    return r;
}

static int fcntl_common(int (*real)(int, int, ...), int fd, int cmd, void *arg)
{
    int r = real(fd, cmd, arg);
    if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && !ON_WATCHER_TABLE()) on_dup(fd, r);
    /* A non-blocking socket's calls never wait: the hot path skips their record. */
    if (r == 0 && cmd == F_SETFL && !ON_WATCHER_TABLE()) cw_owner_set_nonblock(fd, ((long)arg & O_NONBLOCK) != 0);
    return r;
}

int fcntl(int fd, int cmd, ...)
{
    CW_REAL_IO(fcntl);
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *); /* NOLINT(clang-analyzer-valist.Uninitialized): as glibc does, every fcntl argument fits a pointer */
    va_end(ap);
    return fcntl_common(real_fcntl, fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...);
int fcntl64(int fd, int cmd, ...)
{
    CW_REAL_IO(fcntl64);
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *); /* NOLINT(clang-analyzer-valist.Uninitialized) */
    va_end(ap);
    return fcntl_common(real_fcntl64, fd, cmd, arg);
}

int close_range(unsigned int first, unsigned int last, int flags)
{
    CW_REAL_IO(close_range);
    if (ON_WATCHER_TABLE()) return real_close_range(first, last, flags);
    if (!((unsigned)flags & CLOSE_RANGE_CLOEXEC) && first <= last) cw_slot_forget_range(first, last);
    int r = real_close_range(first, last, flags);
    if (!((unsigned)flags & CLOSE_RANGE_CLOEXEC) && STDERR_IN(first, last)) stderr_moved();
    return r;
}

void closefrom(int lowfd)
{
    CW_REAL(closefrom);
    if (ON_WATCHER_TABLE()) {
        real_closefrom(lowfd);
        return;
    }
    if (lowfd >= 0) cw_slot_forget_range((unsigned)lowfd, ~0u);
    real_closefrom(lowfd);
    if (lowfd >= 0 && lowfd <= 2) stderr_moved();
}

static int cred_syscall(long number)
{
    switch (number) {
    case SYS_setuid: case SYS_setgid: case SYS_setreuid: case SYS_setregid: case SYS_setresuid:
    case SYS_setresgid: case SYS_setgroups: case SYS_capset:
        return 1;
    default:
        return 0;
    }
}

/* libuv closes with syscall(SYS_close); watch the descriptor calls made that way too. */
/* Reads six arguments whatever the caller passed, as glibc's syscall() does: the ones not passed
 * are whatever the registers and the stack hold, which a sanitizer calls an underflow. */
__attribute__((no_sanitize("address")))
long syscall(long number, ...)
{
    CW_REAL_IO(syscall);
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long); /* NOLINT(clang-analyzer-valist.Uninitialized) */
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    if (ON_WATCHER_TABLE()) return real_syscall(number, a1, a2, a3, a4, a5, a6);
    switch (number) {
    case SYS_close:
        cw_slot_forget((int)a1);
        break;
#ifdef SYS_close_range
    case SYS_close_range:
        if (!((unsigned)a3 & CLOSE_RANGE_CLOEXEC) && (unsigned)a1 <= (unsigned)a2)
            cw_slot_forget_range((unsigned)a1, (unsigned)a2);
        break;
#endif
    default:
        break;
    }
    long r = real_syscall(number, a1, a2, a3, a4, a5, a6);
    if (r >= 0) {
        int saved = errno;
        if ((number == SYS_close && a1 == 2) || (number == SYS_dup3 && a2 == 2)
#ifdef SYS_dup2
            || (number == SYS_dup2 && a2 == 2)
#endif
#ifdef SYS_close_range
            || (number == SYS_close_range && !((unsigned)a3 & CLOSE_RANGE_CLOEXEC) && STDERR_IN(a1, a2))
#endif
        )
            stderr_moved();
        if (cred_syscall(number)) cw_watcher_credentials_changed(-1, 0);
        errno = saved;
        switch (number) {
#ifdef SYS_dup2
        case SYS_dup2:
            if (a1 != a2) on_dup((int)a1, (int)a2);
            break;
#endif
        case SYS_dup3:
            on_dup((int)a1, (int)a2);
            break;
        case SYS_dup:
            on_dup((int)a1, (int)r);
            break;
        case SYS_accept:
            on_accept((int)a1, (int)r, CW_OP_ACCEPT, 0, __builtin_frame_address(0),
                      (struct peer_out){NULL, NULL});
            break;
        case SYS_accept4:
            on_accept((int)a1, (int)r, CW_OP_ACCEPT4, ((unsigned long)a4 & SOCK_NONBLOCK) != 0, __builtin_frame_address(0),
                      (struct peer_out){NULL, NULL});
            break;
        default:
            break;
        }
    }
    return r;
}

/* ---- exec: the new image watches itself ------------------------------------ */

/* The area is marked before the exec and put back if the exec fails: the watcher lets an area
 * go that stays marked (the process is another program now). */
static void before_exec(void)
{
    struct cw_area *me = cw_me;
    if (me == NULL || ON_WATCHER_TABLE()) return;
    uint32_t live = AREA_LIVE;
    atomic_compare_exchange_strong(&me->state, &live, AREA_EXEC);
}

static void exec_failed(void)
{
    struct cw_area *me = cw_me;
    if (me == NULL || ON_WATCHER_TABLE()) return;
    uint32_t exec = AREA_EXEC;
    atomic_compare_exchange_strong(&me->state, &exec, AREA_LIVE);
}

#define EXEC_HOOK(call)            \
    do {                           \
        before_exec();             \
        int r_ = (call);           \
        int saved_ = errno;        \
        exec_failed();             \
        errno = saved_;            \
        return r_;                 \
    } while (0)

int execve(const char *path, char *const argv[], char *const envp[])
{
    CW_REAL(execve);
    EXEC_HOOK(real_execve(path, argv, envp));
}

int execv(const char *path, char *const argv[])
{
    CW_REAL(execv);
    EXEC_HOOK(real_execv(path, argv));
}

int execvp(const char *file, char *const argv[])
{
    CW_REAL(execvp);
    EXEC_HOOK(real_execvp(file, argv));
}

int execvpe(const char *file, char *const argv[], char *const envp[])
{
    CW_REAL(execvpe);
    EXEC_HOOK(real_execvpe(file, argv, envp));
}

int fexecve(int fd, char *const argv[], char *const envp[])
{
    CW_REAL(fexecve);
    EXEC_HOOK(real_fexecve(fd, argv, envp));
}

/* execl, execlp, execle: their arguments as a vector, as glibc builds it. */
#define ARGS_MAX 4096
static int collect_args(const char *arg0, va_list ap, char **argv, char ***envp_out)
{
    int n = 0;
    argv[n++] = (char *)arg0;
    while (n < ARGS_MAX) {
        char *a = va_arg(ap, char *); /* NOLINT(clang-analyzer-valist.Uninitialized): started by the caller */
        argv[n++] = a;
        if (a == NULL) break;
    }
    if (envp_out != NULL) *envp_out = va_arg(ap, char **); /* NOLINT(clang-analyzer-valist.Uninitialized) */
    if (argv[n - 1] != NULL) {
        errno = E2BIG;
        return -1;
    }
    return 0;
}

int execl(const char *path, const char *arg, ...)
{
    char *argv[ARGS_MAX + 1];
    va_list ap;
    va_start(ap, arg);
    int ok = collect_args(arg, ap, argv, NULL);
    va_end(ap);
    if (ok != 0) return -1;
    return execv(path, argv);
}

int execlp(const char *file, const char *arg, ...)
{
    char *argv[ARGS_MAX + 1];
    va_list ap;
    va_start(ap, arg);
    int ok = collect_args(arg, ap, argv, NULL);
    va_end(ap);
    if (ok != 0) return -1;
    return execvp(file, argv);
}

int execle(const char *path, const char *arg, ...)
{
    char *argv[ARGS_MAX + 1];
    char **envp = NULL;
    va_list ap;
    va_start(ap, arg);
    int ok = collect_args(arg, ap, argv, &envp);
    va_end(ap);
    if (ok != 0) return -1;
    return execve(path, argv, envp);
}

/* ---- credentials: what watches the program never has more privilege than it -------- */

/* uid_: a change of user, after which a watcher of the new user starts at once (with the log the
 * old one could open); a change of groups alone leaves the region and waits for the next
 * socket (setgid, setgroups, then setuid: one watcher, not three). */
#define CRED_HOOK(name, uid_, proto, args)    \
    int name proto                            \
    {                                         \
        CW_REAL(name);                        \
        /* the log, while it can still be opened */ \
        int logfd_ = ON_WATCHER_TABLE() || !(uid_) ? -1 : cw_sink_preopen(); \
        int rc_ = real_##name args;           \
        int saved = errno;                    \
        if (rc_ == 0 && !ON_WATCHER_TABLE())  \
            cw_watcher_credentials_changed(logfd_, uid_); \
        else if (logfd_ >= 0)                 \
            close(logfd_);                    \
        errno = saved;                        \
        return rc_;                           \
    }

CRED_HOOK(setuid, 1, (uid_t uid), (uid))
CRED_HOOK(setgid, 0, (gid_t gid), (gid))
CRED_HOOK(seteuid, 1, (uid_t uid), (uid))
CRED_HOOK(setegid, 0, (gid_t gid), (gid))
CRED_HOOK(setreuid, 1, (uid_t ruid, uid_t euid), (ruid, euid))
CRED_HOOK(setregid, 0, (gid_t rgid, gid_t egid), (rgid, egid))
CRED_HOOK(setresuid, 1, (uid_t ruid, uid_t euid, uid_t suid), (ruid, euid, suid))
CRED_HOOK(setresgid, 0, (gid_t rgid, gid_t egid, gid_t sgid), (rgid, egid, sgid))
CRED_HOOK(setgroups, 0, (size_t n, const gid_t *list), (n, list))

#pragma GCC visibility pop
