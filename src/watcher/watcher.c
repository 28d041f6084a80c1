/*
 * The watcher: one process for a program and every process it forks (helper.c), or, where a
 * process of ours would become the program's child (PID 1, a subreaper), a thread of the
 * program.  Every CLOSEWAIT_INTERVAL_MS, or when a process rings for it, it
 *  1. asks the kernel for the TCP sockets of the network namespace that are being torn down
 *     (one netlink sock_diag dump per address family, as ss does: no permission over the
 *     program is needed), with their TCP_INFO;
 *  2. walks each watched process's descriptor table (memory only) and finds its sockets in the
 *     dump by inode: CLOSE_WAIT since when, still sending or not;
 *  3. reports a descriptor held past the grace period after the peer's FIN, once;
 *  4. notices when a reported descriptor is finally closed, and when a process is gone.
 * Everything that allocates, formats or symbolizes happens here, never in a hook.  Every number
 * read from the region was written by a program process: each is checked before use.
 */
#define _GNU_SOURCE
#include "report/buf.h"
#include "shared/modules.h"
#include "unwind/stacks.h"
#include "hooks/hooks.h"
#include "watcher/watcher.h"
#include "watcher/process.h"
#include "shared/region.h"
#include "report/sink.h"
#include "watcher/suppress.h"
#include "unwind/symbolize.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CLOSEWAIT_VERSION "0.2.0"

enum reason { R_EOF_NOT_CLOSED, R_PEER_CLOSED_UNREAD, R_SHUTDOWN_NOT_CLOSED, R_INHERITED };
static const char *const reason_names[] = {"eof_not_closed", "peer_closed_unread",
                                           "shutdown_not_closed", "inherited"};

/* w_flags bits (watcher-owned, per slot life) */
#define WF_REPORTED 1u
#define WF_SUPPRESSED 2u
#define WF_ESTABLISHED 4u   /* read EOF or shut down, yet found established (its own SHUT_RD) */

/* Findings from one open site (one open stack). */
struct group {
    uint32_t stack;
    uint64_t stable_id;
    int number;           /* 1, 2, ... in order of first report */
    long now, ever, peak;
    int64_t first_ms, last_ms, peak_ms;
    int printed;          /* text format: full stack already shown */
};

/* A reported descriptor not closed yet. */
struct leak {
    int fd;
    uint32_t seq;
    uint64_t inode;
    size_t gi;            /* index into groups */
    int64_t fin_ms;
    char local[64], peer[64];
    int foreign;          /* held by a process we do not watch (a child that exec'd) */
    int in_close;         /* held in CLOSE: the kernel's dumps no longer list it */
    pid_t holder;
};

struct listener {
    int fd;
    uint32_t seq;
    uint16_t port;
    char addr[64];
    uint32_t dead_reported;     /* accepted-dead count at the last report */
    uint32_t queued_reported;
    int64_t last_report_ms;
    int64_t full_since;
    int full_reported;
};

/* One watched process: everything the watcher knows of it, in one place. */
struct proc {
    struct cw_area *area;
    pid_t pid;
    int pidfd;
    int64_t exec_since;
    int untrusted;        /* changed credentials without leaving: not read any more */
    unsigned ticks;
    char exe[PATH_MAX];
    struct group *groups;
    size_t ngroups, groups_cap;
    struct leak *leaks;
    size_t nleaks, leaks_cap;
    struct listener *listeners;
    size_t nlisteners, listeners_cap;
    uint32_t *shown;      /* text format: EOF stacks printed in full already */
    size_t nshown, shown_cap;
    long total_reported, total_suppressed;
    int announced;
};

static struct proc *procs;
static size_t nprocs, procs_cap;
static struct proc *P; /* the process being looked at */
/* A watcher that takes over (from a dead or stopped one) counts what that one reported and is
 * still held, without writing it again. */
static int adopting, silent;

static pthread_mutex_t tick_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int running;        /* thread mode: the thread runs */
static _Atomic int thread_done;
static struct cw_dump dump, established;
static int listeners_seen;
static char hostname[256];
static int thread_mode;            /* this process watches itself, from a thread */
static int suppressions_loaded;

/* ---- the current process's table, as the region holds it -------------- */

