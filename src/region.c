/*
 * The region: every piece of memory that both the hooks and the watcher touch (the descriptor
 * table, the peer table, the stack store, the spawn records, a control block), in one mapping
 * of a memfd.  The watcher runs in a process of its own (see helper.c): a thread in the program
 * would switch glibc into its multi-threaded paths for good (locked malloc, cancellable syscalls
 * with an atomic exchange around each one, locked stdio), and a single-threaded server would pay
 * that on every call, ours or not.  The helper maps the same memfd wherever its own address
 * space has room: the region holds offsets and indexes, never pointers into itself.
 *
 * Nothing in the region is ever reserved for real: the memfd is sparse and its pages exist once
 * written.  A forked child gets a copy of what is written (its table is its own from the fork
 * on), put back at the same address.
 */
#define _GNU_SOURCE
#include "closewait.h"
#include "region.h"

#include <linux/futex.h>

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
CW_HIDDEN struct cw_slot *cw_region_slots;
CW_HIDDEN struct cw_peer *cw_region_peers;
CW_HIDDEN struct cw_crossed *cw_region_crossed;
CW_HIDDEN struct cw_spawn *cw_spawns;
static int region_shared; /* 1: a memfd mapping the helper can share; 0: private memory */

#define PAGE 4096u
#define ROUND(x) (((x) + PAGE - 1) & ~(size_t)(PAGE - 1))

struct layout {
    size_t header, index, arena, slots, peers, crossed, size;
};

static struct layout layout_for(unsigned nchunks)
{
    struct layout l;
    size_t off = 0;
    l.header = off;
    off += ROUND(sizeof(struct cw_shared));
    l.index = off;
    off += ROUND(CW_STACK_INDEX_SIZE * sizeof(uint64_t));
    l.arena = off;
    off += ROUND(CW_STACK_ARENA_BYTES);
    l.slots = off;
    off += (size_t)nchunks * CW_CHUNK_SLOTS * sizeof(struct cw_slot);
    l.peers = off;
    off += ROUND((size_t)nchunks * CW_CHUNK_SLOTS * sizeof(struct cw_peer));
    l.crossed = off;
    off += ROUND((size_t)CW_MAX_SPAWNS * CW_SPAWN_SOCKS * sizeof(struct cw_crossed));
    l.size = off;
    return l;
}

/* Chunks of the descriptor table worth reserving: enough for fs.nr_open, the most descriptors a
 * process can ever raise its limit to. */
static unsigned chunks_wanted(void)
{
    unsigned n = CW_MAX_CHUNKS;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[32];
        ssize_t len = syscall(SYS_read, fd, buf, sizeof buf - 1);
        syscall(SYS_close, fd);
        if (len > 0) {
            unsigned long v = 0;
            for (ssize_t i = 0; i < len && buf[i] >= '0' && buf[i] <= '9'; i++) v = v * 10 + (unsigned long)(buf[i] - '0');
            unsigned long c = (v + CW_CHUNK_SLOTS - 1) / CW_CHUNK_SLOTS;
            if (c > 0 && c < n) n = (unsigned)c;
        }
    }
    return n;
}

static void point_into(void *base, unsigned nchunks)
{
    struct layout l = layout_for(nchunks);
    unsigned char *b = base;
    cw_region_stack_index = (_Atomic uint64_t *)(void *)(b + l.index);
    cw_region_arena = b + l.arena;
    cw_region_slots = (struct cw_slot *)(void *)(b + l.slots);
    cw_region_peers = (struct cw_peer *)(void *)(b + l.peers);
    cw_region_crossed = (struct cw_crossed *)(void *)(b + l.crossed);
    cw_spawns = ((struct cw_shared *)base)->spawns;
    atomic_store_explicit((_Atomic(struct cw_shared *) *)&cw_sh, (struct cw_shared *)base, memory_order_release);
}

/* A sparse memfd of `size` bytes mapped shared, or (no memfd) private anonymous memory. */
static void *map_fresh(size_t size, int *memfd, int *shared)
{
    *memfd = (int)syscall(SYS_memfd_create, "closewait", MFD_CLOEXEC);
    if (*memfd >= 0 && syscall(SYS_ftruncate, *memfd, (long)size) == 0) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, *memfd, 0);
        if (p != MAP_FAILED) {
            *shared = 1;
            return p;
        }
    }
    if (*memfd >= 0) syscall(SYS_close, *memfd);
    *memfd = -1;
    *shared = 0;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int cw_region_create(void)
{
    int memfd_value = -1;
    int *memfd = &memfd_value;
    unsigned nchunks = chunks_wanted();
    struct layout l = layout_for(nchunks);
    int shared = 0;
    void *base = map_fresh(l.size, memfd, &shared);
    if (base == NULL) return -1;
    struct cw_shared *sh = base;
    uint64_t cookie = 0;
    if (getrandom(&cookie, sizeof cookie, GRND_NONBLOCK) != (ssize_t)sizeof cookie)
        cookie = (uint64_t)(uintptr_t)base ^ (uint64_t)cw_now_ms() ^ ((uint64_t)getpid() << 40);
    sh->cookie = cookie | 1;
    sh->size = l.size;
    sh->nchunks = nchunks;
    sh->sink_fd = sh->epoll_fd = -1;
    atomic_store(&sh->program_pid, (int32_t)getpid());
    region_shared = shared;
    point_into(base, nchunks);
    /* The mapping stays; a descriptor for it is made again when a watcher process needs one
     * (cw_region_share): the program keeps none of ours meanwhile. */
    if (memfd_value >= 0) syscall(SYS_close, memfd_value);
    return 0;
}

int cw_region_is_shared(void)
{
    return region_shared;
}

