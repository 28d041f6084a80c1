/*
 * A leak's owner: which thread last used the descriptor, whether it still exists, what it is
 * blocked in (its record in the area), and that other descriptor's own story (its connection from
 * the kernel's dump, its open stack); and the callbacks an event loop was given for it.
 *
 * Everything read from the region was written by the program (checked: numbers in range, a
 * record read twice the same); what the kernel says comes from /proc/PID/task/TID (no
 * permission over the program needed) and sock_diag.  No ptrace, no pidfd_getfd, no
 * process_vm_readv.
 */
#define _GNU_SOURCE
#include "watcher/internal.h"
#include "sys/procfs.h"

/* The connection around a blocked call (an upstream is established, in no teardown dump). */
static const struct cw_sock *find_socket(uint64_t id, int64_t now)
{
    const struct cw_sock *k = cw_dump_find_id(&dump, id, NULL);
    if (k != NULL) return k;
    const struct cw_dump *held = cw_watch_dump_held(now);
    return held != NULL ? cw_dump_find_id(held, id, NULL) : NULL;
}

/* The record of thread tid in the current area, NULL if it has none. */
static const struct cw_thread_rec *thread_record(pid_t tid)
{
    uint64_t want = (uint64_t)atomic_load(&P->area->thread_epoch) << 32 | (uint32_t)tid;
    for (unsigned i = 0; i < CW_MAX_THREADS; i++)
        if (atomic_load_explicit(&P->area->threads[i].owner, memory_order_acquire) == want) return &P->area->threads[i];
    return NULL;
}

/* The descriptor the owner is blocked on: its connection and where it was opened. */
static void blocked_fd_story(struct cw_owner_event *out, int64_t now)
{
    struct cw_slot *s = cw_proc_slot(out->fd);
    if (s == NULL) return;
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    uint32_t kind = CW_SEQ_KIND(seq);
    if (kind != CW_KIND_TCP && kind != CW_KIND_LISTEN) return;
    uint64_t id = atomic_load_explicit(&s->id, memory_order_relaxed);
    uint32_t flags = atomic_load_explicit(&s->flags, memory_order_relaxed);
    int op = atomic_load_explicit(&s->opened_by, memory_order_relaxed);
    uint32_t stack = atomic_load_explicit(&s->open_stack, memory_order_relaxed);
    if (atomic_load_explicit(&s->seq, memory_order_acquire) != seq) return;
    const struct cw_sock *k = id != 0 ? find_socket(id, now) : NULL;
    cw_sock_ends(k, out->local, out->peer, sizeof out->local);
    if (k == NULL) cw_proc_cached_ends(out->fd, seq, out->local, out->peer, sizeof out->peer);
    out->state = k != NULL ? cw_tcp_state_name(k->state) : kind == CW_KIND_LISTEN ? "LISTEN" : "unknown";
    out->opened_by = cw_op_name(op);
    out->role = kind == CW_KIND_LISTEN                         ? "listener"
                : (op == CW_OP_ACCEPT || op == CW_OP_ACCEPT4) ? "server"
                : (flags & CW_SF_CLIENT)                      ? "client"
                                                              : "unknown";
    out->open_stack = stack;
    out->fd_tracked = 1;
}

int cw_owner_story(int fd, int64_t now, struct cw_owner_event *out)
{
    memset(out, 0, sizeof *out);
    out->fd = -1;
    out->blocked_ms = -1;
    struct cw_owner *o = cw_proc_owner(fd);
    if (o == NULL) return 0;
    int32_t tid = CW_OWNER_TID(atomic_load_explicit(&o->tid, memory_order_relaxed));
    if (tid <= 0) return 0;
    out->tid = tid;
    pid_t pid = cw_program_pid();
    char path[96];
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/comm", (long)pid, (long)tid);
    char name[64];
    ssize_t n = cw_read_small(path, name, sizeof name);
    if (n < 0) {
        /* No such task: the thread is gone, or the descriptor came through fork from a process
         * whose thread it names, and nobody here has used it since (then nothing is known). */
        snprintf(path, sizeof path, "/proc/%ld/task/%ld", (long)pid, (long)tid);
        struct stat st;
        out->alive = stat(path, &st) == 0;
        struct cw_slot *s = cw_proc_slot(fd);
        if (!out->alive && s != NULL &&
            atomic_load_explicit(&s->fork_gen, memory_order_relaxed) != atomic_load(&P->area->fork_gen))
            return 0;
        if (!out->alive) return 1;
    } else {
        out->alive = 1;
        while (n > 0 && (name[n - 1] == '\n' || name[n - 1] == '\0')) name[--n] = '\0';
        memcpy(out->name, name, (size_t)n < sizeof out->name ? (size_t)n + 1 : sizeof out->name);
        out->name[sizeof out->name - 1] = '\0';
    }
    const struct cw_thread_rec *t = thread_record(tid);
    if (t == NULL) {
        out->unrecorded = 1;
        return 1;
    }
    uint64_t a = atomic_load_explicit(&t->now, memory_order_acquire);
    uintptr_t caller = (uintptr_t)atomic_load_explicit(&t->caller, memory_order_relaxed);
    uint64_t b = atomic_load_explicit(&t->now, memory_order_acquire);
    if (a != b || a == 0) return 1; /* in no call now (or between two) */
    unsigned call = (unsigned)(a >> 56);
    unsigned bfd = (unsigned)(a >> 32) & CW_THREAD_FD_NONE;
    uint32_t since = (uint32_t)a;
    if (call == CW_CALL_NONE || call >= CW_CALL_COUNT) return 1;
    out->call = cw_block_call_name(call);
    out->caller = caller;
    if (bfd != CW_THREAD_FD_NONE && (int)bfd < cw_area_limit(P->area)) out->fd = (int)bfd;
    /* The watcher's tick before the call began: the time is at most one interval long.  A call
     * that began before the watcher's first look (0) counts from that look. */
    if (since == 0 && cw_watch_started_ms > 0) since = (uint32_t)cw_watch_started_ms;
    uint32_t age = (uint32_t)now - since;
    if (since != 0 && age < (1u << 31)) out->blocked_ms = (int64_t)age;
    if (out->fd >= 0) blocked_fd_story(out, now);
    return 1;
}

int cw_owner_callbacks(int fd, uint32_t seq, struct cw_callbacks_event *out)
{
    memset(out, 0, sizeof *out);
    struct cw_owner *o = cw_proc_owner(fd);
    if (o == NULL || atomic_load_explicit(&o->seq, memory_order_acquire) != seq) return 0;
    uint32_t stack = atomic_load_explicit(&o->reg_stack, memory_order_relaxed);
    uint32_t cbs = atomic_load_explicit(&o->reg_cbs, memory_order_relaxed);
    if (atomic_load_explicit(&o->seq, memory_order_acquire) != seq) return 0;
    const uintptr_t *list;
    if (cw_stack_frames(cbs, &list) != CW_CB_COUNT) return 0;
    uintptr_t v[CW_CB_COUNT];
    memcpy(v, list, sizeof v); /* once: the store is the program's to write */
    if (v[CW_CB_CALL] == CW_REG_NONE || v[CW_CB_CALL] >= CW_REG_COUNT) return 0;
    out->registered_by = cw_reg_call_name((unsigned)v[CW_CB_CALL]);
    out->stack = stack;
    out->connection = v[CW_CB_CONNECTION];
    out->read = v[CW_CB_READ];
    out->write = v[CW_CB_WRITE];
    out->event = v[CW_CB_EVENT];
    return 1;
}
