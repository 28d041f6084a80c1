#ifndef CLOSEWAIT_SOCKETS_H
#define CLOSEWAIT_SOCKETS_H
#include "base.h"
#include <linux/tcp.h>
#include <sys/syscall.h>

/* A connection whose last data arrived this long before accept() returned it, and whose peer
 * has already closed, died waiting in the accept queue (a healthy client that sends its
 * request and half-closes at once is accepted within milliseconds). */
#define CW_QUEUED_DEAD_MS 1000

/* CLOSE_WAIT sockets no process holds yet (waiting in an accept queue), by local port. */
#define CW_MAX_UNOWNED_PORTS 64
struct unowned_ports {
    int n;
    uint16_t port[CW_MAX_UNOWNED_PORTS];
    uint32_t count[CW_MAX_UNOWNED_PORTS];
};

/* One TCP socket as netlink sock_diag describes it (what ss shows): no permission over the
 * process that holds it is needed to ask. */
struct cw_sock {
    uint64_t inode;
    uint64_t key;                 /* a connection: the key of its ends (shared/fdtable.h), else 0 */
    uint8_t state, family, has_info;
    uint32_t rqueue, wqueue;      /* a listener: accept queue length and its limit */
    uint32_t notsent, unacked, last_data_sent, last_data_recv, last_ack_recv;
    uint16_t sport, dport;        /* network order */
    uint8_t src[16], dst[16];
};

/* The TCP sockets of this network namespace in some states, indexed by inode. */
struct cw_dump {
    struct cw_sock *socks;
    size_t n, cap;
    uint32_t *index;              /* by inode */
    uint32_t *peers;              /* by key: a connection accept() gave */
    size_t index_cap;
    struct unowned_ports unowned;
    int ok;
};
/* One dump per address family asked for (state_mask: a bit per TCP state); 0 on success.  The
 * kernel walks every TCP socket of the namespace for each, whatever the states asked. */
CW_HIDDEN int cw_dump_take(struct cw_dump *d, uint32_t state_mask, int with_inet6);
/* Dumps asked of the kernel by this process: of connections (a walk of every TCP socket of the
 * namespace), of the listening table alone. */
enum { CW_DUMP_CONNECTIONS, CW_DUMP_LISTENERS };
CW_HIDDEN extern long cw_dumps_taken[2];
/* An empty dump, as if taken: a look that needed none of it. */
CW_HIDDEN void cw_dump_take_none(struct cw_dump *d);
CW_HIDDEN const struct cw_sock *cw_dump_find(const struct cw_dump *d, uint64_t inode);
/* The socket a slot's id names (an inode or a key: shared/fdtable.h), or NULL.  Two sockets with
 * the key: NULL, and *ambiguous (may be NULL) set. */
CW_HIDDEN const struct cw_sock *cw_dump_find_id(const struct cw_dump *d, uint64_t id, int *ambiguous);
/* How many sockets of the dump have the key. */
CW_HIDDEN int cw_dump_count_key(const struct cw_dump *d, uint64_t key);
/* "ip:port" of the socket's local or peer end. */
CW_HIDDEN void cw_sock_endpoint(const struct cw_sock *s, int peer, char *out, size_t cap);

/* TCP_INFO of fd; 0 on success. */
CW_HIDDEN int cw_kernel_tcp_info(int fd, struct tcp_info *ti);
/* Inode of the socket behind fd, 0 if fd is not a socket. */
CW_HIDDEN uint64_t cw_kernel_socket_inode(int fd);
/* "ip:port" of the local or peer end; "?" if unknown. */
CW_HIDDEN void cw_kernel_endpoint(int fd, int peer, char *out, size_t cap);
/* "ip:port" (or "[ip6]:port") of an address in network order, as sock_diag and sockaddr hold it. */
CW_HIDDEN void cw_format_endpoint(int family, const void *addr_bytes, uint16_t port_be, char *out, size_t cap);
CW_HIDDEN const char *cw_tcp_state_name(int state);

/* A watcher thread works on a descriptor table of its own (a shared table makes every descriptor
 * syscall of a single-threaded program take the kernel's slow, reference-counting path, and its
 * netlink socket would be the program's to close).  0 when it has one. */
CW_HIDDEN int cw_watcher_private_table(void);
CW_HIDDEN extern __thread int cw_on_private_table __attribute__((tls_model("initial-exec")));
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define TCPS_ESTABLISHED 1
#define TCPS_FIN_WAIT1 4
#define TCPS_FIN_WAIT2 5
#define TCPS_CLOSE 7
#define TCPS_CLOSE_WAIT 8
#define TCPS_LAST_ACK 9
#define TCPS_LISTEN 10
#define TCPS_CLOSING 11

/* Held by a process after its peer's FIN, in a state a teardown dump shows. */
static inline int cw_sock_closing_held(const struct cw_sock *k)
{
    return k != NULL && (k->state == TCPS_CLOSE_WAIT || k->state == TCPS_LAST_ACK);
}
#endif
