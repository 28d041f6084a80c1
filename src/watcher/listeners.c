/* Listeners: connections that died in the accept queue, queues that are full. */
#define _GNU_SOURCE
#include "watcher/internal.h"

static struct listener *listener_for(int fd, uint32_t seq)
{
    for (size_t i = 0; i < P->nlisteners; i++)
        if (P->listeners[i].fd == fd) {
            if (P->listeners[i].seq != seq) {
                memset(&P->listeners[i], 0, sizeof P->listeners[i]);
                P->listeners[i].fd = fd;
                P->listeners[i].seq = seq;
            }
            return &P->listeners[i];
        }
    if (cw_grow(&P->listeners, &P->listeners_cap, P->nlisteners, sizeof *P->listeners, 8) != 0) return NULL;
    struct listener *l = &P->listeners[P->nlisteners++];
    memset(l, 0, sizeof *l);
    l->fd = fd;
    l->seq = seq;
    return l;
}

static void report_backlog(struct listener *l, struct cw_slot *s, const char *reason, uint32_t dead,
                           uint32_t queued, uint32_t qlen, uint32_t qlimit)
{
    uint32_t stack = atomic_load_explicit(&s->open_stack, memory_order_relaxed);
    int backlog = atomic_load_explicit(&s->backlog, memory_order_relaxed);
    struct cw_backlog_event e = {
        .pid = cw_program_pid(),
        .reason = reason,
        .listen = l->addr,
        .exe = P->exe,
        .fd = l->fd,
        .backlog = backlog,
        .accepted_dead = dead,
        .queued_dead = queued,
        .queue_len = qlen,
        .queue_limit = qlimit,
        .stack = stack,
        .stable_id = cw_report_stack_id(stack),
    };
    cw_finding_announce();
    struct buf b = {0};
    cw_report_printer()->backlog(&b, &e);
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

static int parent_watched(void)
{
    int32_t parent = atomic_load(&P->area->parent);
    if (parent <= 0 || parent > CW_MAX_AREAS) return 0;
    struct cw_area *pa = cw_area_at((unsigned)parent - 1);
    for (size_t k = 0; k < nprocs; k++)
        if (procs[k].area == pa && !procs[k].untrusted) return 1;
    return 0;
}

void cw_watch_listener(int fd, struct cw_slot *s, uint32_t seq, int64_t now)
{
    listeners_seen = 1;
    /* The process that made it watches its listeners, while it is there. */
    if (atomic_load_explicit(&s->fork_gen, memory_order_relaxed) !=
            atomic_load_explicit(&P->area->fork_gen, memory_order_relaxed) &&
        parent_watched())
        return;
    uint64_t inode = atomic_load_explicit(&s->id, memory_order_relaxed);
    const struct cw_sock *k = cw_dump_find(&dump, inode);
    if (k == NULL || k->state != TCPS_LISTEN) return;
    struct listener *l = listener_for(fd, seq);
    if (l == NULL) return;
    if (l->port == 0) {
        cw_sock_endpoint(k, 0, l->addr, sizeof l->addr);
        l->port = ntohs(k->sport);
    }
    uint32_t qlen = k->rqueue, qlimit = k->wqueue;
    uint32_t queued = 0;
    for (int i = 0; i < dump.unowned.n; i++)
        if (dump.unowned.port[i] == l->port) queued = dump.unowned.count[i];
    /* While connections may have waited long, accept() asks the kernel about each one it
     * returns: the queue was not empty at the look before either, and did not turn over since
     * (fewer accepts than were waiting then: the queue is first in, first out), or one died
     * there.  A connection that waits CW_QUEUED_DEAD_MS is in the queue at two looks at the
     * default interval, and no turnover passes it; a saturated server's queue, never empty,
     * turns over many times between two looks, and its accept() asks nothing. */
    uint32_t accepts = atomic_load_explicit(&s->accepts, memory_order_relaxed);
    int turned_over = l->last_qlen > 0 && accepts - l->last_accepts >= l->last_qlen;
    int waited = qlen > 0 && l->last_qlen > 0 && !turned_over;
    /* A queue that turned over since the last look holds nothing that was there then: it counts
     * from now again, as an empty one.  A connection that waits CW_QUEUED_DEAD_MS is there at the
     * looks of that time and no turnover passes it; a saturated server's queue, never empty, is
     * then no reason for the walk (queue_waiting), which would make the looks slower (each takes
     * longer with every TIME_WAIT socket), the queue older at each, and the walk again. */
    if (qlen == 0) l->queue_since = 0;
    else if (l->queue_since == 0 || turned_over) l->queue_since = now;
    l->last_qlen = qlen;
    l->last_accepts = accepts;
    if (waited || queued > 0)
        atomic_fetch_or_explicit(&s->flags, CW_SF_BACKLOGGED, memory_order_relaxed);
    else
        atomic_fetch_and_explicit(&s->flags, ~CW_SF_BACKLOGGED, memory_order_relaxed);
    uint32_t dead = atomic_load_explicit(&s->dead_accepts, memory_order_relaxed);
    l->dead_now = dead;
    l->queued_now = queued;
    l->seen_ms = now;

    /* One finding per listener, its counts updated at most once per grace period. */
    if ((dead > l->dead_reported || queued > l->queued_reported) &&
        (l->last_report_ms == 0 || now - l->last_report_ms >= cw_cfg.grace_ms)) {
        report_backlog(l, s, "peer_closed_in_backlog", dead, queued, qlen, qlimit);
        l->dead_reported = dead;
        if (queued > l->queued_reported) l->queued_reported = queued;
        l->last_report_ms = now;
    }
    /* Full: more waiting than the limit; the kernel drops SYNs until accept() catches up. */
    if (qlen > qlimit) {
        if (l->full_since == 0) l->full_since = now;
        int64_t hold = cw_cfg.grace_ms < 1000 ? cw_cfg.grace_ms : 1000;
        if (!l->full_reported && now - l->full_since >= hold) {
            report_backlog(l, s, "accept_queue_full", dead, queued, qlen, qlimit);
            l->full_reported = 1;
            l->full_events++;
        }
    } else {
        l->full_since = 0;
        l->full_reported = 0;
    }
}
