/* A watched process's descriptor table and peer addresses, as the region holds them: every
 * number read there was written by a program process and is checked. */
#define _GNU_SOURCE
#include "watcher/internal.h"

struct cw_slot *cw_proc_slot(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (fd < 0 || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_slot *chunk = cw_pool_slots(atomic_load_explicit(&P->area->chunk[c], memory_order_acquire));
    return chunk != NULL ? &chunk[(unsigned)fd % CW_CHUNK_SLOTS] : NULL;
}

struct cw_peer *cw_proc_peer(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (fd < 0 || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_peer *chunk = cw_pool_peers(atomic_load_explicit(&P->area->chunk[c], memory_order_acquire));
    return chunk != NULL ? &chunk[(unsigned)fd % CW_CHUNK_SLOTS] : NULL;
}

struct cw_lang_ref *cw_proc_lang(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (fd < 0 || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_lang_ref *chunk = cw_lang_refs(atomic_load_explicit(&P->area->chunk[c], memory_order_acquire));
    return chunk != NULL ? &chunk[(unsigned)fd % CW_CHUNK_SLOTS] : NULL;
}

struct cw_owner *cw_proc_owner(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (fd < 0 || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_owner *chunk = cw_pool_owners(atomic_load_explicit(&P->area->chunk[c], memory_order_acquire));
    return chunk != NULL ? &chunk[(unsigned)fd % CW_CHUNK_SLOTS] : NULL;
}

int cw_area_limit(const struct cw_area *a)
{
    int high = atomic_load_explicit(&a->fd_high, memory_order_acquire);
    if (high < 0) return 0;
    if (high > CW_MAX_CHUNKS * CW_CHUNK_SLOTS) return CW_MAX_CHUNKS * CW_CHUNK_SLOTS;
    return high;
}

/* The first fd >= fd of the current process that has a slot, or -1. */
int cw_proc_next(int fd)
{
    int limit = cw_area_limit(P->area);
    while (fd >= 0 && fd < limit) {
        if (cw_proc_slot(fd) != NULL) return fd;
        fd = (fd / CW_CHUNK_SLOTS + 1) * CW_CHUNK_SLOTS; /* a chunk never used: skip it whole */
    }
    return -1;
}

/* The current process's descriptors (other than `except`) that hold the socket `id` (a slot's, the
 * same in every copy of it: dup, fork): up to max of them in out (which may be NULL); returns how
 * many were found. */
int cw_proc_fds_of_socket(uint64_t id, int except, int *out, int max)
{
    int n = 0;
    for (int fd = cw_proc_next(0); fd >= 0 && n < max; fd = cw_proc_next(fd + 1)) {
        if (fd == except) continue;
        struct cw_slot *s = cw_proc_slot(fd);
        if (s != NULL && CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire)) == CW_KIND_TCP &&
            atomic_load_explicit(&s->id, memory_order_relaxed) == id) {
            if (out != NULL) out[n] = fd;
            n++;
        }
    }
    return n;
}

uint64_t cw_proc_fd_inode(int fd, uint32_t seq)
{
    struct cw_slot *s = cw_proc_slot(fd);
    if (s == NULL || atomic_load_explicit(&s->seq, memory_order_acquire) != seq) return 0;
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/%ld/fd/%d", (long)P->pid, fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0) return 0;
    link[n] = 0;
    unsigned long long inode = 0;
    if (sscanf(link, "socket:[%llu]", &inode) != 1) return 0;
    return atomic_load_explicit(&s->seq, memory_order_acquire) == seq ? (uint64_t)inode : 0;
}

int cw_proc_cached_ends(int fd, uint32_t seq, char *local, char *peer, size_t cap)
{
    struct cw_peer *p = cw_proc_peer(fd);
    if (p == NULL) return 0;
    struct cw_peer cur;
    cw_peer_load(p, &cur);
    if (cur.seq != seq || (cur.family != 2 && cur.family != 10)) return 0;
    cw_peer_format(&cur, peer, cap);
    cw_peer_format_local(&cur, local, cap);
    return 1;
}

/* A socket that read EOF or was shut down, seen in a dump: keep its ends for when it is in
 * CLOSE and in no dump any more. */
void cw_proc_keep_ends(int fd, uint32_t seq, const struct cw_sock *k)
{
    struct cw_peer *p = cw_proc_peer(fd);
    if (p == NULL) return;
    struct cw_peer cur;
    cw_peer_load(p, &cur);
    if (cur.seq == seq && cur.family != 0 && cur.lport != 0) return;
    cw_peer_from_sock(k, seq, &cur);
    cw_peer_store(p, &cur);
}

void cw_sock_ends(const struct cw_sock *k, char *local, char *peer, size_t cap)
{
    if (k == NULL) {
        snprintf(local, cap, "?");
        snprintf(peer, cap, "?");
        return;
    }
    cw_sock_endpoint(k, 0, local, cap);
    cw_sock_endpoint(k, 1, peer, cap);
}