static struct cw_slot *pslot(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (fd < 0 || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_slot *chunk = cw_pool_slots(atomic_load_explicit(&P->area->chunk[c], memory_order_acquire));
    return chunk != NULL ? &chunk[(unsigned)fd % CW_CHUNK_SLOTS] : NULL;
}

static struct cw_peer *ppeer(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (fd < 0 || c >= CW_MAX_CHUNKS) return NULL;
    struct cw_peer *chunk = cw_pool_peers(atomic_load_explicit(&P->area->chunk[c], memory_order_acquire));
    return chunk != NULL ? &chunk[(unsigned)fd % CW_CHUNK_SLOTS] : NULL;
}

static int plimit(const struct cw_area *a)
{
    int high = atomic_load_explicit(&a->fd_high, memory_order_acquire);
    if (high < 0) return 0;
    if (high > CW_MAX_CHUNKS * CW_CHUNK_SLOTS) return CW_MAX_CHUNKS * CW_CHUNK_SLOTS;
    return high;
}

/* The first fd >= fd of the current process that has a slot, or -1. */
static int pnext(int fd)
{
    int limit = plimit(P->area);
    while (fd >= 0 && fd < limit) {
        if (pslot(fd) != NULL) return fd;
        fd = (fd / CW_CHUNK_SLOTS + 1) * CW_CHUNK_SLOTS; /* a chunk never used: skip it whole */
    }
    return -1;
}

static int cached_ends(int fd, uint32_t seq, char *local, char *peer, size_t cap)
{
    struct cw_peer *p = ppeer(fd);
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
static void keep_ends(int fd, uint32_t seq, const struct cw_sock *k)
{
    struct cw_peer *p = ppeer(fd);
    if (p == NULL) return;
    struct cw_peer cur;
    cw_peer_load(p, &cur);
    if (cur.seq == seq && cur.family != 0 && cur.lport != 0) return;
    cw_peer_from_sock(k, seq, &cur);
    cw_peer_store(p, &cur);
}

/* ---- time and identity ----------------------------------------------- */

static void iso_time(int64_t wall_ms, char *out, size_t cap)
{
    time_t t = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(wall_ms % 1000));
}

static void json_head(struct buf *b, const char *event)
{
    int64_t wall = cw_wall_ms();
    char iso[64];
    iso_time(wall, iso, sizeof iso);
    buf_printf(b, "{\"event\":\"%s\",\"pid\":%ld,\"time\":\"%s\",\"ts_ms\":%lld", event,
               (long)cw_program_pid(), iso, (long long)wall);
}

/* The program's path as it published it (its own /proc/self/exe). */
static void load_identity(struct proc *p)
{
    memcpy(p->exe, p->area->exe, sizeof p->area->exe);
    p->exe[sizeof p->area->exe - 1] = '\0';
    if (hostname[0] == '\0' && gethostname(hostname, sizeof hostname - 1) != 0) hostname[0] = '\0';
}

/* The first event of a process in JSON says what the process is. */
static void announce(void)
{
    if (P->announced || cw_cfg.format != CW_FORMAT_JSON) return;
    P->announced = 1;
    struct buf b = {0};
    json_head(&b, "start");
    buf_printf(&b, ",\"ppid\":%ld,\"exe\":", (long)cw_program_ppid());
    buf_json_str(&b, P->exe);
    buf_puts(&b, ",\"host\":");
    buf_json_str(&b, hostname);
    buf_printf(&b, ",\"grace_ms\":%lld,\"watch\":\"sock_diag\",\"watcher\":\"%s\",\"version\":\"%s\"}\n",
               (long long)cw_cfg.grace_ms, thread_mode ? "thread" : "process", CLOSEWAIT_VERSION);
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

/* ---- stacks ----------------------------------------------------------- */

#define MAX_FRAMES (CW_MAX_DEPTH * 4)

static int expand_stack(uint32_t id, struct cw_frame *out, int max, int *raw_depth)
{
    const uintptr_t *pcs;
    int depth = cw_stack_frames(id, &pcs);
    int n = 0;
    /* Every captured pc is a return address: our own frames were cut off above it. */
    if (depth > 0 && max > 0 && cw_tail_call_frame(pcs[0], &out[0])) n = 1;
    for (int i = 0; i < depth && n < max; i++) n += cw_symbolize(pcs[i], 0, out + n, max - n);
    if (raw_depth != NULL) *raw_depth = depth;
    return n;
}

static const char *base_name(const char *path)
{
    if (path == NULL) return "?";
    const char *s = strrchr(path, '/');
    return s != NULL ? s + 1 : path;
}

/* The same code in any process and any run gives the same id: module names and offsets, not
 * addresses (ASLR) nor pids. */
static uint64_t stable_stack_id(uint32_t id)
{
    const uintptr_t *pcs;
    int depth = cw_stack_frames(id, &pcs);
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < depth; i++) {
        struct cw_frame f[16];
        int n = cw_symbolize(pcs[i], 0, f, 16);
        if (n <= 0) continue;
        const char *m = base_name(f[n - 1].module);
        for (const char *p = m; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
        uintptr_t off = f[n - 1].module != NULL ? f[n - 1].offset : 0;
        for (int k = 0; k < 8; k++) h = (h ^ ((off >> (8 * k)) & 0xff)) * 0x100000001b3ull;
    }
    return h;
}

static void json_frames(struct buf *b, const char *key, uint32_t id)
{
    struct cw_frame f[MAX_FRAMES];
    int n = expand_stack(id, f, MAX_FRAMES, NULL);
    buf_printf(b, ",\"%s\":[", key);
    for (int i = 0; i < n; i++) {
        buf_printf(b, "%s{\"pc\":\"0x%lx\",\"module\":", i ? "," : "", (unsigned long)f[i].pc);
        buf_json_str(b, f[i].module);
        buf_printf(b, ",\"offset\":\"0x%lx\"", (unsigned long)f[i].offset);
        if (f[i].build_id != NULL) buf_printf(b, ",\"build_id\":\"%s\"", f[i].build_id);
        if (f[i].function != NULL) {
            buf_puts(b, ",\"function\":");
            buf_json_str(b, f[i].function);
        }
        if (f[i].file != NULL) {
            buf_puts(b, ",\"file\":");
            buf_json_str(b, f[i].file);
            buf_printf(b, ",\"line\":%d", f[i].line);
        }
        if (f[i].inlined) buf_puts(b, ",\"inlined\":true");
        if (f[i].tail_call) buf_puts(b, ",\"tail_call\":true");
        buf_puts(b, "}");
    }
    buf_puts(b, "]");
}

static void text_frames(struct buf *b, uint32_t id)
{
    struct cw_frame f[MAX_FRAMES];
    int n = expand_stack(id, f, MAX_FRAMES, NULL);
    if (n == 0) buf_puts(b, "    (no backtrace: libunwind unavailable)\n");
    for (int i = 0; i < n; i++) {
        buf_printf(b, "    #%d 0x%lx in %s", i, (unsigned long)f[i].pc,
                   f[i].function != NULL ? f[i].function : "??");
        if (f[i].file != NULL) buf_printf(b, " %s:%d", f[i].file, f[i].line);
        if (f[i].inlined) buf_puts(b, " (inlined)");
        if (f[i].tail_call) buf_puts(b, " (tail call, recovered)");
        buf_printf(b, " (%s+0x%lx)\n", f[i].module != NULL ? f[i].module : "?",
                   (unsigned long)f[i].offset);
    }
}

/* ---- suppressions ----------------------------------------------------- */

static void load_suppressions(void)
{
    if (suppressions_loaded || cw_cfg.suppress_path[0] == '\0') return;
    suppressions_loaded = 1;
    cw_suppressions_load(cw_cfg.suppress_path);
}

static int suppressed(uint32_t id)
{
    if (cw_suppressions_count() == 0) return 0;
    struct cw_frame f[MAX_FRAMES];
    int n = expand_stack(id, f, MAX_FRAMES, NULL);
    return cw_suppressions_match(f, n);
}

/* ---- findings --------------------------------------------------------- */

static struct group *group_for(uint32_t stack, int64_t now)
{
    for (size_t i = 0; i < P->ngroups; i++)
        if (P->groups[i].stack == stack) return &P->groups[i];
    if (cw_grow(&P->groups, &P->groups_cap, P->ngroups, sizeof *P->groups, 16) != 0) return NULL;
    struct group *g = &P->groups[P->ngroups++];
    memset(g, 0, sizeof *g);
    g->stack = stack;
    g->stable_id = stable_stack_id(stack);
    g->number = (int)P->ngroups;
    g->first_ms = now;
    return g;
}

/* Growing: the number held open from this site reached a new high in the last minute. */
static int growing(const struct group *g, int64_t now)
{
    return g->now >= 2 && g->now == g->peak && now - g->peak_ms < 60000;
}

static long open_now(const struct proc *p)
{
    long open = 0;
    for (size_t i = 0; i < p->ngroups; i++) open += p->groups[i].now;
    return open;
}

static int reported_anywhere(uint64_t inode)
{
    for (size_t k = 0; k < nprocs; k++)
        for (size_t i = 0; i < procs[k].nleaks; i++)
            if (procs[k].leaks[i].inode == inode) return 1;
    return 0;
}

struct observed {
    int fd;
    uint32_t seq;
    uint64_t inode;
    uint32_t flags, open_stack, eof_stack;
    int64_t open_ms, eof_ms, fin_ms;
    int opened_by, eof_by, state;
    enum reason reason;
    const char *local, *peer;
    pid_t holder;               /* the process holding it, if not the one it was opened in */
    uint32_t spawn_stack;
    int spawn_kind;
};

/* The current process's descriptors (other than `except`) that hold the socket `inode`: up to
 * max of them in out (which may be NULL); returns how many were found. */
static int fds_of_socket(uint64_t inode, int except, int *out, int max)
{
    int n = 0;
    for (int fd = pnext(0); fd >= 0 && n < max; fd = pnext(fd + 1)) {
        if (fd == except) continue;
        struct cw_slot *s = pslot(fd);
        if (s != NULL && SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire)) == KIND_TCP &&
            atomic_load_explicit(&s->inode, memory_order_relaxed) == inode) {
            if (out != NULL) out[n] = fd;
            n++;
        }
    }
    return n;
}

static const char *role_of(const struct observed *o)
{
    if (o->opened_by == OP_ACCEPT || o->opened_by == OP_ACCEPT4) return "server";
    if (o->flags & SF_CLIENT) return "client";
    return "unknown";
}

/* Text format: each distinct stack is printed in full once per process; later reports point
 * back to it. */
static int text_stack_shown(uint32_t stack)
{
    for (size_t i = 0; i < P->nshown; i++)
        if (P->shown[i] == stack) return 1;
    if (cw_grow(&P->shown, &P->shown_cap, P->nshown, sizeof *P->shown, 32) != 0) return 0;
    P->shown[P->nshown++] = stack;
    return 0;
}

