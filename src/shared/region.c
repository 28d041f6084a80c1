/*
 * The region: every piece of memory that the hooks and the watcher both touch, in one mapping of
 * a memfd, shared by a program, the processes it forks, and one watcher process for all of them.
 *
 *   [control block][stack index][stack arena][areas: one per process][chunk pool: slots][peers]
 *   [owners]
 *
 * The stack store is the tree's: a child keeps adding to it.  Each process has an area (its
 * counters, its spawn records, its module list, its chunk index) and its descriptor table in
 * chunks of the pool.  A fork costs the child an area and a copy of the parent's chunks, made
 * by the parent before the fork (copying in the child would race with the parent, which usually
 * closes its copy of a connection the moment fork returns); no new process, no new mapping.
 *
 * The region holds offsets and indexes, never pointers into itself: the watcher maps it
 * wherever it has room.  The memfd is sparse: pages exist once written.  The program keeps no
 * descriptor of it; a watcher process is handed a copy made for it (cw_region_fd).
 *
 * Every process that can write the region can lie in it: readers check every index.
 */
#define _GNU_SOURCE
#include "base.h"
#include "shared/region.h"
#include "shared/langstack.h"
#include "sys/procfs.h"

#include <linux/futex.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

CW_HIDDEN struct cw_shared *cw_sh;
CW_HIDDEN _Atomic uint64_t *cw_region_stack_index;
CW_HIDDEN unsigned char *cw_region_arena;
static unsigned char *region_base;
static int region_shared; /* 1: a memfd mapping a watcher can share; 0: private memory */

#define PAGE 4096u
#define ROUND(x) (((x) + PAGE - 1) & ~(size_t)(PAGE - 1))
#define CHUNK_SLOT_BYTES ((size_t)CW_CHUNK_SLOTS * sizeof(struct cw_slot))
#define CHUNK_PEER_BYTES ((size_t)CW_CHUNK_SLOTS * sizeof(struct cw_peer))
#define CHUNK_OWNER_BYTES ((size_t)CW_CHUNK_SLOTS * sizeof(struct cw_owner))

struct layout {
    size_t index, arena, areas, area_size, slots, peers, lang, owners, size;
};

static struct layout layout(void)
{
    struct layout l;
    size_t off = ROUND(sizeof(struct cw_shared));
    l.index = off;
    off += ROUND(CW_STACK_INDEX_SIZE * sizeof(uint64_t));
    l.arena = off;
    off += ROUND(CW_STACK_ARENA_BYTES);
    l.areas = off;
    l.area_size = ROUND(sizeof(struct cw_area));
    off += (size_t)CW_MAX_AREAS * l.area_size;
    l.slots = off;
    off += (size_t)CW_POOL_CHUNKS * CHUNK_SLOT_BYTES;
    l.peers = off;
    off += ROUND((size_t)CW_POOL_CHUNKS * CHUNK_PEER_BYTES);
    l.lang = off;
    off += ROUND(cw_lang_section_bytes());
    l.owners = off;
    off += ROUND((size_t)CW_POOL_CHUNKS * CHUNK_OWNER_BYTES);
    l.size = off;
    return l;
}

struct cw_area *cw_area_at(unsigned i)
{
    if (region_base == NULL || i >= CW_MAX_AREAS) return NULL;
    struct layout l = layout();
    return (struct cw_area *)(void *)(region_base + l.areas + (size_t)i * l.area_size);
}

int cw_area_index(const struct cw_area *a)
{
    if (region_base == NULL || a == NULL) return -1;
    struct layout l = layout();
    size_t off = (size_t)((const unsigned char *)a - region_base);
    return (int)((off - l.areas) / l.area_size);
}

struct cw_slot *cw_pool_slots(uint32_t chunk_plus_one)
{
    if (region_base == NULL || chunk_plus_one == 0 || chunk_plus_one > CW_POOL_CHUNKS) return NULL;
    return (struct cw_slot *)(void *)(region_base + layout().slots + (size_t)(chunk_plus_one - 1) * CHUNK_SLOT_BYTES);
}

