/*
 * Owners: the per-descriptor owner records and the per-thread records (shared/owners.h).  Only
 * births, registrations and a thread's first blocking call come here; the hot path is inline.
 */
#define _GNU_SOURCE
#include "shared/owners.h"
#include "shared/region.h"
#include "shared/modules.h"
#include "unwind/stacks.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

CW_HIDDEN uintptr_t cw_owner_bias;
static const _Atomic int64_t no_tick;
CW_HIDDEN const _Atomic int64_t *cw_tick_word = &no_tick;

_Static_assert(sizeof(struct cw_slot) == 64 && sizeof(struct cw_owner) == 16, "owner records are a quarter of a slot");
_Static_assert(sizeof(struct cw_thread_rec) == 32, "thread records are half a cache line");

static pthread_key_t release_key;
static _Atomic int release_key_made;

int32_t cw_self_tid_slow(void)
{
    int saved = errno;
    int32_t t = (int32_t)syscall(SYS_gettid);
    errno = saved;
    cw_self_tid_cache = t;
    return t;
}

/* At the thread's exit (the key's destructor): the record is free again, and this thread, in
 * what remains of its exit, claims no other. */
static void release(void *p)
{
    struct cw_thread_rec *t = p;
    cw_self_rec = CW_OWN_THREAD; /* what remains of its exit is not recorded */
    struct cw_area *me = cw_me;
    if (t == NULL || me == NULL) return;
    uint64_t mine = (uint64_t)atomic_load(&me->thread_epoch) << 32 | (uint32_t)cw_self_tid_cache;
    atomic_store(&t->now, 0);
    atomic_compare_exchange_strong(&t->owner, &mine, 0);
}

void cw_threads_init(void)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&release_key_made, &expected, 1) && pthread_key_create(&release_key, release) != 0)
        atomic_store(&release_key_made, 0);
}

struct cw_thread_rec *cw_thread_claim(void)
{
    struct cw_area *me = cw_me;
    /* The library's own threads and calls, and anything before the area exists: no record. */
    if (me == NULL || cw_in_lib) return NULL;
    if (atomic_load_explicit(&release_key_made, memory_order_acquire) != 1) return NULL;
    uint32_t epoch = atomic_load_explicit(&me->thread_epoch, memory_order_relaxed);
    if (epoch == 0) return NULL;
    int32_t tid = cw_self_tid();
    if (tid <= 0) return NULL;
    uint64_t mine = (uint64_t)epoch << 32 | (uint32_t)tid;
    for (unsigned i = 0; i < CW_MAX_THREADS; i++) {
        struct cw_thread_rec *t = &me->threads[i];
        uint64_t cur = atomic_load_explicit(&t->owner, memory_order_relaxed);
        if (cur != 0 && (uint32_t)(cur >> 32) == epoch) continue;
        if (!atomic_compare_exchange_strong(&t->owner, &cur, mine)) continue;
        atomic_store_explicit(&t->now, 0, memory_order_relaxed);
        atomic_store_explicit(&t->caller, 0, memory_order_relaxed);
        int saved = errno;
        pthread_setspecific(release_key, t);
        errno = saved;
        cw_self_rec = t;
        return t;
    }
    cw_self_rec = CW_NO_REC; /* all taken: this thread goes without */
    return NULL;
}

CW_FORK_PATH void cw_threads_after_fork_child(void)
{
    /* Written only where set: a write to a page the parent shares is a copy in every child. */
    struct cw_thread_rec *rec = cw_self_rec;
    if (cw_self_tid_cache != 0) cw_self_tid_cache = 0;
    if (rec != NULL) {
        cw_self_rec = NULL;
        /* A record of its own (not a mark): the key holds it, for the thread's exit to give back;
         * the record is the parent's. */
        if ((uintptr_t)rec > 2) pthread_setspecific(release_key, NULL);
    }
}

