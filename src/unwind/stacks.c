/*
 * Backtraces: captured once per socket birth (and once per EOF), deduplicated in a lock-free
 * store so that a hook, even one called from a signal handler, never blocks and never allocates
 * from malloc.
 *
 * The unwinder is the compiler's own (_Unwind_Backtrace over .eh_frame), linked into this
 * library and hidden in it: no other library is loaded, so a fork copies no more mappings (each
 * one costs every fork of a fork-per-connection server, BENCHMARKS.md section 15), nothing is
 * dlopen'ed among the program's own allocations, and the program's own unwinder (libgcc_s for
 * its C++ exceptions, LLVM's libunwind, gperftools) is never displaced.  It finds a frame's
 * unwind table with _dl_find_object, which takes no lock and is safe in a signal handler.  It
 * only follows a frame's own CFI, so a frame without any (JIT code, Go) ends the walk there.
 */
#define _GNU_SOURCE
#include "shared/region.h"
#include "shared/modules.h"
#include "unwind/stacks.h"
#include "unwind/cfi.h"
#include "options/options.h"

#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unwind.h>

static int site_caching; /* births at a known site skip the unwind */
/* fork() while another thread unwinds must not hand the child a half-updated call-site cache or
 * store entry: fork waits for running unwinds to finish, and unwinds that would start meanwhile
 * are skipped. */
#define unwinds_running (cw_private.unwinds_running)
#define fork_pending (cw_private.fork_pending)
static _Atomic int unwinder_state; /* 0: not tried, 1: trying, 2: ready, 3: unavailable */

struct range { uintptr_t lo, hi; };
static struct range own_text;

/* Stack store: an open-addressing index of packed (hash, arena offset) words over an arena of
 * frames.  A new stack is written to the arena first and then published with one CAS, so a
 * reader never sees a half-written stack. */
#define INDEX_SIZE CW_STACK_INDEX_SIZE
#define ARENA_BYTES CW_STACK_ARENA_BYTES
/* Index and arena live in the region (region.c), where the watcher process reads them. */

struct stored_stack {
    uint32_t depth;
    uint32_t hash;
    uintptr_t pcs[];
};

static int find_text(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct range *r = data;
    uintptr_t probe = r->lo;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD) continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        uintptr_t hi = lo + ph->p_memsz;
        if (probe >= lo && probe < hi) {
            /* The whole object: its lowest and highest loaded address. */
            uintptr_t olo = UINTPTR_MAX, ohi = 0;
            for (int j = 0; j < info->dlpi_phnum; j++) {
                const ElfW(Phdr) *q = &info->dlpi_phdr[j];
                if (q->p_type != PT_LOAD) continue;
                uintptr_t a = info->dlpi_addr + q->p_vaddr;
                if (a < olo) olo = a;
                if (a + q->p_memsz > ohi) ohi = a + q->p_memsz;
            }
            r->lo = olo;
            r->hi = ohi;
            return 1;
        }
    }
    return 0;
}

static struct range object_range(const void *addr)
{
    struct range r = {(uintptr_t)addr, 0};
    if (dl_iterate_phdr(find_text, &r) == 0) r.lo = r.hi = 0;
    return r;
}

static int ours(uintptr_t pc)
{
    return pc >= own_text.lo && pc < own_text.hi; /* the unwinder is linked in: ours too */
}

/* Step by step, keeping each frame's return-address slot. */
struct walk {
    uintptr_t *pcs, *slots;
    int n, max, steps;
};

static _Unwind_Reason_Code walk_frame(struct _Unwind_Context *ctx, void *arg)
{
    struct walk *w = arg;
    uintptr_t ip = (uintptr_t)_Unwind_GetIP(ctx);
    if (ip == 0 || ++w->steps > w->max + 16) return _URC_END_OF_STACK;
    if (w->n == 0 && ours(ip)) return _URC_NO_REASON; /* our own frames */
    /* The CFA of the frame below is this frame's stack pointer, just above the slot where the
     * call pushed the return address. */
    w->pcs[w->n] = ip;
    w->slots[w->n] = (uintptr_t)_Unwind_GetCFA(ctx) - sizeof(uintptr_t);
    return ++w->n < w->max ? _URC_NO_REASON : _URC_END_OF_STACK;
}

static int unwind_with_slots(uintptr_t *pcs, uintptr_t *slots, int max)
{
    struct walk w = {pcs, slots, 0, max, 0};
    _Unwind_Backtrace(walk_frame, &w);
    return w.n;
}

void cw_stacks_init(void)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&unwinder_state, &expected, 1)) return;
    own_text = object_range((const void *)&cw_stacks_init);
    site_caching = cw_cfg.site_cache;
    /* The unwinder sets up its register table once (under pthread_once): here, not in a
     * signal handler that may have interrupted the first unwind. */
    uintptr_t pcs[2], slots[2];
    unwind_with_slots(pcs, slots, 2);
    atomic_store(&unwinder_state, own_text.hi != 0 && cw_region_arena != NULL ? 2 : 3);
}

