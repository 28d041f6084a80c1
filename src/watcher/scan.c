/* One look at every watched process: the kernel's dump of the sockets being torn down, each
 * table walked and matched by inode, the grace clock, the verdict. */
#define _GNU_SOURCE
#include "watcher/internal.h"

/* Sockets that read EOF or were shut down and are in no teardown state of the dump: in CLOSE
 * (held after the peer's FIN and ours), or established after the program's own SHUT_RD.  Few;
 * a dump of the established ones tells. */
struct pending_close {
    struct proc *p;
    int fd;
    uint32_t seq;
};
static struct pending_close *pending;
static size_t npending, pending_cap;

int64_t cw_fin_dated(const struct cw_sock *k, int64_t now, int64_t born)
{
    if (k == NULL || !k->has_info || k->last_ack_recv >= now) return now;
    int64_t fin = now - (int64_t)k->last_ack_recv;
    return born > fin && born <= now ? born : fin;
}

/* Held in a state the dump shows (CLOSE_WAIT, LAST_ACK) */
int cw_watch_dumped_held(uint64_t id)
{
    int ambiguous = 0;
    const struct cw_sock *k = cw_dump_find_id(&dump, id, &ambiguous);
    /* two sockets with its key: not known to be gone (a close reported late, never a false one) */
    if (ambiguous) return 1;
    return cw_sock_closing_held(k);
}

static struct cw_dump held_all;
static int64_t held_all_ms = -1;

const struct cw_dump *cw_watch_dump_held(int64_t now)
{
    if (held_all_ms != now) {
        held_all_ms = now;
        uint32_t mask = 1u << TCPS_ESTABLISHED | 1u << 2 | 1u << 3 | 1u << TCPS_CLOSE_WAIT | 1u << TCPS_LAST_ACK |
                        1u << TCPS_FIN_WAIT1 | 1u << TCPS_FIN_WAIT2 | 1u << TCPS_CLOSING;
        if (cw_dump_take(&held_all, mask, cw_watch_any_inet6()) != 0) held_all.ok = 0;
    }
    return held_all.ok ? &held_all : NULL;
}

/* A key names one socket unless one peer address and port reached the listener's port on two
 * local addresses (shared/fdtable.h).  The dump a look takes holds only the sockets being torn
 * down, where the other one may be missing: every state is asked before a report.  (A socket
 * in CLOSE is in no dump: none found but it.) */
int cw_watch_id_unique(uint64_t id, int64_t now)
{
    if (!CW_ID_IS_PEER(id)) return 1;
    const struct cw_dump *all = cw_watch_dump_held(now);
    return all != NULL && cw_dump_count_key(all, id) <= 1;
}

/* Reported descriptors that are gone now (closed by a hook we saw, or by one we did not). */
static void sweep_leaks(int64_t now)
{
    for (size_t i = 0; i < P->nleaks;) {
        struct leak *l = &P->leaks[i];
        struct cw_slot *s = cw_proc_slot(l->fd);
        uint32_t seq = s != NULL ? atomic_load_explicit(&s->seq, memory_order_acquire) : 0;
        const char *how = NULL;
        if (l->foreign) {
            if (dump.ok && !cw_watch_dumped_held(l->id)) how = "holder";
        } else if (seq != l->seq) {
            how = "close";
        } else if (dump.ok && !l->in_close && !cw_watch_dumped_held(l->id)) {
            how = "unseen";
        }
        if (how == NULL) {
            i++;
            continue;
        }
        cw_finding_closed(l, now, how);
        P->leaks[i] = P->leaks[--P->nleaks];
    }
}

/* The watched process this one was forked from, or NULL. */
struct proc *cw_proc_parent(void)
{
    int32_t parent = atomic_load(&P->area->parent);
    if (parent <= 0 || parent > CW_MAX_AREAS) return NULL;
    struct cw_area *pa = cw_area_at((unsigned)parent - 1);
    for (size_t k = 0; k < nprocs; k++)
        if (procs[k].area == pa && !procs[k].untrusted && procs[k].pid == atomic_load(&P->area->fork_parent_pid))
            return &procs[k];
    return NULL;
}