void cw_owner_set_nonblock(int fd, int on)
{
    struct cw_owner *o = cw_owner_peek(fd);
    if (o == NULL || !(atomic_load_explicit(&o->tid, memory_order_relaxed) & CW_OWNER_TRACKED)) return;
    /* A plain store: a racing call of another thread at worst names itself owner again. */
    uint32_t w = atomic_load_explicit(&o->tid, memory_order_relaxed);
    atomic_store_explicit(&o->tid, on ? w & ~CW_OWNER_MAYBLOCK : w | CW_OWNER_MAYBLOCK, memory_order_relaxed);
}

void cw_block_record(unsigned call, int fd, uintptr_t caller)
{
    struct cw_thread_rec *t = cw_self_rec;
    if (CW_UNLIKELY((uintptr_t)t <= 2) && (t != NULL || (t = cw_thread_claim()) == NULL)) return;
    uint32_t since = (uint32_t)atomic_load_explicit(cw_tick_word, memory_order_relaxed);
    atomic_store_explicit(&t->caller, caller, memory_order_relaxed);
    atomic_store_explicit(&t->now, cw_thread_pack(call, fd, since), memory_order_release);
}

void cw_owner_claim(struct cw_owner *o)
{
    int32_t tid = cw_self_tid();
    if (o == NULL || tid <= 0) return; /* the library's own thread names no owner */
    uint32_t w = atomic_load_explicit(&o->tid, memory_order_relaxed);
    if ((w & ~CW_OWNER_FLAGS) != (uint32_t)tid)
        atomic_store_explicit(&o->tid, (uint32_t)tid | (w & CW_OWNER_FLAGS), memory_order_relaxed);
}

void cw_block_record_end(struct cw_owner *o)
{
    struct cw_thread_rec *t = cw_self_rec;
    if ((uintptr_t)t > 2) atomic_store_explicit(&t->now, 0, memory_order_release);
    cw_owner_claim(o);
}

void cw_owner_copy(const struct cw_slot *from, struct cw_slot *to, uint32_t to_seq)
{
    const struct cw_owner *a = cw_owner_of(from);
    struct cw_owner *b = cw_owner_of(to);
    int same_life = atomic_load_explicit(&a->seq, memory_order_relaxed) ==
                    atomic_load_explicit(&from->seq, memory_order_relaxed);
    atomic_store_explicit(&b->seq, 0, memory_order_relaxed);
    atomic_store_explicit(&b->tid, atomic_load_explicit(&a->tid, memory_order_relaxed), memory_order_relaxed);
    atomic_store_explicit(&b->reg_stack, same_life ? atomic_load_explicit(&a->reg_stack, memory_order_relaxed) : 0,
                          memory_order_relaxed);
    atomic_store_explicit(&b->reg_cbs, same_life ? atomic_load_explicit(&a->reg_cbs, memory_order_relaxed) : 0,
                          memory_order_relaxed);
    atomic_store_explicit(&b->seq, same_life ? to_seq : 0, memory_order_release);
}

/* The callback list registered for a slot's current life, into list[] (zeros if none). */
static void current_list(const struct cw_slot *s, uint32_t seq, uintptr_t list[CW_CB_COUNT])
{
    memset(list, 0, CW_CB_COUNT * sizeof list[0]);
    const struct cw_owner *o = cw_owner_of(s);
    if (atomic_load_explicit(&o->seq, memory_order_acquire) != seq) return;
    const uintptr_t *old;
    if (cw_stack_frames(atomic_load_explicit(&o->reg_cbs, memory_order_relaxed), &old) == CW_CB_COUNT)
        memcpy(list, old, CW_CB_COUNT * sizeof list[0]);
}