static void report_leak(const struct observed *o, int64_t now)
{
    struct group *g = group_for(o->open_stack, now);
    if (g == NULL) return;
    if (cw_grow(&P->leaks, &P->leaks_cap, P->nleaks, sizeof *P->leaks, 64) != 0) return;
    struct leak *l = &P->leaks[P->nleaks++];
    memset(l, 0, sizeof *l);
    l->fd = o->fd;
    l->seq = o->seq;
    l->inode = o->inode;
    l->gi = (size_t)(g - P->groups);
    l->fin_ms = o->fin_ms;
    l->foreign = o->holder != 0 && o->holder != cw_program_pid();
    l->in_close = o->state == TCPS_CLOSE;
    l->holder = o->holder;
    snprintf(l->local, sizeof l->local, "%s", o->local != NULL ? o->local : "?");
    snprintf(l->peer, sizeof l->peer, "%s", o->peer != NULL ? o->peer : "?");
    g->now++;
    /* before the report is written: a program that reads it and asks closewait_leaks_open()
     * finds it counted */
    atomic_store(&P->area->open_now, open_now(P));
    g->ever++;
    g->last_ms = now;
    if (g->now > g->peak) {
        g->peak = g->now;
        g->peak_ms = now;
    }
    P->total_reported++;
    atomic_store(&P->area->reported, P->total_reported);

    if (silent) return;
    int dups[8], ndups = 0;
    if (!l->foreign) ndups = fds_of_socket(o->inode, o->fd, dups, 8);
    char sid[17];
    snprintf(sid, sizeof sid, "%016llx", (unsigned long long)g->stable_id);
    struct buf b = {0};
    if (cw_cfg.format == CW_FORMAT_JSON) {
        /* Symbolize first, so that the event's time and its ages are taken together. */
        struct buf frames = {0};
        if (o->reason == R_INHERITED) json_frames(&frames, "spawn_stack", o->spawn_stack);
        json_frames(&frames, "open_stack", o->open_stack);
        if (o->flags & SF_EOF) {
            buf_printf(&frames, ",\"eof_by\":\"%s\"", cw_op_name(o->eof_by));
            json_frames(&frames, "eof_stack", o->eof_stack);
        }
        now = cw_now_ms();
        announce();
        json_head(&b, "leak");
        buf_printf(&b, ",\"fd\":%d,\"reason\":\"%s\",\"state\":\"%s\",\"local\":", o->fd,
                   reason_names[o->reason], cw_tcp_state_name(o->state));
        buf_json_str(&b, l->local);
        buf_puts(&b, ",\"peer\":");
        buf_json_str(&b, l->peer);
        buf_printf(&b, ",\"since_fin_ms\":%lld,\"open_age_ms\":%lld,\"opened_by\":\"%s\",\"role\":\"%s\"",
                   (long long)(now - o->fin_ms), (long long)(now - o->open_ms), cw_op_name(o->opened_by),
                   role_of(o));
        buf_printf(&b, ",\"stack_id\":\"%s\",\"site\":%d,\"site_open\":%ld,\"site_ever\":%ld,\"growing\":%s",
                   sid, g->number, g->now, g->ever, growing(g, now) ? "true" : "false");
        if (ndups > 0) {
            buf_puts(&b, ",\"dup_fds\":[");
            for (int i = 0; i < ndups; i++) buf_printf(&b, "%s%d", i ? "," : "", dups[i]);
            buf_puts(&b, "]");
        }
        buf_puts(&b, ",\"exe\":");
        buf_json_str(&b, P->exe);
        if (o->reason == R_INHERITED)
            buf_printf(&b, ",\"holder_pid\":%ld,\"spawned_by\":\"%s\"", (long)o->holder,
                       cw_spawn_kind_name(o->spawn_kind));
        if (frames.p != NULL) buf_put(&b, frames.p, frames.n);
        buf_free(&frames);
        buf_puts(&b, "}\n");
    } else {
        int pid = (int)cw_program_pid();
        double held = (double)(now - o->fin_ms) / 1000.0;
        buf_printf(&b, "==%d==closewait: fd %d held in %s %.1f s after the peer closed (%s)\n", pid,
                   o->fd, cw_tcp_state_name(o->state), held, reason_names[o->reason]);
        buf_printf(&b, "==%d==  %s connection %s %s %s, opened by %s %.1f s ago", pid, role_of(o), l->local,
                   strcmp(role_of(o), "client") == 0 ? "->" : "<-", l->peer, cw_op_name(o->opened_by),
                   (double)(now - o->open_ms) / 1000.0);
        if (ndups > 0) {
            buf_puts(&b, "; also held as fd");
            for (int i = 0; i < ndups; i++) buf_printf(&b, " %d", dups[i]);
        }
        buf_puts(&b, "\n");
        if (!g->printed) {
            g->printed = 1;
            buf_printf(&b, "Socket opened at (open site #%d, stack %s):\n", g->number, sid);
            text_frames(&b, o->open_stack);
        } else {
            buf_printf(&b, "Socket opened at open site #%d (stack %s), shown above: %ld open now, %ld in all%s\n",
                       g->number, sid, g->now, g->ever, growing(g, now) ? ", growing" : "");
        }
        if (o->flags & SF_EOF) {
            if (text_stack_shown(o->eof_stack)) {
                struct cw_frame f[4];
                int nf = expand_stack(o->eof_stack, f, 4, NULL);
                buf_printf(&b, "EOF read by %s in %s", cw_op_name(o->eof_by),
                           nf > 0 && f[0].function != NULL ? f[0].function : "??");
                if (nf > 0 && f[0].file != NULL) buf_printf(&b, " %s:%d", f[0].file, f[0].line);
                buf_puts(&b, ", the same stack as shown above\n");
            } else {
                buf_printf(&b, "EOF read by %s at:\n", cw_op_name(o->eof_by));
                text_frames(&b, o->eof_stack);
            }
        }
        if (o->reason == R_INHERITED) {
            buf_printf(&b, "Held by process %ld, which inherited it through %s at:\n", (long)o->holder,
                       cw_spawn_kind_name(o->spawn_kind));
            text_frames(&b, o->spawn_stack);
        }
        buf_puts(&b, "\n");
    }
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

static void report_closed(const struct leak *l, int64_t now, const char *how)
{
    struct group *g = &P->groups[l->gi];
    g->now--;
    atomic_store(&P->area->open_now, open_now(P));
    char sid[17];
    snprintf(sid, sizeof sid, "%016llx", (unsigned long long)g->stable_id);
    struct buf b = {0};
    if (cw_cfg.format == CW_FORMAT_JSON) {
        announce();
        json_head(&b, "closed_late");
        buf_printf(&b, ",\"fd\":%d,\"stack_id\":\"%s\",\"local\":", l->fd, sid);
        buf_json_str(&b, l->local);
        buf_puts(&b, ",\"peer\":");
        buf_json_str(&b, l->peer);
        buf_printf(&b, ",\"held_ms\":%lld,\"closed_by\":\"%s\"}\n", (long long)(now - l->fin_ms), how);
    } else {
        buf_printf(&b, "==%d==closewait: fd %d (%s <- %s) closed at last, %.1f s after the peer closed (open site #%d)\n\n",
                   (int)cw_program_pid(), l->fd, l->local, l->peer, (double)(now - l->fin_ms) / 1000.0,
                   g->number);
    }
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

static int fd_in_process(pid_t pid, uint64_t inode);


/* Held in a state the dump shows (CLOSE_WAIT, LAST_ACK) */
static int dumped_held(uint64_t inode)
{
    const struct cw_sock *k = cw_dump_find(&dump, inode);
    return k != NULL && (k->state == TCPS_CLOSE_WAIT || k->state == TCPS_LAST_ACK);
}

/* Reported descriptors that are gone now (closed by a hook we saw, or by one we did not). */
static void sweep_leaks(int64_t now)
{
    for (size_t i = 0; i < P->nleaks;) {
        struct leak *l = &P->leaks[i];
        struct cw_slot *s = pslot(l->fd);
        uint32_t seq = s != NULL ? atomic_load_explicit(&s->seq, memory_order_acquire) : 0;
        const char *how = NULL;
        if (l->foreign) {
            if (dump.ok && !dumped_held(l->inode)) how = "holder";
        } else if (seq != l->seq) {
            how = "close";
        } else if (dump.ok && !l->in_close && !dumped_held(l->inode)) {
            how = "unseen";
        }
        if (how == NULL) {
            i++;
            continue;
        }
        report_closed(l, now, how);
        P->leaks[i] = P->leaks[--P->nleaks];
    }
}

/* ---- the scan ---------------------------------------------------------- */

/* The watched process this one was forked from, or NULL. */
static struct proc *parent_proc(void)
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
static int parent_holds(uint64_t inode)
{
    int32_t parent = atomic_load(&P->area->parent);
    if (parent <= 0 || parent > CW_MAX_AREAS) return 0;
    struct cw_area *pa = cw_area_at((unsigned)parent - 1);
    for (size_t k = 0; k < nprocs; k++) {
        if (procs[k].area != pa || procs[k].untrusted) continue;
        struct proc *saved = P;
        P = &procs[k];
        int held = fds_of_socket(inode, -1, NULL, 1) > 0;
        P = saved;
        return held;
    }
    return 0;
}

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

static void adopt(int fd, struct cw_slot *s, uint32_t seq, uint64_t inode, int64_t now)
{
    const struct cw_sock *k = cw_dump_find(&dump, inode);
    char local[64] = "?", peer[64] = "?";
    if (k != NULL) {
        cw_sock_endpoint(k, 0, local, sizeof local);
        cw_sock_endpoint(k, 1, peer, sizeof peer);
    }
    struct observed o = {
        .local = local,
        .peer = peer,
        .fd = fd,
        .seq = seq,
        .inode = inode,
        .open_stack = atomic_load_explicit(&s->open_stack, memory_order_relaxed),
        .open_ms = atomic_load_explicit(&s->open_ms, memory_order_relaxed),
        .fin_ms = s->w_fin_ms != 0 ? s->w_fin_ms : now,
        .state = k != NULL ? k->state : TCPS_CLOSE_WAIT,
    };
    silent = 1;
    report_leak(&o, now);
    silent = 0;
}

static void examine(int fd, struct cw_slot *s, int64_t now, int second_look)
{
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (SEQ_KIND(seq) != KIND_TCP) return;
    if (s->w_seq != seq) {
        s->w_seq = seq;
        s->w_flags = 0;
        s->w_fin_ms = 0;
    }
    uint64_t inode = atomic_load_explicit(&s->inode, memory_order_relaxed);
    if (s->w_flags & (WF_REPORTED | WF_SUPPRESSED)) {
        if (adopting && (s->w_flags & WF_REPORTED) && inode != 0 && !reported_anywhere(inode) && dumped_held(inode))
            adopt(fd, s, seq, inode, now);
        return;
    }
    if (inode == 0) return;
    uint32_t flags = atomic_load_explicit(&s->flags, memory_order_acquire);
    const struct cw_sock *k = cw_dump_find(&dump, inode);
    int state = k != NULL ? k->state : 0;
    if (k != NULL && (flags & (SF_EOF | SF_SHUT_WR))) keep_ends(fd, seq, k);
    if (k != NULL && (state == TCPS_CLOSE_WAIT || state == TCPS_LAST_ACK)) {
        if (s->w_fin_ms == 0) s->w_fin_ms = now;
    } else if (k == NULL && (flags & (SF_EOF | SF_SHUT_WR)) && !(s->w_flags & WF_ESTABLISHED)) {
        /* Not being torn down by the kernel's account, yet EOF read or shut down: CLOSE, or
         * established (its own SHUT_RD) -- asked below. */
        if (!second_look) {
            if (s->w_fin_ms == 0) s->w_fin_ms = now;
            int64_t since = s->w_fin_ms;
            if (flags & SF_EOF) {
                int64_t eof = atomic_load_explicit(&s->eof_ms, memory_order_relaxed);
                if (eof != 0 && eof < since) since = eof;
            }
            if (now - since >= cw_cfg.grace_ms && cw_grow(&pending, &pending_cap, npending, sizeof *pending, 16) == 0)
                pending[npending++] = (struct pending_close){P, fd, seq};
            return;
        }
        state = TCPS_CLOSE;
    } else {
        /* Established, or being torn down on our side only (we sent our FIN first). */
        s->w_fin_ms = 0;
        if (!(flags & SF_EOF)) return;
        if (k != NULL) return;
    }
    int64_t fin = s->w_fin_ms;
    if (flags & SF_EOF) {
        int64_t eof = atomic_load_explicit(&s->eof_ms, memory_order_relaxed);
        if (eof != 0 && (fin == 0 || eof < fin)) fin = eof;
    }
    if (fin == 0 || now - fin < cw_cfg.grace_ms) return;
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
    if (inherited && parent_holds(inode)) return;
    struct proc *parent = inherited ? parent_proc() : NULL;
    /* The same life still, now that the kernel has been asked (the program may close it this
     * very moment). */
    if (atomic_load_explicit(&s->seq, memory_order_acquire) != seq) return;
    /* A dup of a socket already reported: the report named this fd already. */
    if (reported_anywhere(inode)) {
        s->w_flags |= WF_REPORTED;
        return;
    }
    char local[64] = "?", peer[64] = "?";
    if (k != NULL) {
        cw_sock_endpoint(k, 0, local, sizeof local);
        cw_sock_endpoint(k, 1, peer, sizeof peer);
    } else {
        cached_ends(fd, seq, local, peer, sizeof peer);
    }
    struct observed o = {
        .local = local,
        .peer = peer,
        .fd = fd,
        .seq = seq,
        .inode = inode,
        .flags = flags,
        .open_stack = atomic_load_explicit(&s->open_stack, memory_order_relaxed),
        .eof_stack = atomic_load_explicit(&s->eof_stack, memory_order_relaxed),
        .open_ms = atomic_load_explicit(&s->open_ms, memory_order_relaxed),
        .eof_ms = atomic_load_explicit(&s->eof_ms, memory_order_relaxed),
        .fin_ms = fin,
        .opened_by = atomic_load_explicit(&s->opened_by, memory_order_relaxed),
        .eof_by = atomic_load_explicit(&s->eof_by, memory_order_relaxed),
        .state = state,
        .reason = inherited            ? R_INHERITED
                  : (flags & SF_SHUT_WR) ? R_SHUTDOWN_NOT_CLOSED
                  : (flags & SF_EOF)     ? R_EOF_NOT_CLOSED
                                         : R_PEER_CLOSED_UNREAD,
        .holder = inherited ? cw_program_pid() : 0,
        .spawn_stack = inherited ? atomic_load(&P->area->fork_stack) : 0,
        .spawn_kind = SPAWN_FORK,
    };
    if (o.open_ms > now || o.open_ms < 0) o.open_ms = now;
    struct proc *holder = P;
    if (parent != NULL) {
        P = parent;
        cw_set_current_area(parent->area);
        o.spawn_kind = SPAWN_FORK;
    }
    if (suppressed(o.open_stack)) {
        s->w_flags |= WF_SUPPRESSED;
        P->total_suppressed++;
    } else {
        s->w_flags |= WF_REPORTED;
        atomic_fetch_or_explicit(&s->flags, SF_REPORTED, memory_order_relaxed);
        report_leak(&o, now);
    }
    P = holder;
    cw_set_current_area(holder->area);
}

/* The pending sockets: established ones are not held; the others sit in CLOSE. */
static void settle_pending(int64_t now)
{
    if (npending == 0) return;
    if (cw_dump_take(&established, 1u << TCPS_ESTABLISHED | 1u << 2 | 1u << 3) == 0) {
        for (size_t i = 0; i < npending; i++) {
            P = pending[i].p;
            struct cw_slot *s = pslot(pending[i].fd);
            if (s == NULL || atomic_load_explicit(&s->seq, memory_order_acquire) != pending[i].seq) continue;
            if (cw_dump_find(&established, atomic_load_explicit(&s->inode, memory_order_relaxed)) != NULL) {
                s->w_flags |= WF_ESTABLISHED;
                s->w_fin_ms = 0;
                continue;
            }
            cw_set_current_area(P->area);
            examine(pending[i].fd, s, now, 1);
        }
    }
    npending = 0;
}

static void check_crossed(int64_t now);
static void check_listener(int fd, struct cw_slot *s, uint32_t seq, int64_t now);

/* Does some live watched process descend from this one through fork? (It holds what it
 * inherited in a table we read.) */
static int watched_pid(pid_t pid)
{
    for (size_t k = 0; k < nprocs; k++)
        if (procs[k].pid == pid && !procs[k].untrusted) return 1;
    return 0;
}

static void scan_proc(int64_t now)
{
    cw_set_current_area(P->area);
    if (!atomic_load_explicit(&P->area->any_tcp, memory_order_relaxed)) return;
    for (int fd = pnext(0); fd >= 0; fd = pnext(fd + 1)) {
        struct cw_slot *s = pslot(fd);
        if (s == NULL) continue;
        uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (SEQ_KIND(seq) == KIND_TCP) examine(fd, s, now, 0);
        else if (SEQ_KIND(seq) == KIND_LISTEN) check_listener(fd, s, seq, now);
    }
}

static int any_tcp(void)
{
    for (size_t k = 0; k < nprocs; k++)
        if (!procs[k].untrusted && atomic_load_explicit(&procs[k].area->any_tcp, memory_order_relaxed)) return 1;
    return 0;
}

/* One look at every watched process. */
static void tick(void)
{
    if (!any_tcp()) return;
    int64_t now = cw_now_ms();
    uint32_t mask = 1u << TCPS_CLOSE_WAIT | 1u << TCPS_LAST_ACK | 1u << TCPS_FIN_WAIT1 | 1u << TCPS_FIN_WAIT2 |
                    1u << TCPS_CLOSING;
    if (listeners_seen) mask |= 1u << TCPS_LISTEN;
    if (cw_dump_take(&dump, mask) != 0) {
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
        check_crossed(now);
        /* A fresh clock: reporting may have taken a while, and the close may be that recent. */
        sweep_leaks(cw_now_ms());
        atomic_store(&P->area->open_now, open_now(P));
    }
    cw_set_current_area(NULL);
    P = NULL;
    /* libdw keeps the files it read open: the names are cached by pc already, so let go of them
     * until the next report. */
    cw_symbolize_release();
}

/* ---- sockets that crossed into children that exec'd ---------------------- */

/* Does process pid hold socket inode?  Returns its fd there, or -1 (also when /proc/PID/fd may
 * not be read: then the spawn record's pid is all there is to say). */
static int fd_in_process(pid_t pid, uint64_t inode)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/fd", (long)pid);
    DIR *d = opendir(dir);
    if (d == NULL) return -1;
    char want[64];
    int wlen = snprintf(want, sizeof want, "socket:[%llu]", (unsigned long long)inode);
    int found = -1;
    struct dirent *e;
    while (found < 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[384], target[64];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(path, target, sizeof target);
        if (n == wlen && memcmp(target, want, (size_t)n) == 0) found = atoi(e->d_name);
    }
    closedir(d);
    return found;
}

/* Who holds the socket, when libc did not tell us whom it spawned (system, popen, a daemonizing
 * grandchild): a walk of /proc, where /proc lets us look; 0 if none is found. */
static pid_t find_holder(uint64_t inode, int *fd)
{
    DIR *d = opendir("/proc");
    if (d == NULL) return 0;
    pid_t holder = 0;
    struct dirent *e;
    while (holder == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid == getpid() || watched_pid(pid)) continue;
        if ((*fd = fd_in_process(pid, inode)) >= 0) holder = pid;
    }
    closedir(d);
    return holder;
}