/* Is the socket still held by the process this one was forked from?  Then that one answers
 * for it: it knows where it came from. */
static int parent_holds(uint64_t id)
{
    int32_t parent = atomic_load(&P->area->parent);
    if (parent <= 0 || parent > CW_MAX_AREAS) return 0;
    struct cw_area *pa = cw_area_at((unsigned)parent - 1);
    for (size_t k = 0; k < nprocs; k++) {
        if (procs[k].area != pa || procs[k].untrusted) continue;
        struct proc *saved = P;
        P = &procs[k];
        int held = cw_proc_fds_of_socket(id, -1, NULL, 1) > 0;
        P = saved;
        return held;
    }
    return 0;
}

/* What a slot says of the socket, as a finding starts from it. */
static struct observed observed_of(int fd, struct cw_slot *s, uint32_t seq, uint64_t id, const char *local,
                                   const char *peer)
{
    struct observed o = {
        .local = local,
        .peer = peer,
        .fd = fd,
        .seq = seq,
        .id = id,
        .flags = atomic_load_explicit(&s->flags, memory_order_acquire),
        .open_stack = atomic_load_explicit(&s->open_stack, memory_order_relaxed),
        .eof_stack = atomic_load_explicit(&s->eof_stack, memory_order_relaxed),
        .open_ms = atomic_load_explicit(&s->open_ms, memory_order_relaxed),
        .eof_ms = atomic_load_explicit(&s->eof_ms, memory_order_relaxed),
        .opened_by = atomic_load_explicit(&s->opened_by, memory_order_relaxed),
        .eof_by = atomic_load_explicit(&s->eof_by, memory_order_relaxed),
    };
    cw_lang_of(cw_proc_lang(fd), seq, &o.lang_open, &o.lang_eof);
    return o;
}

static void adopt(int fd, struct cw_slot *s, uint32_t seq, uint64_t id, int64_t now)
{
    const struct cw_sock *k = cw_dump_find_id(&dump, id, NULL);
    char local[64], peer[64];
    cw_sock_ends(k, local, peer, sizeof local);
    struct observed o = observed_of(fd, s, seq, id, local, peer);
    o.fin_ms = s->w_fin_ms != 0 ? s->w_fin_ms : now;
    o.state = k != NULL ? k->state : TCPS_CLOSE_WAIT;
    silent = 1;
    cw_finding_leak(&o, now);
    silent = 0;
}