struct cw_peer *cw_pool_peers(uint32_t chunk_plus_one)
{
    if (region_base == NULL || chunk_plus_one == 0 || chunk_plus_one > CW_POOL_CHUNKS) return NULL;
    return (struct cw_peer *)(void *)(region_base + layout().peers + (size_t)(chunk_plus_one - 1) * CHUNK_PEER_BYTES);
}

struct cw_owner *cw_pool_owners(uint32_t chunk_plus_one)
{
    if (region_base == NULL || chunk_plus_one == 0 || chunk_plus_one > CW_POOL_CHUNKS) return NULL;
    return (struct cw_owner *)(void *)(region_base + layout().owners + (size_t)(chunk_plus_one - 1) * CHUNK_OWNER_BYTES);
}

/* A free bit of the map, set; its number + 1, or 0 if none is left.  Lock-free, so that a hook
 * may take one from a signal handler. */
static uint32_t bit_take(_Atomic uint64_t *map, unsigned words)
{
    for (unsigned w = 0; w < words; w++) {
        uint64_t cur = atomic_load_explicit(&map[w], memory_order_relaxed);
        while (cur != ~0ull) {
            unsigned b = (unsigned)__builtin_ctzll(~cur);
            if (atomic_compare_exchange_weak_explicit(&map[w], &cur, cur | (1ull << b), memory_order_acq_rel,
                                                      memory_order_relaxed))
                return w * 64 + b + 1;
        }
    }
    return 0;
}

static void bit_give(_Atomic uint64_t *map, unsigned words, uint32_t n)
{
    if (n == 0 || n > words * 64) return;
    atomic_fetch_and_explicit(&map[(n - 1) / 64], ~(1ull << ((n - 1) % 64)), memory_order_acq_rel);
}

uint32_t cw_pool_take(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL) return 0;
    /* Empty: a chunk given back was emptied then (pool_give_used). */
    return bit_take(sh->chunk_map, CW_POOL_CHUNKS / 64);
}

_Static_assert(CHUNK_SLOT_BYTES % PAGE == 0 && CHUNK_PEER_BYTES % PAGE == 0 && CHUNK_OWNER_BYTES % PAGE == 0,
               "chunks are whole pages");

/* used: how many of its slots were ever written (from the start).  Zeroed here, so that the next
 * taker starts empty without touching it. */
static void pool_give_used(uint32_t c, size_t used)
{
    struct cw_slot *s = cw_pool_slots(c);
    if (s == NULL) return;
    if (used > CW_CHUNK_SLOTS) used = CW_CHUNK_SLOTS;
    memset(s, 0, used * sizeof(struct cw_slot));
    memset(cw_pool_peers(c), 0, used * sizeof(struct cw_peer));
    memset(cw_lang_refs(c), 0, used * sizeof(struct cw_lang_ref));
    memset(cw_pool_owners(c), 0, used * sizeof(struct cw_owner));
    bit_give(cw_sh->chunk_map, CW_POOL_CHUNKS / 64, c);
}

void cw_pool_give(uint32_t c)
{
    pool_give_used(c, CW_CHUNK_SLOTS);
}

static struct cw_area *area_take(void)
{
    uint32_t n = bit_take(cw_sh->area_map, CW_MAX_AREAS / 64);
    /* Taken lowest first: a high number means many are in use.  The areas of processes that
     * died are given back at the watcher's next look, which a fork-per-connection server's burst
     * of short-lived children should not wait for: past 128, every 32nd number rings it.  Areas
     * given back soon are taken again, in pages the region has already (a fresh one is a few
     * pages for the kernel to find and zero). */
    if (n == 0 || (n > 128 && (n & 31) == 0)) cw_doorbell();
    if (n == 0) return NULL;
    struct cw_area *a = cw_area_at(n - 1);
    /* The fields, not the big arrays: those are written before they are read, and the chunk
     * index was emptied when the area was given back. */
    memset(a, 0, offsetof(struct cw_area, threads));
    for (int i = 0; i < CW_MAX_SPAWNS; i++) {
        atomic_store(&a->spawns[i].state, 0);
        a->spawns[i].nsocks = 0;
    }
    atomic_store(&a->thread_epoch, atomic_fetch_add(&cw_sh->thread_epochs, 1) + 1);
    atomic_store(&a->state, AREA_FORKING);
    return a;
}