static void check_crossed(int64_t now)
{
    struct cw_area *a = P->area;
    for (int i = 0; i < CW_MAX_SPAWNS; i++) {
        struct cw_spawn *r = &a->spawns[i];
        int expected = 2;
        /* hold the record (state 1) so that a spawn on another thread does not reuse it */
        if (!atomic_compare_exchange_strong(&r->state, &expected, 1)) continue;
        size_t nsocks = r->nsocks < CW_SPAWN_SOCKS ? r->nsocks : CW_SPAWN_SOCKS;
        pid_t child = r->child;
        for (size_t k = 0; k < nsocks; k++) {
            struct cw_crossed *c = &a->crossed[i][k];
            if (c->w_done) continue;
            if (!dumped_held(c->inode)) {
                c->w_fin_ms = 0;
                continue;
            }
            if (c->w_fin_ms == 0) c->w_fin_ms = now;
            if (now - c->w_fin_ms < cw_cfg.grace_ms) continue;
            /* Ours still: our own report covers it; a forked child we watch: its own does. */
            if (fds_of_socket(c->inode, -1, NULL, 1) > 0) continue;
            if (child > 0 && watched_pid(child)) continue;
            c->w_done = 1;
            if (reported_anywhere(c->inode)) continue;
            int child_fd = -1;
            pid_t holder = child > 0 ? child : find_holder(c->inode, &child_fd);
            if (child > 0) child_fd = fd_in_process(child, c->inode);
            const struct cw_sock *ks = cw_dump_find(&dump, c->inode);
            char local[64] = "?", peer[64] = "?";
            if (ks != NULL) {
                cw_sock_endpoint(ks, 0, local, sizeof local);
                cw_sock_endpoint(ks, 1, peer, sizeof peer);
            }
            struct observed o = {
                .fd = child_fd,
                .inode = c->inode,
                .open_stack = c->open_stack,
                .open_ms = c->open_ms,
                .fin_ms = c->w_fin_ms,
                .opened_by = c->opened_by,
                .state = ks != NULL ? ks->state : TCPS_CLOSE_WAIT,
                .reason = R_INHERITED,
                .local = local,
                .peer = peer,
                .holder = holder > 0 ? holder : -1,
                .spawn_stack = r->stack,
                .spawn_kind = r->kind,
            };
            if (suppressed(o.open_stack)) {
                P->total_suppressed++;
                continue;
            }
            report_leak(&o, now);
        }
        atomic_store(&r->state, 2);
    }
}

