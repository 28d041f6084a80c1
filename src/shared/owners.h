/*
 * Who holds a descriptor and what that thread is doing (shared/owners.c): the owner side table,
 * one small record per descriptor beside its slot, and one record per thread in the process's
 * area.  The hooks write both with plain stores; the watcher reads them as untrusted input
 * (watcher/owner.c) to tell, for a leak, which thread last used the socket and where it is
 * blocked now, and which event-loop callbacks were registered for it.
 */
#ifndef CLOSEWAIT_OWNERS_H
#define CLOSEWAIT_OWNERS_H
#include "base.h"
#include "shared/fdtable.h"

/*
 * Per descriptor, 16 bytes (the slot is one full cache line).  `tid` is the thread that owns
 * it: the one that made it, registered it with an event loop or read its EOF, and for a socket
 * whose calls may block, the last to connect, read or write it; a birth sets it, a close clears
 * it.  The registration (`reg_*`) belongs to the slot's life whose seq is in `seq`: a reader
 * ignores it when the slot's seq differs.
 */
struct cw_owner {
    _Atomic uint32_t tid;        /* its owner thread, and the CW_OWNER_ flags */
    _Atomic uint32_t seq;        /* the slot's seq when the registration below was made */
    _Atomic uint32_t reg_stack;  /* stack of the event-loop call that registered callbacks */
    _Atomic uint32_t reg_cbs;    /* stack store id of the callback list (CW_CB_*), 0: none */
};

/* In cw_owner.tid (thread ids are below 2^22): a TCP socket or listener of the table (its calls
 * make the thread its owner), and one whose calls may block (not O_NONBLOCK as far as its birth
 * and fcntl said: its calls are recorded in the thread's record).  A slot never born as one (a
 * file, a pipe) has neither: its calls cost a load. */
#define CW_OWNER_TRACKED 0x80000000u
#define CW_OWNER_MAYBLOCK 0x40000000u
#define CW_OWNER_FLAGS (CW_OWNER_TRACKED | CW_OWNER_MAYBLOCK)
#define CW_OWNER_TID(w) ((int32_t)((w) & ~CW_OWNER_FLAGS))

/* The callback list, kept in the stack store (deduplicated: every connection of a server
 * registers the same callbacks): [registering call, connection, read, write, event]. */
enum { CW_CB_CALL, CW_CB_CONNECTION, CW_CB_READ, CW_CB_WRITE, CW_CB_EVENT, CW_CB_COUNT };

/* The event-loop calls that register callbacks (hooks/loops.c). */
enum cw_reg_call {
    CW_REG_NONE, CW_REG_UV_LISTEN, CW_REG_UV_ACCEPT, CW_REG_UV_READ_START, CW_REG_EVENT_NEW, CW_REG_EVENT_ASSIGN,
    CW_REG_BEV_SOCKET_NEW, CW_REG_BEV_SETCB, CW_REG_EVCONNLISTENER_NEW, CW_REG_EVCONNLISTENER_NEW_BIND,
    CW_REG_EV_IO_START, CW_REG_COUNT
};
CW_HIDDEN const char *cw_reg_call_name(unsigned call);

/* The calls that may block, as a thread record names them. */
enum cw_block_call {
    CW_CALL_NONE, CW_CALL_READ, CW_CALL_READV, CW_CALL_RECV, CW_CALL_RECVFROM, CW_CALL_RECVMSG, CW_CALL_RECVMMSG,
    CW_CALL_WRITE, CW_CALL_SEND, CW_CALL_SENDTO, CW_CALL_SENDMSG, CW_CALL_ACCEPT, CW_CALL_ACCEPT4,
    CW_CALL_CONNECT, CW_CALL_COUNT
};
CW_HIDDEN const char *cw_block_call_name(unsigned call);

/* One thread of the process.  `owner` is (area's thread epoch << 32 | tid): a record whose epoch
 * is not its area's is free (the area was given to another process since).  `now` packs what the
 * thread is blocked in: call (8 bits), fd (24 bits), the watcher's clock when the call began
 * (CLOCK_MONOTONIC ms, low 32 bits; 0 while no watcher ticked yet); 0 while in no call. */
struct cw_thread_rec {
    _Atomic uint64_t owner;
    _Atomic uint64_t now;
    _Atomic uint64_t caller;     /* the program's return address out of the blocking call */
    uint64_t spare;
};
#define CW_MAX_THREADS 512
#define CW_THREAD_FD_NONE 0xffffffu
static inline uint64_t cw_thread_pack(unsigned call, int fd, uint32_t since)
{
    /* A descriptor above 2^24 is named modulo that (the watcher checks it against the table). */
    return (uint64_t)(call & 0xffu) << 56 | (uint64_t)((unsigned)fd & CW_THREAD_FD_NONE) << 32 | since;
}

/* The owner record of a slot (same chunk, same index, in the owner pool): a quarter of the slot's
 * offset in the slot pool, from the owner pool.  cw_owner_bias is owner pool - slot pool / 4
 * (modulo 2^64: the pools are page-aligned). */
#define CW_OWNER_SCALE (sizeof(struct cw_slot) / sizeof(struct cw_owner))
CW_HIDDEN extern uintptr_t cw_owner_bias;
static inline struct cw_owner *cw_owner_of(const struct cw_slot *s)
{
    return (struct cw_owner *)(cw_owner_bias + (uintptr_t)s / CW_OWNER_SCALE);
}

/* This thread's id (gettid once per thread) and its record (claimed on first use; NULL: none,
 * or not yet). */