static void examine(int fd, struct cw_slot *s, int64_t now, int second_look)
{
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (CW_SEQ_KIND(seq) != CW_KIND_TCP) return;
    if (s->w_seq != seq) {
        s->w_seq = seq;
        s->w_flags = 0;
        s->w_fin_ms = 0;
    }
    uint64_t id = atomic_load_explicit(&s->id, memory_order_relaxed);
    if (s->w_flags & (WF_REPORTED | WF_SUPPRESSED)) {
        if (adopting && (s->w_flags & WF_REPORTED) && id != 0 && !cw_reported_anywhere(id) && cw_watch_dumped_held(id) &&
            cw_watch_id_unique(id, now))
            adopt(fd, s, seq, id, now);
        return;
    }
    if (id == 0) return;
    uint32_t flags = atomic_load_explicit(&s->flags, memory_order_acquire);
    int ambiguous = 0;
    const struct cw_sock *k = cw_dump_find_id(&dump, id, &ambiguous);
    /* Two sockets with its key (shared/fdtable.h): no verdict while neither is known to be it. */
    uint64_t proc_inode = 0;
    if (ambiguous) {
        if ((proc_inode = cw_proc_fd_inode(fd, seq)) == 0) return;
        k = cw_dump_find(&dump, proc_inode);
    }
    int state = k != NULL ? k->state : 0;
    if (k != NULL && (flags & (CW_SF_EOF | CW_SF_SHUT_WR))) cw_proc_keep_ends(fd, seq, k);
    if (cw_sock_closing_held(k)) {
        /* Dated by the kernel, not by this look, which may come late (teardown_needed). */
        if (s->w_fin_ms == 0)
            s->w_fin_ms = cw_fin_dated(k, now, (flags & CW_SF_HELD_AT_ATTACH) ? 0
                                                   : atomic_load_explicit(&s->open_ms, memory_order_relaxed));
    } else if (k == NULL && (flags & (CW_SF_EOF | CW_SF_SHUT_WR)) && !(s->w_flags & WF_ESTABLISHED)) {
        /* Not being torn down by the kernel's account, yet EOF read or shut down: CLOSE, or
         * established (its own SHUT_RD) -- asked below. */
        if (!second_look) {
            if (s->w_fin_ms == 0) s->w_fin_ms = now;
            int64_t since = s->w_fin_ms;
            if (flags & CW_SF_EOF) {
                int64_t eof = atomic_load_explicit(&s->eof_ms, memory_order_relaxed);
                if (eof != 0 && eof < since) since = eof;
            }
            if (now - since >= cw_cfg.grace_ms && cw_grow(&pending, &pending_cap, npending, sizeof *pending, 16) == 0)
                pending[npending++] = (struct pending_close){P, fd, seq};
            return;
        }
        state = TCPS_CLOSE;
    } else if (k == NULL && s->w_fin_ms != 0) {
        /* Seen in CLOSE_WAIT, in no dump since, and still held: reset into CLOSE (an orphaned
         * peer reset by its kernel, a reused 4-tuple), a dead connection kept all the same. */
        state = TCPS_CLOSE;
    } else {
        /* Established, or being torn down on our side only (we sent our FIN first). */
        s->w_fin_ms = 0;
        if (!(flags & CW_SF_EOF)) return;
        if (k != NULL) return;
    }
    int64_t fin = s->w_fin_ms;
    if (flags & CW_SF_EOF) {
        int64_t eof = atomic_load_explicit(&s->eof_ms, memory_order_relaxed);
        if (eof != 0 && (fin == 0 || eof < fin)) fin = eof;
    }
    /* Found in CLOSE_WAIT at an attach: listed at once, its grace spent before we came. */
    int before_attach = (flags & CW_SF_HELD_AT_ATTACH) && k != NULL && state == TCPS_CLOSE_WAIT;
    if (fin == 0 || (now - fin < cw_cfg.grace_ms && !before_attach)) return;
    /* Data still going out, or sent after the FIN within the grace period: a reply to a
     * half-closing client, alive and not leaked. */
    if (k != NULL && k->has_info) {
        int64_t last_send_age = (int64_t)k->last_data_sent;
        if (k->notsent > 0 || k->unacked > 0 || (last_send_age < now - fin && last_send_age < cw_cfg.grace_ms))
            return;
    }
    int inherited = atomic_load_explicit(&s->fork_gen, memory_order_relaxed) !=
                    atomic_load_explicit(&P->area->fork_gen, memory_order_relaxed);
    /* The process it was forked from answers for what it still holds itself, and, while it is
     * there, reports what its child holds (it knows where it came from). */
    if (inherited && parent_holds(id)) return;
    struct proc *parent = inherited ? cw_proc_parent() : NULL;
    /* The same life still, now that the kernel has been asked (the program may close it this
     * very moment). */
    if (atomic_load_explicit(&s->seq, memory_order_acquire) != seq) return;
    /* A dup of a socket already reported: the report named this fd already. */
    if (cw_reported_anywhere(id)) {
        s->w_flags |= WF_REPORTED;
        return;
    }
    if (proc_inode == 0 && !cw_watch_id_unique(id, now)) {
        /* /proc may tell: the socket found must be it (or, in CLOSE, none held be it) */
        const struct cw_dump *all = cw_watch_dump_held(now);
        proc_inode = cw_proc_fd_inode(fd, seq);
        if (proc_inode == 0 || all == NULL ||
            (k != NULL ? k->inode != proc_inode : cw_dump_find(all, proc_inode) != NULL))
            return;
    }
    char local[64], peer[64];
    cw_sock_ends(k, local, peer, sizeof local);
    if (k == NULL) cw_proc_cached_ends(fd, seq, local, peer, sizeof peer);
    struct observed o = observed_of(fd, s, seq, id, local, peer);
    o.proc_inode = proc_inode;
    o.flags = flags; /* as the verdict saw them */
    o.fin_ms = fin;
    o.state = state;
    o.reason = inherited                   ? REASON_INHERITED
               : (flags & CW_SF_SHUT_WR) ? REASON_SHUTDOWN_NOT_CLOSED
               : (flags & CW_SF_EOF)     ? REASON_EOF_NOT_CLOSED
                                         : REASON_PEER_CLOSED_UNREAD;
    o.holder = inherited ? cw_program_pid() : 0;
    o.spawn_stack = inherited ? atomic_load(&P->area->fork_stack) : 0;
    o.spawn_kind = CW_SPAWN_FORK;
    o.before_attach = before_attach;
    if (o.open_ms > now || o.open_ms < 0) o.open_ms = now;
    struct proc *holder = P;
    if (parent != NULL) {
        P = parent;
        cw_set_current_area(parent->area);
        o.spawn_kind = CW_SPAWN_FORK;
    }
    if (cw_watch_suppressed(o.open_stack, o.lang_open)) {
        s->w_flags |= WF_SUPPRESSED;
        P->total_suppressed++;
    } else {
        s->w_flags |= WF_REPORTED;
        atomic_fetch_or_explicit(&s->flags, CW_SF_REPORTED, memory_order_relaxed);
        cw_finding_leak(&o, now);
    }
    P = holder;
    cw_set_current_area(holder->area);
}

