/*
 * The per-descriptor table: two levels, chunks of CW_CHUNK_SLOTS slots mapped on first use, so
 * a process with a raised RLIMIT_NOFILE pays only for the ranges it uses, and a lookup is two
 * loads with no lock and no syscall.
 */
#include "shared/region.h"

/* This process's view of its chunks: the hot path reads only this array.  Its area's chunk
 * index says the same for the watcher. */
CW_HIDDEN struct cw_private cw_private __attribute__((aligned(4096)));

struct cw_slot *cw_chunk_known(unsigned c)
{
    struct cw_area *me = cw_me;
    if (me == NULL || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_slot *chunk = cw_pool_slots(atomic_load_explicit(&me->chunk[c], memory_order_acquire));
    if (chunk != NULL) atomic_store_explicit(&cw_chunks[c], chunk, memory_order_release);
    return chunk;
}

/* Walks stop at the highest descriptor ever given a slot: the watcher process reading a page of
 * the region that nobody wrote would make that page exist (shared memory has no zero page). */
static void note_high(struct cw_area *me, int fd)
{
    int cur = atomic_load_explicit(&me->fd_high, memory_order_relaxed);
    while (cur <= fd && !atomic_compare_exchange_weak_explicit(&me->fd_high, &cur, fd + 1, memory_order_release,
                                                               memory_order_relaxed)) {
    }
}

struct cw_slot *cw_slot_get(int fd)
{
    struct cw_slot *s = cw_slot_peek(fd);
    struct cw_area *me = cw_me;
    if (CW_LIKELY(s != NULL)) {
        if (CW_UNLIKELY(fd >= atomic_load_explicit(&me->fd_high, memory_order_relaxed))) note_high(me, fd);
        return s;
    }
    if (fd < 0) return NULL;
    if (CW_UNLIKELY(me == NULL) && (me = cw_region_late_area()) == NULL) return NULL;
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (c >= CW_MAX_CHUNKS) return NULL;
    uint32_t k = cw_pool_take();
    if (k == 0) return NULL;
    uint32_t none = 0;
    /* Another thread may have given the chunk its slots meanwhile: keep theirs. */
    if (!atomic_compare_exchange_strong(&me->chunk[c], &none, k)) cw_pool_give(k);
    note_high(me, fd);
    return cw_slot_peek(fd);
}

void cw_table_repoint(void)
{
    struct cw_area *me = cw_me;
    /* Only below the highest descriptor: above it no chunk was ever given (and writing the whole
     * array would copy eight pages of it in a forked child). */
    int high = me != NULL ? atomic_load(&me->fd_high) : CW_MAX_CHUNKS * CW_CHUNK_SLOTS;
    unsigned chunks = high <= 0 ? 0 : (unsigned)(high - 1) / CW_CHUNK_SLOTS + 1;
    if (chunks > CW_MAX_CHUNKS) chunks = CW_MAX_CHUNKS;
    for (unsigned c = 0; c < chunks; c++)
        atomic_store(&cw_chunks[c], me != NULL ? cw_pool_slots(atomic_load(&me->chunk[c])) : NULL);
}

void cw_table_forget(void)
{
    struct cw_area *me = cw_me;
    int high = me != NULL ? atomic_load(&me->fd_high) : 0;
    unsigned chunks = high <= 0 ? 0 : (unsigned)(high - 1) / CW_CHUNK_SLOTS + 1;
    if (chunks > CW_MAX_CHUNKS || me == NULL) chunks = CW_MAX_CHUNKS;
    cw_me = NULL;
    for (unsigned c = 0; c < chunks; c++)
        if (atomic_load_explicit(&cw_chunks[c], memory_order_relaxed) != NULL) atomic_store(&cw_chunks[c], NULL);
}

int cw_table_limit(void)
{
    struct cw_area *me = cw_me;
    return me == NULL ? 0 : atomic_load_explicit(&me->fd_high, memory_order_acquire);
}

int cw_table_next(int fd)
{
    int limit = cw_table_limit();
    while (fd >= 0 && fd < limit) {
        if (cw_slot_peek(fd) != NULL) return fd;
        fd = (fd / CW_CHUNK_SLOTS + 1) * CW_CHUNK_SLOTS; /* a chunk never mapped: skip it whole */
    }
    return -1;
}

static uint32_t next_seq(uint32_t old, enum cw_kind kind)
{
    return ((CW_SEQ_GEN(old) + 1) << 2) | (uint32_t)kind;
}

void cw_slot_birth(struct cw_slot *s, enum cw_kind kind, int op, uint32_t stack, uint64_t id)
{
    /* Before anything is written: starting the watcher process may put a copy of the region in
     * its place. */
    struct cw_area *me = cw_me;
    if (me == NULL) return;
    uint32_t old = atomic_load_explicit(&s->seq, memory_order_relaxed);
    /* Mark the slot free under a new generation while the fields change, so a reader never
     * mixes two lives. */
    atomic_store_explicit(&s->seq, next_seq(old, CW_KIND_FREE), memory_order_release);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&s->flags, 0, memory_order_relaxed);
    atomic_store_explicit(&s->open_stack, stack, memory_order_relaxed);
    atomic_store_explicit(&s->eof_stack, 0, memory_order_relaxed);
    atomic_store_explicit(&s->id, id, memory_order_relaxed);
    atomic_store_explicit(&s->open_ms, cw_tick_ms(), memory_order_relaxed);
    atomic_store_explicit(&s->eof_ms, 0, memory_order_relaxed);
    atomic_store_explicit(&s->opened_by, (uint8_t)op, memory_order_relaxed);
    atomic_store_explicit(&s->eof_by, 0, memory_order_relaxed);
    atomic_store_explicit(&s->fork_gen, atomic_load_explicit(&me->fork_gen, memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&s->origin_fd, -1, memory_order_relaxed);
    cw_owner_birth(s, kind);
    atomic_store_explicit(&s->seq, next_seq(old + 4, kind), memory_order_release);
    if ((kind == CW_KIND_TCP || kind == CW_KIND_LISTEN) && !atomic_load_explicit(&me->any_tcp, memory_order_relaxed))
        atomic_store_explicit(&me->any_tcp, 1, memory_order_relaxed);
}

void cw_slot_forget(int fd)
{
    struct cw_slot *s = cw_slot_peek(fd);
    if (s == NULL) return;
    uint32_t old = atomic_load_explicit(&s->seq, memory_order_relaxed);
    if (CW_SEQ_KIND(old) == CW_KIND_FREE) return;
    atomic_store_explicit(&s->seq, next_seq(old, CW_KIND_FREE), memory_order_release);
    cw_owner_forget(s);
}

void cw_slot_forget_range(unsigned first, unsigned last)
{
    if (first > (unsigned)INT32_MAX) return;
    for (int fd = cw_table_next((int)first); fd >= 0 && (unsigned)fd <= last; fd = cw_table_next(fd + 1))
        cw_slot_forget(fd);
}

void cw_slot_copy(int from, int to)
{
    struct cw_slot *src = cw_slot_peek(from);
    if (src == NULL) return;
    uint32_t seq = atomic_load_explicit(&src->seq, memory_order_acquire);
    enum cw_kind kind = (enum cw_kind)CW_SEQ_KIND(seq);
    if (kind != CW_KIND_TCP && kind != CW_KIND_LISTEN) return;
    struct cw_slot *dst = cw_slot_get(to);
    if (dst == NULL) return;
    uint32_t old = atomic_load_explicit(&dst->seq, memory_order_relaxed);
    atomic_store_explicit(&dst->seq, next_seq(old, CW_KIND_FREE), memory_order_release);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&dst->flags,
                          (atomic_load_explicit(&src->flags, memory_order_relaxed) & ~CW_SF_REPORTED) |
                              CW_SF_DUP,
                          memory_order_relaxed);
#define COPY(f) atomic_store_explicit(&dst->f, atomic_load_explicit(&src->f, memory_order_relaxed), \
                                      memory_order_relaxed)
    COPY(open_stack);
    COPY(eof_stack);
    COPY(id);
    COPY(open_ms);
    COPY(eof_ms);
    COPY(opened_by);
    COPY(eof_by);
    COPY(fork_gen);