static uint32_t hash_pcs(const uintptr_t *pcs, int n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) {
        h ^= pcs[i];
        h *= 0x100000001b3ull;
        h ^= h >> 29;
    }
    uint32_t r = (uint32_t)(h ^ (h >> 32));
    return r == 0 ? 1 : r;
}

/* The stack an index entry names, or NULL when the entry points outside the arena (every
 * process of the tree writes the index: none is trusted). */
static const struct stored_stack *stored_at(uint64_t e)
{
    uint64_t off = ((e & 0xffffffffu) - 1) * 8;
    if ((e & 0xffffffffu) == 0 || off + sizeof(struct stored_stack) > ARENA_BYTES) return NULL;
    const struct stored_stack *st = (const struct stored_stack *)(cw_region_arena + off);
    uint32_t depth = st->depth;
    if (depth == 0 || depth > CW_MAX_DEPTH || off + sizeof *st + (uint64_t)depth * sizeof(uintptr_t) > ARENA_BYTES)
        return NULL;
    return st;
}

static uint32_t store_cover(const uintptr_t *pcs, int n, int cover)
{
    if (cw_sh == NULL) return 0;
    uint32_t hash = hash_pcs(pcs, n);
    size_t need = sizeof(struct stored_stack) + (size_t)n * sizeof(uintptr_t);
    size_t reserved = (size_t)-1;
    for (uint32_t probe = 0; probe < 64; probe++) {
        uint32_t i = (hash + probe) & (INDEX_SIZE - 1);
        uint64_t e = atomic_load_explicit(&cw_region_stack_index[i], memory_order_acquire);
        if (e == 0) {
            if (reserved == (size_t)-1) {
                reserved = atomic_fetch_add_explicit(&cw_sh->arena_used, need, memory_order_relaxed);
                if (reserved + need > ARENA_BYTES) return 0;
                struct stored_stack *st = (struct stored_stack *)(cw_region_arena + reserved);
                st->depth = (uint32_t)n;
                st->hash = hash;
                memcpy(st->pcs, pcs, (size_t)n * sizeof(uintptr_t));
            }
            uint64_t packed = ((uint64_t)hash << 32) | (uint64_t)(reserved / 8 + 1);
            if (atomic_compare_exchange_strong_explicit(&cw_region_stack_index[i], &e, packed,
                                                        memory_order_release,
                                                        memory_order_acquire)) {
                /* A stack never seen: the watcher must know every module it runs through. */
                if (cover) cw_modules_cover(pcs, n);
                return i + 1;
            }
            /* Lost the race for this entry: fall through and look at what won. */
        }
        if ((uint32_t)(e >> 32) != hash) continue;
        const struct stored_stack *st = stored_at(e);
        if (st == NULL) continue;
        if (st->depth == (uint32_t)n && memcmp(st->pcs, pcs, (size_t)n * sizeof(uintptr_t)) == 0)
            return i + 1; /* the arena space reserved above, if any, is simply not used */
    }
    return 0;
}

static uint32_t store(const uintptr_t *pcs, int n)
{
    return store_cover(pcs, n, 1);
}

uint32_t cw_stack_store(const uintptr_t *values, int n)
{
    if (n <= 0) return 0;
    return store_cover(values, n > CW_MAX_DEPTH ? CW_MAX_DEPTH : n, 0);
}

/*
 * The call-site cache.  Most sockets of a program are born at a handful of places, each time
 * through the same chain of frames: the first capture there unwinds step by step and notes where
 * each frame's return address lies on the stack; the next ones at the same return address and
 * stack pointer only re-read those slots, and when every one still holds the same return address
 * the chain is the same and so is the stack.  A few loads instead of an unwind.
 */
#define SITE_WAYS 2
#define SITE_MAX_SPAN (256u << 10) /* slots further up the stack than this are not trusted */
struct site {
    uintptr_t ret0, sp0; /* the program's return address out of the hook, and its stack pointer */
    uint32_t id, n;
    uintptr_t slot[CW_MAX_DEPTH];
    /* the chain's return addresses, kept here: the shared store is for the watcher, and reading
     * it back means checking what other processes may have written */
    uintptr_t pc[CW_MAX_DEPTH];
};
static __thread struct site site_cache[SITE_WAYS] __attribute__((tls_model("initial-exec")));
static __thread unsigned site_next __attribute__((tls_model("initial-exec")));

/* Where the program called into the library: walk our own frame-pointer chain (the library is
 * built with frame pointers) from `fp` to the first return address outside it. */
static int program_caller(const uintptr_t *fp, uintptr_t *ret0, uintptr_t *sp0, uintptr_t *rbp0)
{
    for (int i = 0; i < 12 && fp != NULL; i++) {
        uintptr_t ret = fp[1];
        if (!(ret >= own_text.lo && ret < own_text.hi)) {
            *ret0 = ret;
            *sp0 = (uintptr_t)(fp + 2);
            *rbp0 = fp[0]; /* the program's RBP, saved by the frame it called */
            return 1;
        }
        const uintptr_t *next = (const uintptr_t *)fp[0]; /* NOLINT(performance-no-int-to-ptr) */
        if (next <= fp || (uintptr_t)next - (uintptr_t)fp > SITE_MAX_SPAN) return 0;
        fp = next;
    }
    return 0;
}