/* The pending sockets: established ones are not held; the others sit in CLOSE. */
static void settle_pending(int64_t now)
{
    if (npending == 0) return;
    if (cw_dump_take(&established, 1u << TCPS_ESTABLISHED | 1u << 2 | 1u << 3, cw_watch_any_inet6()) == 0) {
        for (size_t i = 0; i < npending; i++) {
            P = pending[i].p;
            struct cw_slot *s = cw_proc_slot(pending[i].fd);
            if (s == NULL || atomic_load_explicit(&s->seq, memory_order_acquire) != pending[i].seq) continue;
            int ambiguous = 0;
            if (cw_dump_find_id(&established, atomic_load_explicit(&s->id, memory_order_relaxed), &ambiguous) != NULL) {
                s->w_flags |= WF_ESTABLISHED;
                s->w_fin_ms = 0;
                continue;
            }
            if (ambiguous) continue;
            cw_set_current_area(P->area);
            examine(pending[i].fd, s, now, 1);
        }
    }
    npending = 0;
}

/* Does some live watched process descend from this one through fork? (It holds what it
 * inherited in a table we read.) */
int cw_watch_pid_watched(pid_t pid)
{
    for (size_t k = 0; k < nprocs; k++)
        if (procs[k].pid == pid && !procs[k].untrusted) return 1;
    return 0;
}

/* This look took the dump of the sockets being torn down (not only the listeners). */
static int teardown_dumped;

static void scan_proc(int64_t now)
{
    cw_set_current_area(P->area);
    if (!atomic_load_explicit(&P->area->any_tcp, memory_order_relaxed)) return;
    for (int fd = cw_proc_next(0); fd >= 0; fd = cw_proc_next(fd + 1)) {
        struct cw_slot *s = cw_proc_slot(fd);
        if (s == NULL) continue;
        uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (CW_SEQ_KIND(seq) == CW_KIND_TCP && teardown_dumped) examine(fd, s, now, 0);
        else if (CW_SEQ_KIND(seq) == CW_KIND_LISTEN) cw_watch_listener(fd, s, seq, now);
    }
}