void cw_owner_register(int fd, unsigned call, const uintptr_t cbs[CW_CB_COUNT], uint32_t stack)
{
    struct cw_slot *s = cw_slot_peek(fd);
    if (s == NULL || call >= CW_REG_COUNT) return;
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    uint32_t kind = CW_SEQ_KIND(seq);
    if (kind != CW_KIND_TCP && kind != CW_KIND_LISTEN) return;
    uintptr_t list[CW_CB_COUNT];
    current_list(s, seq, list);
    for (int i = CW_CB_CONNECTION; i < CW_CB_COUNT; i++)
        if (cbs[i] != 0) list[i] = cbs[i];
    /* An accepted connection: the listener's callback is what accepted it. */
    int op = atomic_load_explicit(&s->opened_by, memory_order_relaxed);
    if (list[CW_CB_CONNECTION] == 0 && kind == CW_KIND_TCP && (op == CW_OP_ACCEPT || op == CW_OP_ACCEPT4)) {
        int lfd = atomic_load_explicit(&s->origin_fd, memory_order_relaxed);
        struct cw_slot *ls = lfd >= 0 ? cw_slot_peek(lfd) : NULL;
        if (ls != NULL) {
            uintptr_t l[CW_CB_COUNT];
            current_list(ls, atomic_load_explicit(&ls->seq, memory_order_acquire), l);
            list[CW_CB_CONNECTION] = l[CW_CB_CONNECTION] != 0 ? l[CW_CB_CONNECTION]
                                     : l[CW_CB_EVENT] != 0    ? l[CW_CB_EVENT]
                                                              : l[CW_CB_READ];
        }
    }
    list[CW_CB_CALL] = call;
    uint32_t id = cw_stack_store(list, CW_CB_COUNT);
    cw_modules_cover(list + 1, CW_CB_COUNT - 1);
    struct cw_owner *o = cw_owner_of(s);
    cw_owner_claim(o);
    int same_life = atomic_load_explicit(&o->seq, memory_order_relaxed) == seq;
    atomic_store_explicit(&o->seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    /* A registration without a stack keeps the one before it, of this life only. */
    if (stack != 0 || !same_life) atomic_store_explicit(&o->reg_stack, stack, memory_order_relaxed);
    atomic_store_explicit(&o->reg_cbs, id, memory_order_relaxed);
    atomic_store_explicit(&o->seq, seq, memory_order_release);
}

const char *cw_reg_call_name(unsigned call)
{
    static const char *const names[CW_REG_COUNT] = {
        [CW_REG_NONE] = "unknown",
        [CW_REG_UV_LISTEN] = "uv_listen",
        [CW_REG_UV_ACCEPT] = "uv_accept",
        [CW_REG_UV_READ_START] = "uv_read_start",
        [CW_REG_EVENT_NEW] = "event_new",
        [CW_REG_EVENT_ASSIGN] = "event_assign",
        [CW_REG_BEV_SOCKET_NEW] = "bufferevent_socket_new",
        [CW_REG_BEV_SETCB] = "bufferevent_setcb",
        [CW_REG_EVCONNLISTENER_NEW] = "evconnlistener_new",
        [CW_REG_EVCONNLISTENER_NEW_BIND] = "evconnlistener_new_bind",
        [CW_REG_EV_IO_START] = "ev_io_start",
    };
    return call < CW_REG_COUNT && names[call] != NULL ? names[call] : "unknown";
}

const char *cw_block_call_name(unsigned call)
{
    static const char *const names[CW_CALL_COUNT] = {
        [CW_CALL_NONE] = "none",       [CW_CALL_READ] = "read",         [CW_CALL_READV] = "readv",
        [CW_CALL_RECV] = "recv",       [CW_CALL_RECVFROM] = "recvfrom", [CW_CALL_RECVMSG] = "recvmsg",
        [CW_CALL_RECVMMSG] = "recvmmsg", [CW_CALL_WRITE] = "write",     [CW_CALL_SEND] = "send",
        [CW_CALL_SENDTO] = "sendto",   [CW_CALL_SENDMSG] = "sendmsg",   [CW_CALL_ACCEPT] = "accept",
        [CW_CALL_ACCEPT4] = "accept4", [CW_CALL_CONNECT] = "connect",
    };
    return call < CW_CALL_COUNT && names[call] != NULL ? names[call] : "unknown";
}