/* ---- listeners: the accept queue ---------------------------------------- */

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
    int backlog = atomic_load_explicit(&s->aux, memory_order_relaxed);
    struct buf b = {0};
    if (cw_cfg.format == CW_FORMAT_JSON) {
        announce();
        json_head(&b, "backlog");
        buf_printf(&b, ",\"reason\":\"%s\",\"fd\":%d,\"listen\":", reason, l->fd);
        buf_json_str(&b, l->addr);
        buf_printf(&b, ",\"backlog\":%d,\"accepted_dead\":%u,\"queued_dead\":%u,\"queue_len\":%u,\"queue_limit\":%u",
                   backlog, dead, queued, qlen, qlimit);
        buf_printf(&b, ",\"stack_id\":\"%016llx\",\"exe\":", (unsigned long long)stable_stack_id(stack));
        buf_json_str(&b, P->exe);
        json_frames(&b, "listen_stack", stack);
        buf_puts(&b, "}\n");
    } else {
        int pid = (int)cw_program_pid();
        if (strcmp(reason, "accept_queue_full") == 0)
            buf_printf(&b, "==%d==closewait: listener %s (backlog %d): accept queue full (%u waiting, limit %u); "
                           "the kernel is dropping new connections' SYNs and clients retry (accept_queue_full)\n",
                       pid, l->addr, backlog, qlen, qlimit);
        else
            buf_printf(&b, "==%d==closewait: listener %s (backlog %d): %u connection(s) accepted after the client "
                           "had given up, %u dead in the accept queue now (peer_closed_in_backlog)\n",
                       pid, l->addr, backlog, dead, queued);
        buf_puts(&b, "Listening socket set up at:\n");
        text_frames(&b, stack);
        buf_puts(&b, "\n");
    }
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

static void check_listener(int fd, struct cw_slot *s, uint32_t seq, int64_t now)
{
    listeners_seen = 1;
    /* The process that made it watches its listeners, while it is there. */
    if (atomic_load_explicit(&s->fork_gen, memory_order_relaxed) !=
            atomic_load_explicit(&P->area->fork_gen, memory_order_relaxed) &&
        parent_watched())
        return;
    uint64_t inode = atomic_load_explicit(&s->inode, memory_order_relaxed);
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
    /* While connections wait, accept() checks each one it returns. */
    if (qlen > 0 || queued > 0)
        atomic_fetch_or_explicit(&s->flags, SF_BACKLOGGED, memory_order_relaxed);
    else
        atomic_fetch_and_explicit(&s->flags, ~SF_BACKLOGGED, memory_order_relaxed);
    uint32_t dead = atomic_load_explicit(&s->eof_stack, memory_order_relaxed);

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
        }
    } else {
        l->full_since = 0;
        l->full_reported = 0;
    }
}

/* ---- summaries ---------------------------------------------------------- */