/*
 * Is the dump of the sockets being torn down worth its price at this look?  The kernel walks
 * every TCP socket of the namespace for it, the TIME_WAIT ones a busy server leaves by the ten
 * thousand included: a few milliseconds a look, for a server of short connections more than
 * the library costs it otherwise.  It is not needed while every connection held is too young
 * for a report before the next look: one that is in CLOSE_WAIT now is found there at that look,
 * its FIN dated by the kernel's clock (examine), and reported on time all the same.  Needed for
 * anything older, anything seen closing already, a finding to follow up, a socket handed to a
 * spawned program.
 */
static int young_before_ms(void)
{
    int64_t interval = cw_watch_interval_ms > cw_cfg.interval_ms ? cw_watch_interval_ms : cw_cfg.interval_ms;
    /* the next look comes an interval later, a little more if the machine is busy */
    int64_t young = cw_cfg.grace_ms - interval - interval / 2 - 100;
    return young > 0 ? (int)young : 0;
}

static int proc_needs_teardown(int64_t now, int64_t young)
{
    if (P->nleaks > 0) return 1;
    struct cw_area *a = P->area;
    /* Sockets that crossed into a child: a forked child we watch answers for them itself; the
     * others count from the spawn, as a socket of ours from its birth (a fork-per-connection
     * server's children come and go by the hundred a second). */
    for (int i = 0; i < CW_MAX_SPAWNS; i++) {
        struct cw_spawn *r = &a->spawns[i];
        if (atomic_load(&r->state) != 2) continue;
        if (r->kind == CW_SPAWN_FORK && r->child > 0 && cw_watch_pid_watched(r->child)) continue;
        int64_t at = r->when_ms;
        int old = at <= 0 || at > now || now - at >= young;
        size_t nsocks = r->nsocks < CW_SPAWN_SOCKS ? r->nsocks : CW_SPAWN_SOCKS;
        for (size_t k = 0; k < nsocks; k++)
            if (!a->crossed[i][k].w_done && (old || a->crossed[i][k].w_fin_ms != 0)) return 1;
    }
    if (!atomic_load_explicit(&a->any_tcp, memory_order_relaxed)) return 0;
    for (int fd = cw_proc_next(0); fd >= 0; fd = cw_proc_next(fd + 1)) {
        struct cw_slot *s = cw_proc_slot(fd);
        if (s == NULL) continue;
        uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (CW_SEQ_KIND(seq) != CW_KIND_TCP) continue;
        if (s->w_seq == seq && (s->w_flags & (WF_REPORTED | WF_SUPPRESSED))) {
            /* reported by a watcher that died: counted again, from the dump */
            if (adopting && (s->w_flags & WF_REPORTED)) return 1;
            continue;
        }
        if (s->w_seq == seq && (s->w_fin_ms != 0 || (s->w_flags & WF_ESTABLISHED))) return 1;
        /* in CLOSE_WAIT already when the eBPF front-end attached: listed at once */
        if (atomic_load_explicit(&s->flags, memory_order_relaxed) & CW_SF_HELD_AT_ATTACH) return 1;
        int64_t born = atomic_load_explicit(&s->open_ms, memory_order_relaxed);
        /* a birth time the program's memory got wrong is no reason to look less */
        if (born <= 0 || born > now || now - born >= young) return 1;
    }
    return 0;
}

/* A listener of ours whose accept queue was not empty at every look for a while: a connection
 * may have died waiting there (CW_QUEUED_DEAD_MS), which only the teardown dump shows.  (A
 * queue that holds a connection for a moment, before a busy accept() takes it, is no reason:
 * one that sat there that long was there at each of those looks.) */
static int queue_waiting(int64_t now)
{
    for (size_t k = 0; k < nprocs; k++) {
        P = &procs[k];
        if (P->untrusted) continue;
        cw_set_current_area(P->area);
        for (size_t i = 0; i < P->nlisteners; i++) {
            const struct listener *l = &P->listeners[i];
            if (l->queue_since == 0 || now - l->queue_since < CW_QUEUED_DEAD_MS) continue;
            struct cw_slot *s = cw_proc_slot(l->fd);
            if (s == NULL || atomic_load_explicit(&s->seq, memory_order_acquire) != l->seq) continue;
            const struct cw_sock *d = cw_dump_find(&dump, atomic_load_explicit(&s->id, memory_order_relaxed));
            if (d != NULL && d->state == TCPS_LISTEN && d->rqueue > 0) return 1;
        }
    }
    return 0;
}

