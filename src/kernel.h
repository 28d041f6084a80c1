#ifndef CLOSEWAIT_KERNEL_H
#define CLOSEWAIT_KERNEL_H
#include "closewait.h"
#include <linux/tcp.h>
#include <sys/syscall.h>

/* A set of socket inodes (open addressing; grows). */
struct inode_set {
    uint64_t *keys;
    size_t cap, count;
};
CW_HIDDEN void cw_inode_set_clear(struct inode_set *s);
CW_HIDDEN int cw_inode_set_has(const struct inode_set *s, uint64_t ino);
CW_HIDDEN void cw_inode_set_add(struct inode_set *s, uint64_t ino);

/* Addresses of the sockets the last dump returned (for sockets we do not hold ourselves). */
struct dumped_socket {
    uint64_t inode;
    char local[64], peer[64];
};
CW_HIDDEN const struct dumped_socket *cw_kernel_dumped(uint64_t inode);

/* CLOSE_WAIT sockets no process holds yet (waiting in an accept queue), by local port. */
#define CW_MAX_UNOWNED_PORTS 64
struct unowned_ports {
    int n;
    uint16_t port[CW_MAX_UNOWNED_PORTS];
    uint32_t count[CW_MAX_UNOWNED_PORTS];
};

/* Inodes of every TCP socket of this network namespace in the given states (bit per TCP
 * state), asked in one netlink sock_diag dump per address family.  -1 if netlink is not
 * available (then callers ask TCP_INFO socket by socket). */
CW_HIDDEN int cw_kernel_tcp_inodes(uint32_t state_mask, struct inode_set *out,
                                   struct unowned_ports *unowned);

/* TCP_INFO of fd; 0 on success. */
CW_HIDDEN int cw_kernel_tcp_info(int fd, struct tcp_info *ti);
/* Inode of the socket behind fd, 0 if fd is not a socket. */
CW_HIDDEN uint64_t cw_kernel_socket_inode(int fd);
/* "ip:port" of the local or peer end; "?" if unknown. */
CW_HIDDEN void cw_kernel_endpoint(int fd, int peer, char *out, size_t cap);
/* A peer address kept in 24 bytes, asked while the connection is up: once both sides have
 * closed (shutdown without close), getpeername() has nothing to say. */
struct cw_peer {
    uint32_t seq;
    uint16_t family, port;  /* family 0: not known yet */
    uint8_t addr[16];
};
/* The side table's entries are written by the shutdown() hook and by the watcher, with the same
 * values for the same socket; they are copied whole with relaxed atomic words. */
CW_HIDDEN void cw_peer_store(struct cw_peer *slot, const struct cw_peer *value);
CW_HIDDEN void cw_peer_load(const struct cw_peer *slot, struct cw_peer *value);
CW_HIDDEN int cw_kernel_peer(int fd, struct cw_peer *out);
/* The peer-address side table, per fd, chunks mapped on first use (hooks may write it). */
CW_HIDDEN struct cw_peer *cw_peer_slot(int fd);
CW_HIDDEN void cw_peer_format(const struct cw_peer *p, char *out, size_t cap);
CW_HIDDEN const char *cw_tcp_state_name(int state);
CW_HIDDEN void cw_kernel_after_fork(void);

/* The watcher's epoll instance: every tracked socket registered edge-triggered for EPOLLRDHUP,
 * its data the fd (high 32 bits) and the socket's inode (low 32 bits: socket inodes are 32-bit).
 * The instance lives at a high descriptor and is re-made if the program closes it. */
CW_HIDDEN extern _Atomic int cw_epoll_fd;
CW_HIDDEN int cw_epoll_ensure(void);          /* 0 when usable */
CW_HIDDEN uint32_t cw_epoll_generation(void); /* changes when the instance is re-made */
/* Registers the socket open at fd (in the caller's table) under the program's number. */
CW_HIDDEN int cw_epoll_watch(int fd, int number, uint64_t inode);
CW_HIDDEN void cw_epoll_after_fork(void);

/* The watcher thread does not share the program's descriptor table (a shared table makes every
 * descriptor syscall of a single-threaded program take the kernel's slow, reference-counting
 * path).  It reaches a program descriptor through a copy from pidfd_getfd(), borrowed for the
 * moment.  Where that is not available (kernel before 5.6, a seccomp filter) it shares the
 * table as before and a borrow is the descriptor itself. */
CW_HIDDEN int cw_watcher_private_table(const int *keep, int nkeep); /* call on the watcher */
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
/* In the watcher process: borrow from the process this pidfd names. */
CW_HIDDEN void cw_kernel_borrow_from(int pidfd);
/* In the watcher process: register sockets in this (a copy of the program's epoll instance,
 * whose generation the program gave it: a forked child's instance has a new one). */
CW_HIDDEN void cw_epoll_adopt(int fd, uint32_t generation);
CW_HIDDEN extern __thread int cw_on_private_table __attribute__((tls_model("initial-exec")));
struct cw_borrow {
    int fd;      /* the program's number */
    int copy;    /* ours, -1 until needed */
};
/* The descriptor to use for b->fd, borrowed on first use; -1 if the program has none there. */
CW_HIDDEN int cw_borrowed(struct cw_borrow *b);
CW_HIDDEN void cw_borrow_end(struct cw_borrow *b);
#define CW_BORROW(name, fd_) \
    __attribute__((cleanup(cw_borrow_end))) struct cw_borrow name = {(fd_), -1}

#define TCPS_ESTABLISHED 1
#define TCPS_CLOSE 7
#define TCPS_CLOSE_WAIT 8
#define TCPS_LAST_ACK 9
#define TCPS_LISTEN 10
#endif