static void write_summary(const char *why)
{
    int64_t now = cw_now_ms();
    long open = 0;
    size_t sites = 0;
    for (size_t i = 0; i < P->ngroups; i++) {
        open += P->groups[i].now;
        if (P->groups[i].now > 0) sites++;
    }
    long dropped = cw_sink_dropped();
    struct buf b = {0};
    if (cw_cfg.format == CW_FORMAT_JSON) {
        if (P->total_reported == 0 && P->total_suppressed == 0 && strcmp(why, "exit") == 0) return;
        announce();
        json_head(&b, "summary");
        buf_printf(&b, ",\"why\":\"%s\",\"leaks_open\":%ld,\"leaks_total\":%ld,\"suppressed\":%ld",
                   why, open, P->total_reported, P->total_suppressed);
        if (dropped > 0) buf_printf(&b, ",\"reports_dropped\":%ld", dropped);
        buf_puts(&b, ",\"findings\":[");
        for (size_t i = 0; i < P->ngroups; i++)
            buf_printf(&b, "%s{\"stack_id\":\"%016llx\",\"site\":%d,\"count_now\":%ld,\"count_ever\":%ld,\"growing\":%s}",
                       i ? "," : "", (unsigned long long)P->groups[i].stable_id, P->groups[i].number,
                       P->groups[i].now, P->groups[i].ever, growing(&P->groups[i], now) ? "true" : "false");
        buf_puts(&b, "]}\n");
    } else {
        if (P->total_reported == 0 && P->total_suppressed == 0) {
            if (strcmp(why, "exit") == 0) return;
            buf_printf(&b, "==%d==closewait: no socket held in CLOSE_WAIT so far\n", (int)cw_program_pid());
        } else {
            int pid = (int)cw_program_pid();
            buf_printf(&b, "==%d==closewait: findings (%s), by open site:\n", pid, why);
            /* most open first, then most ever */
            size_t *order = calloc(P->ngroups ? P->ngroups : 1, sizeof *order);
            if (order != NULL) {
                for (size_t i = 0; i < P->ngroups; i++) order[i] = i;
                for (size_t i = 1; i < P->ngroups; i++)
                    for (size_t j = i; j > 0; j--) {
                        const struct group *a = &P->groups[order[j - 1]], *c = &P->groups[order[j]];
                        if (a->now > c->now || (a->now == c->now && a->ever >= c->ever)) break;
                        size_t t = order[j - 1];
                        order[j - 1] = order[j];
                        order[j] = t;
                    }
                for (size_t k = 0; k < P->ngroups; k++) {
                    struct group *g = &P->groups[order[k]];
                    buf_printf(&b, "Open site #%d (stack %016llx): %ld socket(s) held now, %ld in all%s\n",
                               g->number, (unsigned long long)g->stable_id, g->now, g->ever,
                               growing(g, now) ? ", growing" : "");
                    text_frames(&b, g->stack);
                }
            }
            free(order);
            buf_printf(&b, "SUMMARY: closewait: %ld socket(s) held in CLOSE_WAIT from %zu open site(s); %ld reported in all",
                       open, sites, P->total_reported);
            if (P->total_suppressed) buf_printf(&b, ", %ld suppressed", P->total_suppressed);
            if (dropped > 0) buf_printf(&b, "; %ld report(s) could not be written", dropped);
            buf_puts(&b, ".\n");
        }
    }
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

/* ---- the watched processes ------------------------------------------------ */

static void proc_free(struct proc *p)
{
    free(p->groups);
    free(p->leaks);
    free(p->listeners);
    free(p->shown);
    if (p->pidfd >= 0) close(p->pidfd);
}

static struct proc *proc_add(struct cw_area *a, pid_t pid)
{
    if (cw_grow(&procs, &procs_cap, nprocs, sizeof *procs, 8) != 0) return NULL;
    struct proc *p = &procs[nprocs++];
    memset(p, 0, sizeof *p);
    p->area = a;
    p->pid = pid;
    p->pidfd = thread_mode ? -1 : (int)syscall(SYS_pidfd_open, pid, 0);
    load_identity(p);
    return p;
}

static int proc_gone(const struct proc *p)
{
    if (p->pidfd < 0) return !thread_mode && kill(p->pid, 0) != 0 && errno == ESRCH;
    struct pollfd pfd = {p->pidfd, POLLIN, 0};
    return poll(&pfd, 1, 0) > 0;
}

/* Its real, effective, saved and filesystem ids are ours?  (A process that changed them
 * through our hooks has left the region; one that did it otherwise is not read any more.) */
static int proc_same_credentials(const struct proc *p)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)p->pid);
    FILE *f = fopen(path, "re");
    if (f == NULL) return 1; /* gone: the pidfd tells */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    uid_t r, e, s;
    gid_t gr, ge, gs;
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    unsigned long u[4], g[4];
    const char *uid = strstr(buf, "\nUid:"), *gid = strstr(buf, "\nGid:");
    if (uid == NULL || gid == NULL || sscanf(uid, "\nUid: %lu %lu %lu %lu", &u[0], &u[1], &u[2], &u[3]) != 4 ||
        sscanf(gid, "\nGid: %lu %lu %lu %lu", &g[0], &g[1], &g[2], &g[3]) != 4)
        return 1;
    return u[1] == e && u[0] == r && g[1] == ge && g[0] == gr;
}

/* The areas of the region against what we watch: new processes (forked children), processes
 * gone, exec'd, or that left; areas of forks that never ran. */
static void sync_procs(int64_t now)
{
    for (size_t k = 0; k < nprocs;) {
        struct proc *p = &procs[k];
        uint32_t st = atomic_load(&p->area->state);
        int drop = 0;
        if (st == AREA_LEFT || st == AREA_FREE || st == AREA_EXITED || atomic_load(&p->area->pid) != p->pid) {
            drop = 1;
        } else if (st == AREA_EXEC) {
            /* A failed exec puts it back at once; still there a tick later, it went through. */
            if (p->exec_since == 0) p->exec_since = now;
            else if (now - p->exec_since >= cw_cfg.interval_ms) drop = 1;
        } else {
            p->exec_since = 0;
        }
        if (!drop && proc_gone(p)) drop = 1;
        if (!drop && !p->untrusted && !thread_mode && ++p->ticks % 8 == 1 && !proc_same_credentials(p)) {
            p->untrusted = 1;
            char pid[32];
            snprintf(pid, sizeof pid, "%ld", (long)p->pid);
            cw_warn("process ", pid, " changed its credentials behind the library's back: its sockets are not watched any more");
        }
        if (!drop) {
            k++;
            continue;
        }
        if (!thread_mode) cw_area_release(p->area);
        proc_free(p);
        procs[k] = procs[--nprocs];
    }
    if (thread_mode) {
        if (nprocs == 0 && cw_me != NULL) proc_add(cw_me, getpid());
        return;
    }
    for (unsigned i = 0; i < CW_MAX_AREAS; i++) {
        if (!(atomic_load(&cw_sh->area_map[i / 64]) & (1ull << (i % 64)))) continue;
        struct cw_area *a = cw_area_at(i);
        uint32_t st = atomic_load(&a->state);
        if (st == AREA_FORKING) {
            /* A fork that failed where no hook of ours saw it fail. */
            int64_t at = atomic_load(&a->forked_ms);
            if (at > 0 && now - at > 5000) cw_area_release(a);
            continue;
        }
        if (st == AREA_LEFT || st == AREA_EXITED) {
            int known = 0;
            for (size_t k = 0; k < nprocs; k++) known |= procs[k].area == a;
            if (!known) cw_area_release(a);
            continue;
        }
        if (st != AREA_LIVE) continue;
        pid_t pid = (pid_t)atomic_load(&a->pid);
        if (pid <= 0) continue;
        int known = 0;
        for (size_t k = 0; k < nprocs && !known; k++) known = procs[k].area == a;
        if (known) continue;
        struct proc *p = proc_add(a, pid);
        if (p != NULL && p->pidfd < 0 && errno == ESRCH) {
            cw_area_release(a);
            proc_free(p);
            nprocs--;
        }
    }
}