static uint32_t site_lookup(uintptr_t ret0, uintptr_t sp0, int depth)
{
    for (int w = 0; w < SITE_WAYS; w++) {
        const struct site *e = &site_cache[w];
        if (e->ret0 != ret0 || e->sp0 != sp0 || e->id == 0 || (int)e->n > depth) continue;
        uint32_t i = 0;
        while (i < e->n && *(const uintptr_t *)e->slot[i] == e->pc[i]) i++; /* NOLINT(performance-no-int-to-ptr) */
        if (i == e->n) return e->id;
    }
    return 0;
}

static uint32_t capture_unwound(int located, uintptr_t ret0, uintptr_t sp0, uintptr_t rbp0, int depth);

uint32_t cw_stack_capture(void)
{
    return cw_stack_capture_from(__builtin_frame_address(0));
}

uint32_t cw_stack_capture_from(const void *frame)
{
    int st = atomic_load_explicit(&unwinder_state, memory_order_acquire);
    if (CW_UNLIKELY(st != 2)) {
        if (st == 0) cw_stacks_init();
        if (atomic_load_explicit(&unwinder_state, memory_order_acquire) != 2) return 0;
    }
    /* A signal handler that interrupted an unwind on this thread: the call-site cache may be
     * half written, so this birth goes without a stack rather than risk it. */
    if (cw_in_unwind) return 0;
    int depth = cw_cfg.stack_depth;
    uintptr_t ret0 = 0, sp0 = 0, rbp0 = 0;
    int located = program_caller((const uintptr_t *)frame, &ret0, &sp0, &rbp0);
    if (located && site_caching) {
        uint32_t id = site_lookup(ret0, sp0, depth);
        if (id != 0) return id;
    }
    return capture_unwound(located, ret0, sp0, rbp0, depth);
}

/* Out of line: the unwind itself and its buffers, not set up on a call-site cache hit. */
static __attribute__((noinline)) uint32_t capture_unwound(int located, uintptr_t ret0, uintptr_t sp0, uintptr_t rbp0,
                                                          int depth)
{
    atomic_fetch_add(&unwinds_running, 1);
    if (atomic_load(&fork_pending)) {
        atomic_fetch_sub(&unwinds_running, 1);
        return 0;
    }
    cw_in_unwind++;
    uint32_t id = 0;
    uintptr_t pcs[CW_MAX_DEPTH], slots[CW_MAX_DEPTH];
    /* From where the program called us, by the rules kept per return address; libgcc's unwinder
     * for a stack they cannot follow, or when our own frames did not lead to the program. */
    int n = located ? cw_cfi_walk(ret0, sp0, rbp0, pcs, slots, depth) : -1;
    if (n < 0) n = unwind_with_slots(pcs, slots, depth);
    if (n > 0) id = store(pcs, n);
    /* Cache only a chain that starts where the frame pointers said and whose slots all lie in
     * the span the check trusts. */
    if (id != 0 && located && site_caching && pcs[0] == ret0 && slots[0] + sizeof(uintptr_t) == sp0 &&
        slots[n - 1] - sp0 < SITE_MAX_SPAN) {
        int cacheable = 1;
        for (int i = 1; i < n && cacheable; i++) cacheable = slots[i] > slots[i - 1];
        if (cacheable) {
            struct site *e = &site_cache[site_next++ % SITE_WAYS];
            e->id = 0;
            e->ret0 = ret0;
            e->sp0 = sp0;
            e->n = (uint32_t)n;
            memcpy(e->slot, slots, (size_t)n * sizeof slots[0]);
            memcpy(e->pc, pcs, (size_t)n * sizeof pcs[0]);
            e->id = id;
        }
    }
    cw_in_unwind--;
    atomic_fetch_sub(&unwinds_running, 1);
    return id;
}

int cw_stack_frames(uint32_t id, const uintptr_t **pcs)
{
    if (id == 0 || id > INDEX_SIZE || cw_sh == NULL) return 0;
    uint64_t e = atomic_load_explicit(&cw_region_stack_index[id - 1], memory_order_acquire);
    if (e == 0) return 0;
    const struct stored_stack *st = stored_at(e);
    if (st == NULL) return 0;
    uint32_t depth = st->depth; /* again: it may have changed since it was checked */
    *pcs = st->pcs;
    return depth <= CW_MAX_DEPTH ? (int)depth : 0;
}

void cw_stacks_fork_prepare(void)
{
    atomic_store(&fork_pending, 1);
    /* Bounded: a fork from a signal handler that interrupted this thread's own unwind would
     * otherwise wait for itself. */
    for (int i = 0; i < 2000 && atomic_load(&unwinds_running) > 0; i++) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
}

CW_FORK_PATH void cw_stacks_fork_done(void)
{
    atomic_store(&fork_pending, 0);
}

int cw_stack_program_return(uintptr_t *ret)
{
    uintptr_t sp = 0, rbp = 0;
    return own_text.hi != 0 && program_caller((const uintptr_t *)__builtin_frame_address(0), ret, &sp, &rbp);
}