static int teardown_needed(int64_t now)
{
    int64_t young = young_before_ms();
    if (young == 0) return 1;
    for (size_t k = 0; k < nprocs; k++) {
        P = &procs[k];
        if (P->untrusted) continue;
        cw_set_current_area(P->area);
        if (proc_needs_teardown(now, young)) return 1;
    }
    return 0;
}

int64_t cw_watch_interval_ms;

int cw_watch_any_inet6(void)
{
    for (size_t k = 0; k < nprocs; k++)
        if (!procs[k].untrusted && atomic_load_explicit(&procs[k].area->any_inet6, memory_order_relaxed)) return 1;
    return 0;
}

static int any_tcp(void)
{
    for (size_t k = 0; k < nprocs; k++)
        if (!procs[k].untrusted && atomic_load_explicit(&procs[k].area->any_tcp, memory_order_relaxed)) return 1;
    return 0;
}

/* One look at every watched process; whole: a look asked for (an exit summary, a dump on
 * request), which takes every dump whatever the ages. */
void cw_watch_tick(int whole)
{
    if (!any_tcp()) return;
    int64_t now = cw_now_ms();
    uint32_t mask = 1u << TCPS_CLOSE_WAIT | 1u << TCPS_LAST_ACK | 1u << TCPS_FIN_WAIT1 | 1u << TCPS_FIN_WAIT2 |
                    1u << TCPS_CLOSING;
    int rc = 0;
    teardown_dumped = whole || teardown_needed(now);
    if (!teardown_dumped && listeners_seen) {
        /* The listening table only: the kernel walks no connection for it. */
        rc = cw_dump_take(&dump, 1u << TCPS_LISTEN, cw_watch_any_inet6());
        teardown_dumped = rc == 0 && queue_waiting(now);
    } else if (!teardown_dumped) {
        cw_dump_take_none(&dump);
    }
    if (teardown_dumped) {
        if (listeners_seen) mask |= 1u << TCPS_LISTEN;
        int64_t t0 = cw_now_ns();
        rc = cw_dump_take(&dump, mask, cw_watch_any_inet6());
        /* What a look costs the kernel grows with every TCP socket of the namespace (TIME_WAIT
         * ones too), not with ours: the watcher looks less often where that is much, so that
         * it spends at most about 1% of a core on it. */
        int64_t budget_ms = (cw_now_ns() - t0) / 10000; /* 100 times what the look took */
        /* ... but never so long that a report comes more than a second, or half the grace
         * period, after it is due */
        int64_t cap = cw_cfg.grace_ms / 2 < 1000 ? cw_cfg.grace_ms / 2 : 1000;
        if (budget_ms > cap) budget_ms = cap;
        cw_watch_interval_ms = cw_cfg.interval_ms > budget_ms ? cw_cfg.interval_ms : budget_ms;
    }
    if (rc != 0) {
        static int warned;
        if (!warned) {
            warned = 1;
            cw_warn("the kernel's socket list (netlink sock_diag) cannot be read; ", "no reports for now", NULL);
        }
        return;
    }
    listeners_seen = 0;
    for (size_t k = 0; k < nprocs; k++) {
        P = &procs[k];
        if (P->untrusted) continue;
        scan_proc(now);
    }
    settle_pending(now);
    adopting = 0;
    for (size_t k = 0; k < nprocs; k++) {
        P = &procs[k];
        if (P->untrusted) continue;
        cw_set_current_area(P->area);
        cw_watch_children(now);
        /* A fresh clock: reporting may have taken a while, and the close may be that recent. */
        sweep_leaks(cw_now_ms());
        atomic_store(&P->area->open_now, cw_proc_open_now(P));
    }
    cw_set_current_area(NULL);
    P = NULL;
    /* libdw keeps the files it read open: the names are cached by pc already, so let go of them
     * until the next report. */
    cw_symbolize_release();
}