static int forking_areas(void)
{
    for (unsigned i = 0; i < CW_MAX_AREAS; i++) {
        if (!(atomic_load(&cw_sh->area_map[i / 64]) & (1ull << (i % 64)))) continue;
        if (atomic_load(&cw_area_at(i)->state) == AREA_FORKING) return 1;
    }
    return 0;
}

/* A request of a process (exit summary, closewait_dump(), the report signal): a fresh look, the
 * summary, then the answer it waits for. */
static int answer(struct proc *p, _Atomic uint32_t *req, _Atomic uint32_t *done, const char *why)
{
    uint32_t r = atomic_load(req);
    if (r == atomic_load(done)) return 0;
    tick();
    P = p;
    cw_set_current_area(p->area);
    write_summary(why);
    atomic_store(&p->area->open_now, open_now(p));
    cw_set_current_area(NULL);
    P = NULL;
    atomic_store(done, r);
    cw_futex_wake(done);
    return 1;
}

static void answer_requests(void)
{
    for (size_t k = 0; k < nprocs; k++) {
        struct proc *p = &procs[k];
        if (p->untrusted) continue;
        answer(p, &p->area->dump_req, &p->area->dump_done, "on request");
        if (answer(p, &p->area->exit_req, &p->area->exit_done, "exit")) atomic_store(&p->area->state, AREA_EXITED);
    }
}

static int requests_pending(void)
{
    for (size_t k = 0; k < nprocs; k++) {
        struct cw_area *a = procs[k].area;
        if (atomic_load(&a->dump_req) != atomic_load(&a->dump_done) ||
            atomic_load(&a->exit_req) != atomic_load(&a->exit_done))
            return 1;
    }
    return 0;
}

/* The watcher process keeps its copy of the program's stderr while a watched process still has
 * it as its own. */
static void hold_stderr_if_needed(void)
{
    int needed = 0;
    for (size_t k = 0; k < nprocs && !needed; k++) needed = cw_sink_holds_stderr_of(procs[k].area);
    cw_sink_stderr_hold(needed);
}

/* The loop: thread or process, one way. */
static void watch(void)
{
    int64_t next_tick = cw_now_ms() + cw_cfg.interval_ms;
    for (;;) {
        uint32_t bell = atomic_load(&cw_sh->doorbell);
        int64_t now = cw_now_ms();
        int wait_ms = next_tick > now ? (int)(next_tick - now) : 0;
        if (wait_ms > 0 && !requests_pending() && !atomic_load(&cw_sh->quit)) cw_futex_wait(&cw_sh->doorbell, bell, wait_ms);
        if (thread_mode && !atomic_load(&running)) break;
        if (!thread_mode && atomic_load(&cw_sh->quit)) break;
        now = cw_now_ms();
        atomic_store(&cw_sh->watcher_tick_ms, now);
        pthread_mutex_lock(&tick_lock);
        sync_procs(now);
        if (!thread_mode && nprocs == 0 && !forking_areas()) {
            pthread_mutex_unlock(&tick_lock);
            break; /* every process of the tree is gone */
        }
        answer_requests();
        if (now >= next_tick) {
            tick();
            next_tick = cw_now_ms() + cw_cfg.interval_ms;
        }
        pthread_mutex_unlock(&tick_lock);
        if (!thread_mode) hold_stderr_if_needed();
    }
}

/* ---- thread mode ---------------------------------------------------------- */

static void *watcher_main(void *arg)
{
    (void)arg;
    cw_in_lib = 1;
    cw_watcher_private_table();
    load_suppressions();
    watch();
    atomic_store(&thread_done, 1);
    cw_futex_wake((_Atomic uint32_t *)&thread_done);
    return NULL;
}