struct cw_area *cw_area_new_live(pid_t pid)
{
    if (cw_sh == NULL) return NULL;
    struct cw_area *a = area_take();
    if (a == NULL) return NULL;
    atomic_store(&a->pid, (int32_t)pid);
    atomic_store(&a->state, AREA_LIVE);
    return a;
}

void cw_area_release(struct cw_area *a)
{
    int i = cw_area_index(a);
    if (i < 0 || i >= CW_MAX_AREAS) return;
    /* Chunks are given only below the highest descriptor (a lie there costs the liar's own
     * chunks, never another's). */
    int high = atomic_load(&a->fd_high);
    unsigned chunks = high <= 0 ? 0 : (unsigned)(high - 1) / CW_CHUNK_SLOTS + 1;
    if (chunks > CW_MAX_CHUNKS) chunks = CW_MAX_CHUNKS;
    for (unsigned c = 0; c < chunks; c++) {
        uint32_t k = atomic_exchange(&a->chunk[c], 0);
        if (k != 0) pool_give_used(k, c + 1 < chunks ? CW_CHUNK_SLOTS : (size_t)high - (size_t)c * CW_CHUNK_SLOTS);
    }
    atomic_store(&a->state, AREA_FREE);
    bit_give(cw_sh->area_map, CW_MAX_AREAS / 64, (uint32_t)i + 1);
}

static void point_into(void *base)
{
    struct layout l = layout();
    unsigned char *b = base;
    region_base = b;
    cw_region_stack_index = (_Atomic uint64_t *)(void *)(b + l.index);
    cw_region_arena = b + l.arena;
    cw_lang_point_into(b + l.lang);
    cw_owner_bias = (uintptr_t)(b + l.owners) - (uintptr_t)(b + l.slots) / CW_OWNER_SCALE;
    cw_tick_word = &((struct cw_shared *)base)->watcher_tick_ms;
    atomic_store_explicit((_Atomic(struct cw_shared *) *)&cw_sh, (struct cw_shared *)base, memory_order_release);
}

/* Where the region goes: away from where the program's own mappings grow.  Placed among them,
 * it pushes every mapping made after it 600 MB further down, into other page directories, and
 * each fork() then allocates and fills page tables for those directories too (three pages a fork
 * for a program with one late mapping).  A random gigabyte-aligned address between 32 and 64 TB:
 * below the executable and the heap, above the low mappings, and not a fixed address.  None
 * under a sanitizer, whose runtime owns that part of the address space. */
static void *region_hint(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return NULL;
#else
    if (dlsym(RTLD_DEFAULT, "__tsan_init") != NULL || dlsym(RTLD_DEFAULT, "__asan_init") != NULL) return NULL;
    uint16_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) return NULL;
    uintptr_t gb = (uintptr_t)1 << 30;
    return (void *)(((uintptr_t)32 << 40) + (uintptr_t)(r & 0x7fffu) * gb); /* NOLINT(performance-no-int-to-ptr) */
#endif
}

