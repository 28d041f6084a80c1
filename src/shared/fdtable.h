/* The per-descriptor table of one process: what each descriptor is, where it was born, what
 * happened to it.  The hooks write it; the watcher reads it (in the region, shared/region.h). */
#ifndef CLOSEWAIT_FDTABLE_H
#define CLOSEWAIT_FDTABLE_H
#include "base.h"

/* How a tracked descriptor came to be, for the report. */
enum cw_op {
    CW_OP_NONE = 0, CW_OP_SOCKET, CW_OP_ACCEPT, CW_OP_ACCEPT4, CW_OP_CONNECT, CW_OP_DUP, CW_OP_INHERITED,
    CW_OP_READ, CW_OP_READV, CW_OP_RECV, CW_OP_RECVFROM, CW_OP_RECVMSG, CW_OP_RECVMMSG,
    CW_OP_READ_CHK, CW_OP_RECV_CHK, CW_OP_RECVFROM_CHK, CW_OP_BEFORE_ATTACH, CW_OP_COUNT
};
CW_HIDDEN const char *cw_op_name(int op);

enum cw_kind {
    CW_KIND_FREE = 0,     /* nothing known about this descriptor */
    CW_KIND_TCP = 1,      /* a TCP stream socket we track */
    CW_KIND_LISTEN = 2,   /* a TCP socket that listen() was called on */
    CW_KIND_OTHER = 3,    /* classified: not TCP (cached so accept() need not ask again) */
};

/* Flag bits in cw_slot.flags. */
#define CW_SF_EOF        0x01u   /* a read returned 0 with a non-zero length */
#define CW_SF_SHUT_WR    0x02u   /* the program called shutdown(SHUT_WR/SHUT_RDWR) */
#define CW_SF_CLIENT     0x04u   /* connect() was called */
#define CW_SF_DUP        0x08u   /* born from dup/dup2/dup3/F_DUPFD */
#define CW_SF_REPORTED   0x10u   /* the watcher reported it */
#define CW_SF_BACKLOGGED 0x20u   /* listener: its accept queue is not empty; check what accept returns */
#define CW_SF_DEAD_ON_ACCEPT 0x40u /* accepted already in CLOSE_WAIT, after waiting in the queue */
#define CW_SF_BEFORE_ATTACH 0x80u /* held before the eBPF front-end attached: birth unknown */
#define CW_SF_HELD_AT_ATTACH 0x100u /* and in CLOSE_WAIT already then: listed at once */

/*
 * One descriptor.  `seq` is (generation << 2 | kind): a birth or death stores a new value, so a
 * reader that loads seq, reads the fields and loads seq again knows whether it saw one life.
 * Fields are relaxed atomics: hooks on any thread write them, the watcher reads them.
 * 64 bytes, one cache line.
 */
struct cw_slot {
    _Atomic uint32_t seq;
    _Atomic uint32_t flags;
    _Atomic uint32_t open_stack;   /* stack store id, 0 = none */
    union {
        _Atomic uint32_t eof_stack;     /* a connection: where it read EOF */
        _Atomic uint32_t dead_accepts;  /* a listener: connections accepted dead (their client gave up) */
    };
    _Atomic uint64_t id;           /* which socket: its inode, or the key of its ends (below) */
    _Atomic int64_t open_ms;
    union {
        _Atomic int64_t eof_ms;
        struct {                        /* a listener: */
            _Atomic uint32_t accepts;   /* connections accept() returned (a lower bound, mod 2^32) */
            _Atomic uint16_t port;      /* its local port, network order (0: unknown) */
        };
    };
    _Atomic uint8_t opened_by;
    _Atomic uint8_t eof_by;
    _Atomic uint16_t fork_gen;     /* cw_fork_gen at birth: older means inherited from a parent */
    union {
        _Atomic int32_t backlog;        /* a listener: its listen() backlog */
        _Atomic int32_t origin_fd;      /* accepted: its listener's fd; a dup: the fd it copies */
    };
    /* Owned by the watcher alone. */
    uint32_t w_seq;                /* seq these watcher fields belong to */
    uint32_t w_flags;
    int64_t w_fin_ms;              /* when the watcher first saw CLOSE_WAIT */
};
_Static_assert(sizeof(struct cw_slot) <= 64, "one cache line per descriptor");

#define CW_SEQ_KIND(s) ((s) & 3u)
#define CW_SEQ_GEN(s) ((s) >> 2)

/* The fork generation and "a TCP socket exists" live in the region (region.h). */

#define CW_CHUNK_SLOTS 256
#define CW_MAX_CHUNKS 4096 /* 1M descriptors: fs.nr_open's default, the most RLIMIT_NOFILE allows */
/* What this process alone keeps of its table, in one place (a page or two): a forked child
 * that switches to its own table writes only here, one copy-on-write fault instead of several. */