static void start_thread(void)
{
    thread_mode = 1;
    sigset_t all, old;
    sigfillset(&all);
    /* The thread inherits this mask: the program's signals must never land on it. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_store(&running, 1);
    atomic_store(&thread_done, 0);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* libdw recurses through DWARF; sanitizers take their share of a stack too */
    pthread_attr_setstacksize(&attr, (size_t)2 * 1024 * 1024);
    pthread_t thread;
    if (pthread_create(&thread, &attr, watcher_main, NULL) != 0) {
        atomic_store(&running, 0);
        cw_warn("cannot start the watcher thread; ", "only exit summaries will be written", NULL);
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void stop_thread(void)
{
    if (!atomic_exchange(&running, 0)) return;
    cw_doorbell();
    /* Bounded: a thread stuck in a write must not hold the program's exit. */
    for (int i = 0; i < 100 && !atomic_load(&thread_done); i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- starting ------------------------------------------------------------- */

/* CLOSEWAIT_WATCHER=process (default): a process of its own for the whole tree; =thread: a
 * thread of each process (glibc then runs the program's calls on its multi-threaded paths). */
static int process_wanted = 1;
/* A process that never makes a TCP socket (a shell, a compiler under an inherited LD_PRELOAD)
 * never gets a watcher: it starts with the first one, in the hook that makes it. */
static _Atomic int watcher_pending;
static int replaced_said;
static int started_watcher; /* this process started the tree's watcher */

/* An orphan is re-parented to the nearest subreaper or to the namespace's init: if that is the
 * program itself, a watcher process would become its child after all (seen by its wait()). */
static int orphans_come_back(void)
{
    int subreaper = 0;
    return getpid() == 1 || (prctl(PR_GET_CHILD_SUBREAPER, (unsigned long)&subreaper, 0, 0, 0) == 0 && subreaper);
}

static void start_watching_with(int wait, int logfd)
{
    if (cw_sh == NULL || cw_me == NULL) return;
    if (orphans_come_back()) atomic_store(&cw_sh->thread_only, 1);
    if (process_wanted && cw_region_is_shared() && !atomic_load(&cw_sh->thread_only)) {
        if (cw_pids_all_but_spent()) {
            /* Every pid is the program's now: try again with the next socket. */
            atomic_store(&watcher_pending, 1);
            return;
        }
        if (cw_watcher_process_start(wait, logfd) == 0) {
            started_watcher = 1;
            return;
        }
        if (cw_sh != NULL && wait)
            cw_warn("the watcher process could not start (", cw_sh->watcher_error, "); watching from a thread");
    }
    if (!atomic_load(&running)) start_thread();
}

static void start_watching(int wait)
{
    start_watching_with(wait, -1);
}

void cw_watcher_first_tcp(void)
{
    if (!atomic_exchange(&watcher_pending, 0)) return;
    int saved = errno;
    cw_in_lib++;
    start_watching(1);
    cw_in_lib--;
    errno = saved;
}

void cw_watcher_check(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL || thread_mode || !process_wanted || cw_in_watcher_process) return;
    if (atomic_load(&watcher_pending)) {
        cw_watcher_first_tcp();
        return;
    }
    uint32_t st = atomic_load_explicit(&sh->watcher_state, memory_order_relaxed);
    if (st == CW_WATCHER_NONE || cw_watcher_process_alive() || atomic_load(&sh->quit)) return;
    /* It died.  Said once; a new one takes over (a region of our own for it). */
    int saved = errno;
    cw_in_lib++;
    if (!replaced_said) {
        replaced_said = 1;
        char pid[32];
        snprintf(pid, sizeof pid, "%ld", (long)atomic_load(&sh->watcher_pid));
        cw_warn("the watcher process (pid ", pid, ") is gone; starting another");
    }
    /* The reports it made are made again by the new one: its findings died with it. */
    atomic_store(&sh->watcher_state, CW_WATCHER_NONE);
    start_watching(0);
    cw_in_lib--;
    errno = saved;
}

static void on_report_signal(int sig)
{
    (void)sig;
    struct cw_area *me = cw_me;
    if (me == NULL) return;
    /* Async-signal-safe: a word and a wake. */
    atomic_fetch_add(&me->dump_req, 1);
    cw_doorbell();
}

void cw_watcher_start(void)
{
    const char *mode = getenv("CLOSEWAIT_WATCH");
    if (mode != NULL && strcmp(mode, "sock_diag") != 0)
        cw_warn("CLOSEWAIT_WATCH", ": only sock_diag remains (no permission over the program needed); using ", "sock_diag");
    const char *where = getenv("CLOSEWAIT_WATCHER");
    if (where != NULL) {
        if (strcmp(where, "thread") == 0) process_wanted = 0;
        else if (strcmp(where, "process") != 0)
            cw_warn("CLOSEWAIT_WATCHER", ": invalid value, expected process or thread; using ", "process");
    }
    if (cw_me != NULL) {
        cw_modules_publish();
        cw_sink_publish_stderr();
    }
    if (cw_cfg.report_signal != 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_report_signal;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(cw_cfg.report_signal, &sa, NULL);
    }
    if (!process_wanted) {
        if (cw_sh != NULL) atomic_store(&cw_sh->thread_only, 1);
        load_suppressions();
    }
    atomic_store(&watcher_pending, 1);
}

void cw_watcher_after_fork_child(void)
{
    /* The child's findings are the watcher's business; a watcher thread did not come along. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&tick_lock, &fresh, sizeof fresh);
    atomic_store(&running, 0);
    for (size_t k = 0; k < nprocs; k++) proc_free(&procs[k]);
    nprocs = 0;
    P = NULL;
    if (cw_me == NULL) return;
    /* A process watcher serves the child already, through its area. */
    if (!thread_mode) {
        if (atomic_load(&watcher_pending) == 0 && !cw_watcher_process_alive()) atomic_store(&watcher_pending, 1);
        return;
    }
    if (!atomic_load(&cw_me->any_tcp)) {
        atomic_store(&watcher_pending, 1); /* as at start: with the first TCP socket */
        return;
    }
    start_thread();
}

void cw_watcher_credentials_changed(int logfd, int start_now)
{
    int saved = errno;
    if (cw_sh != NULL && cw_me != NULL && !cw_in_watcher_process && !thread_mode) {
        cw_in_lib++;
        /* A region of our own, and a watcher of our own credentials for it.  The old watcher
         * forgets us (our area there is marked as left). */
        if (cw_region_leave() == 0) {
            atomic_store(&watcher_pending, 0);
            /* Now, if there are sockets to watch, or a log only the old credentials could open
             * (a daemon that drops privileges before it listens). */
            if (start_now && (atomic_load(&cw_me->any_tcp) || logfd >= 0)) start_watching_with(0, logfd);
            else atomic_store(&watcher_pending, 1);
        }
        cw_in_lib--;
    }
    /* the thread changed with the process */
    if (logfd >= 0) close(logfd);
    errno = saved;
}

/* Does this process have anything the exit summary must say?  Findings, or a socket the peer
 * closed before we did. */
static int exit_worth_asking(void)
{
    struct cw_area *me = cw_me;
    if (atomic_load(&me->reported) > 0) return 1;
    if (!atomic_load(&me->any_tcp)) return 0;
    for (int fd = cw_table_next(0); fd >= 0; fd = cw_table_next(fd + 1)) {
        struct cw_slot *s = cw_slot_peek(fd);
        if (s == NULL || SEQ_KIND(atomic_load(&s->seq)) != KIND_TCP) continue;
        if (s->w_fin_ms != 0 || (atomic_load(&s->flags) & (SF_EOF | SF_SHUT_WR))) return 1;
    }
    return 0;
}

/* This process watches itself for a last look: the watcher cannot (gone, stopped) or never
 * existed (a thread). */
static void watch_here_once(const char *why)
{
    pthread_mutex_lock(&tick_lock);
    int was_thread = thread_mode;
    thread_mode = 1;
    if (nprocs == 0 || procs[0].area != cw_me) {
        for (size_t k = 0; k < nprocs; k++) proc_free(&procs[k]);
        nprocs = 0;
        proc_add(cw_me, getpid());
    }
    load_suppressions();
    adopting = 1;
    tick();
    P = &procs[0];
    cw_set_current_area(NULL);
    write_summary(why);
    long open = open_now(P);
    P = NULL;
    thread_mode = was_thread;
    pthread_mutex_unlock(&tick_lock);
    if (open > 0 && cw_cfg.exitcode >= 0) {
        fflush(NULL);
        _exit(cw_cfg.exitcode);
    }
}

void cw_watcher_at_exit(void)
{
    struct cw_area *me = cw_me;
    if (me == NULL || cw_sh == NULL) return;
    if (atomic_load(&watcher_pending) && !atomic_load(&me->any_tcp)) return; /* no TCP socket ever */
    if (thread_mode) {
        stop_thread();
        watch_here_once("exit");
        return;
    }
    int asked = 0;
    if (exit_worth_asking()) {
        if (cw_watcher_request(&me->exit_req, &me->exit_done, 1000) == 0) {
            asked = 1;
        } else if (atomic_load(&cw_sh->quit)) {
            /* It gave its pid to the program's fork: this process looks for itself. */
            atomic_store(&me->state, AREA_EXITED);
            watch_here_once("exit");
            return;
        } else if (atomic_load(&cw_sh->watcher_state) != CW_WATCHER_NONE) {
            /* Stopped, killed or stuck: at most a second of the program's exit, then we look. */
            cw_warn("the watcher process did not answer; ", "the exit summary is written by the program", NULL);
            atomic_store(&me->state, AREA_EXITED);
            cw_doorbell();
            watch_here_once("exit");
            return;
        }
    }
    if (!asked) {
        atomic_store(&me->state, AREA_EXITED);
        /* The process that started the watcher holds the stderr it was handed, most likely: let
         * it go now, not at the next look (a caller may be waiting for that pipe to close).  A
         * fork-per-connection server's children do not ring for each exit. */
        if (started_watcher) cw_doorbell();
    }
    long open = (long)atomic_load(&me->open_now);
    if (open > 0 && cw_cfg.exitcode >= 0) {
        fflush(NULL);
        _exit(cw_cfg.exitcode);
    }
}

/* ---- the watcher process's side --------------------------------------------- */

/* A watcher that takes over from a dead one: its findings died with it; what it reported and
 * is still held is counted again, not written again. */
static void forget_previous_watcher(void)
{
    for (unsigned i = 0; i < CW_MAX_AREAS; i++) {
        if (!(atomic_load(&cw_sh->area_map[i / 64]) & (1ull << (i % 64)))) continue;
        struct cw_area *a = cw_area_at(i);
        atomic_store(&a->open_now, 0);
        atomic_store(&a->reported, 0);
    }
    adopting = 1;
}

void cw_watcher_run_process(void)
{
    forget_previous_watcher();
    load_suppressions();
    /* A relative suppressions path is read: from now on no directory is held busy (an unmount
     * of the program's working directory must not find the watcher in it). */
    if (chdir("/") != 0) {
    }
    cw_sink_stderr_hold(1);
    cw_watcher_process_ready(NULL);
    watch();
}

/* ---- public API ---------------------------------------------------------- */
#include "closewait.h"

__attribute__((visibility("default"))) const char *closewait_version(void)
{
    return CLOSEWAIT_VERSION;
}

__attribute__((visibility("default"))) void closewait_dump(void)
{
    cw_init();
    int saved = errno;
    struct cw_area *me = cw_me;
    if (me != NULL && !thread_mode && cw_watcher_process_alive()) {
        cw_watcher_request(&me->dump_req, &me->dump_done, 5000);
    } else if (me != NULL) {
        pthread_mutex_lock(&tick_lock);
        int was_thread = thread_mode;
        thread_mode = 1;
        if (nprocs == 0) proc_add(me, getpid());
        tick();
        P = &procs[0];
        write_summary("on request");
        P = NULL;
        thread_mode = was_thread;
        pthread_mutex_unlock(&tick_lock);
    }
    errno = saved;
}

__attribute__((visibility("default"))) long closewait_leaks_open(void)
{
    struct cw_area *me = cw_me;
    if (me == NULL) return 0;
    if (!thread_mode) return (long)atomic_load(&me->open_now);
    pthread_mutex_lock(&tick_lock);
    long open = nprocs > 0 ? open_now(&procs[0]) : 0;
    pthread_mutex_unlock(&tick_lock);
    return open;
}