CW_HIDDEN extern __thread int32_t cw_self_tid_cache __attribute__((tls_model("initial-exec")));
CW_HIDDEN extern __thread struct cw_thread_rec *cw_self_rec __attribute__((tls_model("initial-exec")));
CW_HIDDEN int32_t cw_self_tid_slow(void);
CW_HIDDEN struct cw_thread_rec *cw_thread_claim(void);
static inline int32_t cw_self_tid(void)
{
    int32_t t = cw_self_tid_cache;
    return CW_LIKELY(t != 0) ? t : cw_self_tid_slow();
}

/* The owner word of fd's slot, or NULL: only the hot path's own chunk array (a chunk this
 * process has not looked up yet, a forked child's, is skipped rather than searched). */
static inline struct cw_owner *cw_owner_peek(int fd)
{
    unsigned u = (unsigned)fd, c = u / CW_CHUNK_SLOTS;
    if (CW_UNLIKELY(c >= CW_MAX_CHUNKS)) return NULL;
    struct cw_slot *chunk = atomic_load_explicit(&cw_chunks[c], memory_order_relaxed);
    return chunk != NULL ? cw_owner_of(&chunk[u % CW_CHUNK_SLOTS]) : NULL;
}

/*
 * Around a call on a descriptor.  On a TCP socket of the table whose calls may block: what the
 * thread is blocked in, stored before the call and cleared after it (a signal handler's call
 * inside a blocked one clears the outer's too: the thread then reads as not blocked until its
 * next call), and the thread as the socket's owner after it; both out of line.  A non-blocking
 * socket (an event loop's: its owner is the thread that accepted it, registered it with the loop,
 * or read its EOF) costs the load of its owner word and a test; a file or a pipe the same, and
 * nothing after the call.  No system call: a blocking call's start time is the watcher's last tick.
 */
struct cw_blocking {
    struct cw_owner *owner;      /* NULL: no slot */
    uint32_t word;               /* the owner word before the call */
};
/* cw_self_rec when the thread has no record: all were taken (its calls go unrecorded, it can
 * still own descriptors), or it is the library's own thread (nothing of it is recorded; its
 * cw_self_tid_cache is -1). */
#define CW_NO_REC ((struct cw_thread_rec *)1)
#define CW_OWN_THREAD ((struct cw_thread_rec *)2)
/* The watcher's tick word (a zero until there is a region): the hooks' clock. */
CW_HIDDEN extern const _Atomic int64_t *cw_tick_word;
/* A call that may block: its record written / cleared and the thread made the owner. */
CW_HIDDEN void cw_block_record(unsigned call, int fd, uintptr_t caller);
CW_HIDDEN void cw_block_record_end(struct cw_owner *o);
/* This thread is the socket's owner now (the flags of the word kept). */
CW_HIDDEN void cw_owner_claim(struct cw_owner *o);

static inline void cw_block_enter(struct cw_blocking *b, unsigned call, int fd, int nowait, uintptr_t caller)
{
    struct cw_owner *o = cw_owner_peek(fd);
    uint32_t w = o != NULL ? atomic_load_explicit(&o->tid, memory_order_relaxed) : 0;
    if (CW_UNLIKELY(w & CW_OWNER_MAYBLOCK)) {
        if (nowait) w &= ~CW_OWNER_MAYBLOCK;
        else cw_block_record(call, fd, caller);
    }
    b->owner = o;
    b->word = w;
}

static inline void cw_block_leave(const struct cw_blocking *b)
{
    if (CW_UNLIKELY(b->word & CW_OWNER_MAYBLOCK)) cw_block_record_end(b->owner);
}

/* The socket's O_NONBLOCK, as its birth or fcntl(F_SETFL) set it. */
CW_HIDDEN void cw_owner_set_nonblock(int fd, int on);

/* A new life of the slot, of that kind: owned by this thread, no registration (the one there
 * is of another life: its seq says so). */
static inline void cw_owner_birth(struct cw_slot *s, unsigned kind)
{
    struct cw_owner *o = cw_owner_of(s);
    int32_t tid = cw_self_tid();
    uint32_t flags = kind == CW_KIND_TCP || kind == CW_KIND_LISTEN ? CW_OWNER_FLAGS : 0;
    atomic_store_explicit(&o->seq, 0, memory_order_relaxed);
    atomic_store_explicit(&o->tid, (tid > 0 ? (uint32_t)tid : 0) | flags, memory_order_relaxed);
}
/* Born non-blocking (SOCK_NONBLOCK): its calls never wait. */
static inline void cw_owner_born_nonblocking(struct cw_slot *s)
{
    struct cw_owner *o = cw_owner_of(s);
    atomic_store_explicit(&o->tid, atomic_load_explicit(&o->tid, memory_order_relaxed) & ~CW_OWNER_MAYBLOCK,
                          memory_order_relaxed);
}
/* The descriptor is closed: its number's calls cost a load again. */
static inline void cw_owner_forget(struct cw_slot *s)
{
    atomic_store_explicit(&cw_owner_of(s)->tid, 0, memory_order_relaxed);
}
/* dup family: the copy keeps the original's owner and registration. */
CW_HIDDEN void cw_owner_copy(const struct cw_slot *from, struct cw_slot *to, uint32_t to_seq);
/* Record an event-loop registration on fd (its current life): the callbacks given (0: keep
 * what was there), the registering call and its stack. */
CW_HIDDEN void cw_owner_register(int fd, unsigned call, const uintptr_t cbs[CW_CB_COUNT], uint32_t stack);
/* After fork, in the child: the thread that forked has another id and no record there. */
CW_HIDDEN void cw_threads_after_fork_child(void);
/* Once, at start: the key whose destructor gives a thread's record back at its exit. */
CW_HIDDEN void cw_threads_init(void);
#endif