/* A sparse memfd of `size` bytes mapped shared, or (no memfd) private anonymous memory. */
static void *map_fresh(size_t size, int *memfd, int *shared)
{
    *memfd = (int)syscall(SYS_memfd_create, "closewait", MFD_CLOEXEC);
    if (*memfd >= 0 && syscall(SYS_ftruncate, *memfd, (long)size) == 0) {
        void *p = mmap(region_hint(), size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, *memfd, 0);
        if (p != MAP_FAILED) {
            *shared = 1;
            return p;
        }
    }
    if (*memfd >= 0) syscall(SYS_close, *memfd);
    *memfd = -1;
    *shared = 0;
    void *p = mmap(region_hint(), size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int cw_region_create(void)
{
    int memfd = -1, shared = 0;
    struct layout l = layout();
    void *base = map_fresh(l.size, &memfd, &shared);
    if (base == NULL) return -1;
    /* The mapping stays; the program keeps no descriptor of ours. */
    if (memfd >= 0) syscall(SYS_close, memfd);
    struct cw_shared *sh = base;
    uint64_t cookie = 0;
    if (getrandom(&cookie, sizeof cookie, GRND_NONBLOCK) != (ssize_t)sizeof cookie)
        cookie = (uint64_t)(uintptr_t)base ^ (uint64_t)cw_now_ms() ^ ((uint64_t)getpid() << 40);
    sh->cookie = cookie | 1;
    sh->size = l.size;
    region_shared = shared;
    point_into(base);
    struct cw_area *a = area_take();
    atomic_store(&a->pid, (int32_t)getpid());
    atomic_store(&a->state, AREA_LIVE);
    cw_me = a;
    return 0;
}

int cw_region_is_shared(void)
{
    return region_shared;
}

/* ---- a copy of our part of the region ------------------------------------ */

/* Write [off, off + len) of the region into the memfd: only the pages ever written (reading the
 * others would make them exist), in runs, with pwrite (no mapping, no page faults here). */
static int copy_written(int fd, size_t off, size_t len, unsigned char *vec)
{
    len = ROUND(len);
    if (len == 0) return 0;
    const unsigned char *from = region_base;
    int known = mincore((void *)(from + off), len, vec) == 0;
    size_t pages = len / PAGE;
    for (size_t p = 0; p < pages;) {
        if (known && !(vec[p] & 1)) {
            p++;
            continue;
        }
        size_t q = p + 1;
        while (q < pages && (!known || (vec[q] & 1))) q++;
        size_t at = off + p * PAGE, n = (q - p) * PAGE;
        while (n > 0) {
            ssize_t w = pwrite(fd, from + at, n, (off_t)at);
            if (w <= 0) return -1;
            at += (size_t)w;
            n -= (size_t)w;
        }
        p = q;
    }
    return 0;
}

/*
 * A new memfd holding the control block, the stack store and this process's own area and chunks,
 * at the same offsets, then mapped over the region in one step: from then on this process is
 * alone in a region of its own, which a new watcher can be handed.  Its area in the old region is
 * marked as left, so that the old region's watcher lets it go.  Returns the memfd, or -1.
 */
static int take_own_copy(void)
{
    struct cw_shared *old = cw_sh;
    struct cw_area *me = cw_me;
    if (old == NULL || me == NULL || !region_shared) return -1;
    /* A forked child can get here (its first TCP socket) before its parent's fork() has written
     * its pid and state into its area: the copy must carry them, or the new watcher finds no
     * process in its region and leaves at once, and this one is never watched. */
    int32_t no_pid = 0;
    atomic_compare_exchange_strong(&me->pid, &no_pid, (int32_t)getpid());
    uint32_t forking = AREA_FORKING;
    atomic_compare_exchange_strong(&me->state, &forking, AREA_LIVE);
    struct layout l = layout();
    int fd = (int)syscall(SYS_memfd_create, "closewait", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (syscall(SYS_ftruncate, fd, (long)l.size) != 0) {
        syscall(SYS_close, fd);
        return -1;
    }
    size_t vec_len = ROUND(CW_STACK_ARENA_BYTES / PAGE);
    unsigned char *vec = mmap(NULL, vec_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int rc = -1;
    if (vec != MAP_FAILED) {
        size_t used = atomic_load(&old->arena_used);
        if (used > CW_STACK_ARENA_BYTES) used = CW_STACK_ARENA_BYTES;
        /* The index before the arena: a stack published meanwhile has its frames written before
         * its index entry, so every entry copied finds its frames. */
        rc = copy_written(fd, 0, l.arena, vec);
        if (rc == 0) rc = copy_written(fd, l.arena, used, vec);
        if (rc == 0) rc = copy_written(fd, l.lang, cw_lang_store_used(), vec);
        if (rc == 0) rc = copy_written(fd, (size_t)((unsigned char *)me - region_base), sizeof *me, vec);
        int high = atomic_load(&me->fd_high);
        unsigned last = high > 0 ? (unsigned)(high - 1) / CW_CHUNK_SLOTS : 0;
        for (unsigned c = 0; rc == 0 && c <= last && c < CW_MAX_CHUNKS; c++) {
            uint32_t k = atomic_load(&me->chunk[c]);
            if (k == 0 || k > CW_POOL_CHUNKS) continue;
            rc = copy_written(fd, l.slots + (size_t)(k - 1) * CHUNK_SLOT_BYTES, CHUNK_SLOT_BYTES, vec);
            if (rc == 0) rc = copy_written(fd, l.peers + (size_t)(k - 1) * CHUNK_PEER_BYTES, CHUNK_PEER_BYTES, vec);
            if (rc == 0)
                rc = copy_written(fd, l.lang + (size_t)((unsigned char *)cw_lang_refs(k) - (region_base + l.lang)),
                                  cw_lang_refs_per_chunk_bytes(), vec);
            if (rc == 0) rc = copy_written(fd, l.owners + (size_t)(k - 1) * CHUNK_OWNER_BYTES, CHUNK_OWNER_BYTES, vec);
        }
        munmap(vec, vec_len);
    }
    if (rc != 0) {
        syscall(SYS_close, fd);
        return -1;
    }
    atomic_store(&me->state, AREA_LEFT);
    cw_doorbell();
    if (mmap(region_base, l.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE | MAP_FIXED, fd, 0) !=
        (void *)region_base) {
        /* Nothing mapped there any more is worse than the old region: the hooks find no table. */
        atomic_store_explicit((_Atomic(struct cw_shared *) *)&cw_sh, NULL, memory_order_release);
        cw_me = NULL;
        cw_table_repoint();
        syscall(SYS_close, fd);
        return -1;
    }
    /* Alone now: this area and its chunks are the only ones in use. */
    struct cw_shared *sh = cw_sh;
    for (unsigned w = 0; w < CW_MAX_AREAS / 64; w++) atomic_store(&sh->area_map[w], 0);
    for (unsigned w = 0; w < CW_POOL_CHUNKS / 64; w++) atomic_store(&sh->chunk_map[w], 0);
    int mine = cw_area_index(me);
    atomic_fetch_or(&sh->area_map[mine / 64], 1ull << (mine % 64));
    for (unsigned c = 0; c < CW_MAX_CHUNKS; c++) {
        uint32_t k = atomic_load(&me->chunk[c]);
        if (k != 0 && k <= CW_POOL_CHUNKS) atomic_fetch_or(&sh->chunk_map[(k - 1) / 64], 1ull << ((k - 1) % 64));
    }
    uint64_t cookie = 0;
    if (getrandom(&cookie, sizeof cookie, GRND_NONBLOCK) == (ssize_t)sizeof cookie) sh->cookie = cookie | 1;
    atomic_store(&sh->watcher_state, CW_WATCHER_NONE);
    atomic_store(&sh->watcher_pid, 0);
    atomic_store(&sh->watcher_alive, 0);
    atomic_store(&sh->quit, 0);
    atomic_store(&me->state, AREA_LIVE);
    atomic_store(&me->dump_req, 0);
    atomic_store(&me->dump_done, 0);
    atomic_store(&me->exit_req, 0);
    atomic_store(&me->exit_done, 0);
    return fd;
}

int cw_region_fd(void)
{
    return take_own_copy();
}

int cw_region_leave(void)
{
    int fd = take_own_copy();
    if (fd < 0) return -1;
    syscall(SYS_close, fd);
    return 0;
}

/* ---- fork ------------------------------------------------------------------- */

#define fork_area (cw_private.fork_area)

/* What a forked child's area takes from its parent's, the table aside. */
static void inherit(struct cw_area *a, struct cw_area *parent, pid_t parent_pid)
{
    atomic_store(&a->any_tcp, atomic_load(&parent->any_tcp));
    atomic_store(&a->any_inet6, atomic_load(&parent->any_inet6));
    atomic_store(&a->fork_gen, (uint16_t)(atomic_load(&parent->fork_gen) + 1));
    atomic_store(&a->parent, cw_area_index(parent) + 1);
    atomic_store(&a->fork_parent_pid, (int32_t)parent_pid);
    atomic_store(&a->forked_ms, cw_now_ms());
    memcpy(&a->err, &parent->err, sizeof a->err);
    memcpy(a->exe, parent->exe, sizeof a->exe);
    uint32_t mlen = atomic_load(&parent->modules_len);
    if (mlen > sizeof a->modules) mlen = 0;
    memcpy(a->modules, parent->modules, mlen);
    atomic_store(&a->modules_len, mlen);
    atomic_store(&a->modules_gen, atomic_load(&parent->modules_gen) & ~1u);
}

void cw_region_fork_prepare(void)
{
    fork_area = NULL;
    struct cw_area *me = cw_me;
    if (cw_sh == NULL || me == NULL) return;
    struct cw_area *a = area_take();
    if (a == NULL) return;
    int high = atomic_load(&me->fd_high);
    unsigned last = high > 0 ? (unsigned)(high - 1) / CW_CHUNK_SLOTS : 0;
    for (unsigned c = 0; high > 0 && c <= last && c < CW_MAX_CHUNKS; c++) {
        uint32_t from = atomic_load(&me->chunk[c]);
        if (from == 0) continue;
        uint32_t to = cw_pool_take();
        if (to == 0) {
            cw_area_release(a);
            return;
        }
        /* The part below the highest descriptor: the rest was never written. */
        size_t n = c == last ? (size_t)(high - (int)(c * CW_CHUNK_SLOTS)) : CW_CHUNK_SLOTS;
        memcpy(cw_pool_slots(to), cw_pool_slots(from), n * sizeof(struct cw_slot));
        memcpy(cw_pool_peers(to), cw_pool_peers(from), n * sizeof(struct cw_peer));
        memcpy(cw_lang_refs(to), cw_lang_refs(from), n * sizeof(struct cw_lang_ref));
        memcpy(cw_pool_owners(to), cw_pool_owners(from), n * sizeof(struct cw_owner));
        atomic_store(&a->chunk[c], to);
    }
    atomic_store(&a->fd_high, high);
    inherit(a, me, getpid());
    /* The child's first chunk pointers, here, where it finds them without reading the region. */
    unsigned n = high > 0 ? last + 1 : 0;
    cw_private.fork_nchunks = n <= CW_FORK_CHUNKS ? n : 0;
    for (unsigned c = 0; c < cw_private.fork_nchunks; c++) cw_private.fork_chunks[c] = cw_pool_slots(atomic_load(&a->chunk[c]));
    fork_area = a;
}

CW_FORK_PATH void cw_region_fork_parent(void)
{
    /* fork_area stays until cw_region_fork_result() says how the fork went. */
}

CW_FORK_PATH void cw_region_fork_result(pid_t child, uint32_t fork_stack)
{
    struct cw_area *a = fork_area;
    fork_area = NULL;
    if (a == NULL) return;
    if (child < 0) {
        cw_area_release(a);
        return;
    }
    if (fork_stack != 0) atomic_store(&a->fork_stack, fork_stack);
    int32_t none = 0;
    atomic_compare_exchange_strong(&a->pid, &none, (int32_t)child);
    uint32_t forking = AREA_FORKING;
    atomic_compare_exchange_strong(&a->state, &forking, AREA_LIVE);
}

CW_FORK_PATH void cw_region_fork_child(void)
{
    struct cw_area *a = fork_area;
    fork_area = NULL;
    if (cw_sh == NULL) return;
    if (a == NULL) {
        /* No area could be made: drop the table rather than write the parent's (only the
         * pointers the parent had: each page of them written is a page copied).  One is taken
         * at the first socket instead (cw_region_late_area). */
        cw_private.orphan_of = cw_me;
        cw_private.orphan_of_pid = getppid();
        cw_table_forget();
        return;
    }
    /* Through our fork() the parent says the pid and the state (a page of the region the child
     * would otherwise fault in); an internal fork (daemon()) has only the child to say them. */
    if (!cw_private.fork_hooked) {
        atomic_store(&a->pid, (int32_t)getpid());
        atomic_store(&a->state, AREA_LIVE);
    }
    cw_private.fork_hooked = 0;
    cw_me = a;
    if (cw_private.fork_nchunks > 0 || atomic_load(&a->fd_high) <= 0) {
        for (unsigned c = 0; c < cw_private.fork_nchunks; c++)
            atomic_store_explicit(&cw_chunks[c], cw_private.fork_chunks[c], memory_order_relaxed);
    } else {
        cw_table_repoint();
    }
}

/* A forked child that got no area at the fork: every area was taken, by a burst of children the
 * watcher had not yet seen go (it was rung then).  It takes one at its first socket instead;
 * what it inherited goes untracked, what it makes does not.  Tried again at most every 20 ms. */
struct cw_area *cw_region_late_area(void)
{
    static _Atomic int taking;
    struct cw_area *parent = cw_private.orphan_of;
    if (parent == NULL || cw_sh == NULL || cw_in_watcher_process) return NULL;
    int64_t now = cw_now_ms();
    if (now < atomic_load_explicit(&cw_private.late_retry_ms, memory_order_relaxed)) return NULL;
    if (atomic_exchange(&taking, 1)) return NULL; /* another thread is at it */
    struct cw_area *me = cw_me;
    if (me == NULL) {
        struct cw_area *a = area_take();
        if (a == NULL) {
            atomic_store(&cw_private.late_retry_ms, now + 20);
        } else {
            inherit(a, parent, cw_private.orphan_of_pid);
            atomic_store(&a->pid, (int32_t)getpid());
            atomic_store(&a->state, AREA_LIVE);
            cw_private.orphan_of = NULL;
            cw_me = a;
            me = a;
            cw_doorbell();
        }
    }
    atomic_store(&taking, 0);
    return me;
}

/* ---- the watcher's side ---------------------------------------------------- */

int cw_region_attach(int memfd)
{
    struct layout l = layout();
    void *p = mmap(NULL, l.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, memfd, 0);
    if (p == MAP_FAILED) return -1;
    struct cw_shared *sh = p;
    if (sh->size != l.size) {
        munmap(p, l.size);
        errno = EINVAL;
        return -1;
    }
    region_shared = 1;
    point_into(p);
    return 0;
}

/* ---- waiting on a word of the region, across processes ---------------- */

int cw_futex_wait(_Atomic uint32_t *word, uint32_t expected, int timeout_ms)
{
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    return (int)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

void cw_futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

void cw_doorbell(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL) return;
    int saved = errno;
    atomic_fetch_add(&sh->doorbell, 1);
    cw_futex_wake(&sh->doorbell);
    errno = saved;
}

/* ---- the area being looked at ---------------------------------------------- */

/* In the watcher: the area being looked at. */
static struct cw_area *current;

void cw_set_current_area(struct cw_area *a)
{
    current = a;
}

struct cw_area *cw_current_area(void)
{
    return current != NULL ? current : cw_me;
}

pid_t cw_program_pid(void)
{
    if (current != NULL) return (pid_t)atomic_load(&current->pid);
    return getpid();
}

pid_t cw_program_ppid(void)
{
    if (current == NULL) return getppid();
    char state = 0;
    long ppid = 0;
    unsigned long long start = 0;
    return cw_proc_stat(cw_program_pid(), &state, &ppid, &start) == 0 ? (pid_t)ppid : 0;
}