/*
 * fork(): the child needs a table of its own, as it was at the fork.  The parent copies what has
 * been written into a fresh memfd just before the fork (the last prepare handler), the child puts
 * that copy at the region's address (mremap replaces the old mapping in one step), and the
 * parent lets go of it.  Copying in the child instead would race with the parent, which usually
 * closes its copy of a connection the moment fork returns.
 */
static int fork_copy_fd = -1;

/* Write [off, off + len) of the region into the memfd: only the pages ever written (reading the
 * others would make them exist), in runs, with pwrite (no mapping, no page faults here). */
static int copy_written(int fd, const unsigned char *from, size_t off, size_t len, unsigned char *vec)
{
    len = ROUND(len);
    if (len == 0) return 0;
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
 * fork(): the child needs a table of its own, as it was at the fork.  The parent writes what has
 * been written into a fresh memfd just before the fork (the last prepare handler), the child maps
 * that memfd over the region's address (MAP_FIXED replaces the old mapping in one step), and the
 * parent closes it.  Copying in the child instead would race with the parent, which usually
 * closes its copy of a connection the moment fork returns.
 */
/* A new memfd holding a copy of the region's used parts; -1 if none could be made. */
static int copy_to_new_memfd(void)
{
    struct cw_shared *old = cw_sh;
    struct layout l = layout_for(old->nchunks);
    int fd = (int)syscall(SYS_memfd_create, "closewait", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (syscall(SYS_ftruncate, fd, (long)old->size) != 0) {
        syscall(SYS_close, fd);
        return -1;
    }
    const unsigned char *from = (const unsigned char *)old;
    /* Only the parts in use: the table and the peers below the highest descriptor ever tracked,
     * the arena below its fill mark.  The stack index before the arena: a stack another thread
     * publishes meanwhile has its frames written before its index entry, so every entry copied
     * finds its frames. */
    size_t fds = (size_t)atomic_load(&old->fd_high);
    size_t slot_bytes = fds * sizeof(struct cw_slot), peer_bytes = fds * sizeof(struct cw_peer);
    size_t most = l.arena - l.index;
    if (ROUND(slot_bytes) > most) most = ROUND(slot_bytes);
    unsigned char *vec = mmap(NULL, ROUND(most / PAGE), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int rc = -1;
    if (vec != MAP_FAILED) {
        size_t used = atomic_load(&old->arena_used);
        if (used > CW_STACK_ARENA_BYTES) used = CW_STACK_ARENA_BYTES;
        rc = copy_written(fd, from, 0, l.index, vec); /* the control block */
        if (rc == 0) rc = copy_written(fd, from, l.index, l.arena - l.index, vec);
        if (rc == 0) rc = copy_written(fd, from, l.arena, used, vec);
        if (rc == 0) rc = copy_written(fd, from, l.slots, slot_bytes, vec);
        if (rc == 0) rc = copy_written(fd, from, l.peers, peer_bytes, vec);
        munmap(vec, ROUND(most / PAGE));
    }
    if (rc != 0) {
        syscall(SYS_close, fd);
        return -1;
    }
    return fd;
}

void cw_region_fork_prepare(void)
{
    fork_copy_fd = -1;
    if (cw_sh == NULL || !region_shared) return; /* private memory: fork makes the copy */
    fork_copy_fd = copy_to_new_memfd();
}

int cw_region_share(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL || !region_shared) return -1;
    int fd = copy_to_new_memfd();
    if (fd < 0) return -1;
    if (mmap(sh, sh->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE | MAP_FIXED, fd, 0) != (void *)sh) {
        syscall(SYS_close, fd);
        return -1;
    }
    return fd;
}

void cw_region_fork_parent(void)
{
    if (fork_copy_fd >= 0) syscall(SYS_close, fork_copy_fd);
    fork_copy_fd = -1;
}

int cw_region_fork_child(int *memfd)
{
    *memfd = -1;
    struct cw_shared *old = cw_sh;
    if (old == NULL || !region_shared) return 0;
    int rc = -1;
    if (fork_copy_fd >= 0 && mmap(old, old->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE | MAP_FIXED,
                                  fork_copy_fd, 0) == (void *)old) {
        *memfd = fork_copy_fd;
        rc = 0;
    } else if (fork_copy_fd >= 0) {
        syscall(SYS_close, fork_copy_fd);
    }
    fork_copy_fd = -1;
    if (rc != 0) {
        /* No copy: drop the region rather than write the parent's.  The hooks find no table. */
        atomic_store_explicit((_Atomic(struct cw_shared *) *)&cw_sh, NULL, memory_order_release);
        cw_table_detach();
        cw_peer_detach();
        return -1;
    }
    struct cw_shared *sh = cw_sh;
    atomic_store(&sh->program_pid, (int32_t)getpid());
    atomic_store(&sh->helper_pid, 0);
    atomic_store(&sh->helper_start, 0);
    atomic_store(&sh->helper_state, CW_HELPER_NONE);
    atomic_store(&sh->dump_req, 0);
    atomic_store(&sh->dump_done, 0);
    atomic_store(&sh->exit_req, 0);
    atomic_store(&sh->exit_done, 0);
    atomic_store(&sh->open_now, 0);
    sh->helper_error[0] = '\0';
    return 0;
}

/* In the helper: the program's region, wherever it lands (it holds offsets, never pointers: a
 * sanitizer's shadow or a library can sit at the program's address in a fresh process). */
int cw_region_attach(int memfd, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, memfd, 0);
    if (p == MAP_FAILED) return -1;
    struct cw_shared *sh = p;
    if (sh->size != size) {
        munmap(p, size);
        errno = EINVAL;
        return -1;
    }
    region_shared = 1;
    point_into(p, sh->nchunks);
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