struct cw_area;
#define CW_FORK_CHUNKS 16
struct cw_private {
    struct cw_area *me;                             /* this process's area (NULL: none) */
    struct cw_area *fork_area;                      /* made for the child of a fork under way */
    int fork_hooked;                                /* that fork is our fork(), which says how it went */
    unsigned fork_nchunks;
    struct cw_area *orphan_of;                      /* a forked child without an area: its parent's */
    pid_t orphan_of_pid;
    _Atomic int64_t late_retry_ms;                  /* cw_region_late_area: not before then */
    /* Written at every fork, by the parent or the child: here, so that after a fork each side
     * breaks the copy-on-write of this one page of ours and no other. */
    _Atomic int unwinds_running;                    /* unwind/stacks.c: unwinds under way */
    _Atomic int fork_pending;                       /* a fork waits for them; new ones are skipped */
    _Atomic unsigned spawn_next;                    /* hooks/process.c: the next spawn record */
    int fork_watcher_alive;                         /* the watcher process was alive at the fork */
    _Atomic uint32_t first_tcp_busy;                /* the table is being copied for a new watcher */
    int fork_thread_mode;                           /* the watcher was a thread of this process */
    int fork_watching_here;                         /* ...or this process had a watcher's state */
    struct cw_slot *fork_chunks[CW_FORK_CHUNKS];    /* the child's first chunks, computed before the fork */
    _Atomic(struct cw_slot *) chunks[CW_MAX_CHUNKS]; /* the hot path reads only this */
};
CW_HIDDEN extern struct cw_private cw_private;
#define cw_chunks (cw_private.chunks)
CW_HIDDEN struct cw_slot *cw_chunk_known(unsigned c);
/* Slot of fd if its chunk exists, else NULL. Cheap: no syscall, no lock; inline, as every hook
 * that sees a descriptor asks. */
static inline struct cw_slot *cw_slot_peek(int fd)
{
    unsigned u = (unsigned)fd;
    unsigned c = u / CW_CHUNK_SLOTS;
    if (CW_UNLIKELY(c >= CW_MAX_CHUNKS)) return NULL;
    struct cw_slot *chunk = atomic_load_explicit(&cw_chunks[c], memory_order_acquire);
    if (CW_UNLIKELY(chunk == NULL) && (chunk = cw_chunk_known(c)) == NULL) return NULL;
    return &chunk[u % CW_CHUNK_SLOTS];
}
/* Slot of fd, creating its chunk (mmap) if needed; NULL if fd is out of range or mmap fails. */
CW_HIDDEN struct cw_slot *cw_slot_get(int fd);
/*
 * Which socket a slot holds, for the watcher to find it in the kernel's dumps: its inode (fstat
 * at birth), or, for a connection accept() returned from an IPv4 peer, a key of its ends: the
 * peer's address and port as accept() wrote them and the listener's port.  accept() is the call a
 * server of short connections makes most, and the fstat was a system call per connection.  (An
 * IPv6 peer's address needs 24 bytes of the program's buffer, which code written for IPv4 may not
 * give, and the kernel reports the whole length either way: the inode is asked for then.)
 * The three are packed as they are, so that the hooks can read the ends back from the key
 * (shutdown() keeps them for when the socket is in CLOSE).  A key is at least 2^32 (no peer is
 * 0.0.0.0), an inode below it (sockfs numbers its inodes with get_next_ino, 32 bits).
 * Two held sockets share a key only if one peer address and port reached one port on two local
 * addresses; the watcher checks that none does before it reports one found by its key.
 */
#define CW_ID_IS_PEER(id) (((id) >> 32) != 0)
/* addr: the peer's 4 bytes as they lie in memory; ports in network order. */
static inline uint64_t cw_peer_key(uint32_t addr, uint16_t peer_port, uint16_t local_port)
{
    return (uint64_t)addr << 32 | (uint64_t)peer_port << 16 | local_port;
}
static inline void cw_peer_key_ends(uint64_t key, uint32_t *addr, uint16_t *peer_port, uint16_t *local_port)
{
    *addr = (uint32_t)(key >> 32);
    *peer_port = (uint16_t)(key >> 16);
    *local_port = (uint16_t)key;
}
/* Start a new life in the slot; id: which socket (above), 0 if not known. */
CW_HIDDEN void cw_slot_birth(struct cw_slot *s, enum cw_kind kind, int op, uint32_t stack, uint64_t id);
/* End the life (before the real close runs). */
CW_HIDDEN void cw_slot_forget(int fd);
CW_HIDDEN void cw_slot_forget_range(unsigned first, unsigned last);
/* Copy what is known of `from` into `to` (dup family). */
CW_HIDDEN void cw_slot_copy(int from, int to);
/* The highest fd + 1 the table covers right now. */
CW_HIDDEN int cw_table_limit(void);
/* The first fd >= fd that has a slot (its chunk is mapped), or -1: walk the table with
 * for (fd = cw_table_next(0); fd >= 0; fd = cw_table_next(fd + 1)). */
CW_HIDDEN int cw_table_next(int fd);
#endif