#undef COPY
    atomic_store_explicit(&dst->origin_fd, from, memory_order_relaxed);
    cw_owner_copy(src, dst, next_seq(old + 4, kind));
    atomic_store_explicit(&dst->seq, next_seq(old + 4, kind), memory_order_release);
    atomic_store_explicit(&cw_me->any_tcp, 1, memory_order_relaxed);
}

const char *cw_op_name(int op)
{
    static const char *const names[CW_OP_COUNT] = {
        [CW_OP_NONE] = "unknown",      [CW_OP_SOCKET] = "socket",     [CW_OP_ACCEPT] = "accept",
        [CW_OP_ACCEPT4] = "accept4",   [CW_OP_CONNECT] = "connect",   [CW_OP_DUP] = "dup",
        [CW_OP_INHERITED] = "inherited", [CW_OP_READ] = "read",       [CW_OP_READV] = "readv",
        [CW_OP_RECV] = "recv",         [CW_OP_RECVFROM] = "recvfrom", [CW_OP_RECVMSG] = "recvmsg",
        [CW_OP_RECVMMSG] = "recvmmsg", [CW_OP_READ_CHK] = "__read_chk", [CW_OP_RECV_CHK] = "__recv_chk",
        [CW_OP_RECVFROM_CHK] = "__recvfrom_chk", [CW_OP_BEFORE_ATTACH] = "before_attach",
    };
    if (op < 0 || op >= CW_OP_COUNT || names[op] == NULL) return "unknown";
    return names[op];
}
