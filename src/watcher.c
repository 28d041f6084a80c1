/*
 * The watcher: a process of its own (helper.c; or, in thread mode, a thread of the program), all
 * signals blocked, asleep in epoll_wait, that
 *  1. is woken by the peer's FIN on any tracked socket (each one is registered, edge-triggered
 *     EPOLLRDHUP, in the watcher's own epoll instance: the cost follows the sockets that change,
 *     not the sockets open) and notes the time;
 *  2. every CLOSEWAIT_INTERVAL_MS walks the fd table (memory only): registers new sockets, picks
 *     up descriptors whose EOF a hook saw, watches listeners;
 *  3. for each one past the grace period, asks the kernel once more about that very descriptor
 *     (same inode? really CLOSE_WAIT? still sending?) and only then reports it;
 *  4. notices when a reported descriptor is finally closed.
 * Everything that allocates, formats or symbolizes happens here, never in a hook.
 */
#define _GNU_SOURCE
#include "buf.h"
#include "region.h"
#include "sink.h"
#include "symbolize.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CLOSEWAIT_VERSION "0.1.0"

enum reason { R_EOF_NOT_CLOSED, R_PEER_CLOSED_UNREAD, R_SHUTDOWN_NOT_CLOSED, R_INHERITED };
static const char *const reason_names[] = {"eof_not_closed", "peer_closed_unread",
                                           "shutdown_not_closed", "inherited"};

/* w_flags bits (watcher-owned, per slot life); the bits above 8 hold the epoll generation the
 * socket is registered in */
#define WF_REPORTED 1u
#define WF_SUPPRESSED 2u
#define WF_GEN_SHIFT 8

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
    int foreign;          /* held by another process (a child) */
    pid_t holder;
};

static pthread_mutex_t tick_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t thread;
static _Atomic int running;
static _Atomic int dump_requested;
static struct group *groups;
static size_t ngroups, groups_cap;
static struct leak *leaks;
static size_t nleaks, leaks_cap;
static long total_reported, total_suppressed;
static struct inode_set cw_inodes;
/* How the watcher learns of FINs.  epoll: every tracked socket is registered (edge-triggered
 * EPOLLRDHUP) in the watcher's own epoll instance, so the cost follows the sockets that change,
 * not the sockets open.  sock_diag: one netlink dump of the CLOSE_WAIT sockets per interval (the
 * kernel walks every TCP socket of the namespace, TIME_WAIT included, for each dump).  tcp_info:
 * one getsockopt per tracked socket per interval. */
enum watch_mode { WATCH_EPOLL, WATCH_SOCK_DIAG, WATCH_TCP_INFO };
static enum watch_mode watch_mode = WATCH_EPOLL;
static const char *const watch_mode_names[] = {"epoll", "sock_diag", "tcp_info"};
static uint32_t epoll_gen = 1;      /* registrations are per epoll instance */
static int listeners_waiting;       /* a listener had a queue at the last tick: dump next time */
static int parent_alive;      /* in a forked child: the parent that forked us is still there */
static struct unowned_ports unowned;
static int private_table_wanted = 1;  /* CLOSEWAIT_SHARED_TABLE=1 turns it off (for comparison) */
static char exe_path[PATH_MAX];
static char hostname[256];
static int announced;
static char **suppressions;
static size_t nsuppressions;

static void remember_peer(int fd, int kfd, uint32_t seq)
{
    struct cw_peer *p = cw_peer_slot(fd);
    if (p == NULL) return;
    struct cw_peer cur;
    cw_peer_load(p, &cur);
    if (cur.seq == seq && cur.family != 0) return;
    struct cw_peer fresh = {.seq = seq};
    if (cw_kernel_peer(kfd, &fresh) == 0) cw_peer_store(p, &fresh);
}

static int cached_peer(int fd, uint32_t seq, char *out, size_t cap)
{
    struct cw_peer *p = cw_peer_slot(fd);
    if (p == NULL) return 0;
    struct cw_peer cur;
    cw_peer_load(p, &cur);
    if (cur.seq != seq || cur.family == 0) return 0;
    cw_peer_format(&cur, out, cap);
    return 1;
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

static void load_identity(void)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/%ld/exe", (long)cw_program_pid());
    ssize_t n = readlink(link, exe_path, sizeof exe_path - 1);
    exe_path[n > 0 ? n : 0] = '\0';
    if (gethostname(hostname, sizeof hostname - 1) != 0) hostname[0] = '\0';
}

/* The first event of a process in JSON says what the process is. */
static void announce(void)
{
    if (announced || cw_cfg.format != CW_FORMAT_JSON) return;
    announced = 1;
    struct buf b = {0};
    json_head(&b, "start");
    buf_printf(&b, ",\"ppid\":%ld,\"exe\":", (long)cw_program_ppid());
    buf_json_str(&b, exe_path);
    buf_puts(&b, ",\"host\":");
    buf_json_str(&b, hostname);
    buf_printf(&b, ",\"grace_ms\":%lld,\"watch\":\"%s\",\"watcher\":\"%s\",\"version\":\"%s\"}\n",
               (long long)cw_cfg.grace_ms, watch_mode_names[watch_mode], cw_is_helper ? "process" : "thread",
               CLOSEWAIT_VERSION);
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
    static int loaded; /* once per process: a forked child has its parent's already */
    if (loaded || cw_cfg.suppress_path[0] == '\0') return;
    loaded = 1;
    FILE *fp = fopen(cw_cfg.suppress_path, "re");
    if (fp == NULL) {
        cw_warn("cannot read CLOSEWAIT_SUPPRESSIONS ", cw_cfg.suppress_path, "; nothing suppressed");
        return;
    }
    char line[512];
    while (fgets(line, sizeof line, fp) != NULL && nsuppressions < 4096) {
        size_t len = strcspn(line, "\r\n");
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t')) len--;
        line[len] = '\0';
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (*s == '\0' || *s == '#') continue;
        char **ns = realloc(suppressions, (nsuppressions + 1) * sizeof *ns);
        if (ns == NULL) break;
        suppressions = ns;
        suppressions[nsuppressions] = strdup(s);
        if (suppressions[nsuppressions] != NULL) nsuppressions++;
    }
    fclose(fp);
}

/* Patterns: "fun:GLOB", "mod:GLOB", or a bare GLOB for a function. */
static int suppressed(uint32_t id)
{
    if (nsuppressions == 0) return 0;
    struct cw_frame f[MAX_FRAMES];
    int n = expand_stack(id, f, MAX_FRAMES, NULL);
    for (size_t k = 0; k < nsuppressions; k++) {
        const char *pat = suppressions[k];
        int mod = strncmp(pat, "mod:", 4) == 0;
        if (mod || strncmp(pat, "fun:", 4) == 0) pat += 4;
        for (int i = 0; i < n; i++) {
            const char *subject = mod ? f[i].module : f[i].function;
            if (subject != NULL && fnmatch(pat, subject, 0) == 0) return 1;
        }
    }
    return 0;
}

/* ---- findings --------------------------------------------------------- */

static struct group *group_for(uint32_t stack, int64_t now)
{
    for (size_t i = 0; i < ngroups; i++)
        if (groups[i].stack == stack) return &groups[i];
    if (cw_grow(&groups, &groups_cap, ngroups, sizeof *groups, 16) != 0) return NULL;
    struct group *g = &groups[ngroups++];
    memset(g, 0, sizeof *g);
    g->stack = stack;
    g->stable_id = stable_stack_id(stack);
    g->number = (int)ngroups;
    g->first_ms = now;
    return g;
}

/* Growing: the number held open from this site reached a new high in the last minute. */
static int growing(const struct group *g, int64_t now)
{
    return g->now >= 2 && g->now == g->peak && now - g->peak_ms < 60000;
}

struct observed {
    int fd;
    uint32_t seq;
    uint64_t inode;
    uint32_t flags, open_stack, eof_stack;
    int64_t open_ms, eof_ms, fin_ms;
    int opened_by, eof_by, state;
    enum reason reason;
    /* inherited sockets */
    const char *local, *peer;   /* when the socket is not ours to ask */
    pid_t holder;               /* the process holding it, if not us */
    uint32_t spawn_stack;
    int spawn_kind;
};

/* The program's descriptors (other than `except`) that hold the socket `inode`: up to max of
 * them in out (which may be NULL); returns how many were found. */
static int fds_of_socket(uint64_t inode, int except, int *out, int max)
{
    int n = 0;
    for (int fd = cw_table_next(0); fd >= 0 && n < max; fd = cw_table_next(fd + 1)) {
        if (fd == except) continue;
        struct cw_slot *s = cw_slot_peek(fd);
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

/* Text format: each distinct stack is printed in full once; later reports point back to it. */
static int text_stack_shown(uint32_t stack)
{
    static uint32_t *shown;
    static size_t nshown, cap;
    for (size_t i = 0; i < nshown; i++)
        if (shown[i] == stack) return 1;
    if (cw_grow(&shown, &cap, nshown, sizeof *shown, 32) != 0) return 0;
    shown[nshown++] = stack;
    return 0;
}

static void report_leak(const struct observed *o, int64_t now)
{
    struct group *g = group_for(o->open_stack, now);
    if (g == NULL) return;
    if (cw_grow(&leaks, &leaks_cap, nleaks, sizeof *leaks, 64) != 0) return;
    struct leak *l = &leaks[nleaks++];
    l->fd = o->fd;
    l->seq = o->seq;
    l->inode = o->inode;
    l->gi = (size_t)(g - groups);
    l->fin_ms = o->fin_ms;
    l->foreign = o->holder != 0 && o->holder != cw_program_pid();
    l->holder = o->holder;
    if (o->local != NULL) {
        snprintf(l->local, sizeof l->local, "%s", o->local);
        snprintf(l->peer, sizeof l->peer, "%s", o->peer);
    } else {
        CW_BORROW(b, o->fd);
        cw_kernel_endpoint(cw_borrowed(&b), 0, l->local, sizeof l->local);
        cw_kernel_endpoint(cw_borrowed(&b), 1, l->peer, sizeof l->peer);
        if (strcmp(l->peer, "?") == 0) cached_peer(o->fd, o->seq, l->peer, sizeof l->peer);
    }
    g->now++;
    /* before the report is written: a program that reads it and asks closewait_leaks_open()
     * finds it counted */
    if (cw_sh != NULL) atomic_fetch_add(&cw_sh->open_now, 1);
    g->ever++;
    g->last_ms = now;
    if (g->now > g->peak) {
        g->peak = g->now;
        g->peak_ms = now;
    }
    total_reported++;

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
        buf_json_str(&b, exe_path);
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
    struct group *g = &groups[l->gi];
    g->now--;
    if (cw_sh != NULL) atomic_fetch_sub(&cw_sh->open_now, 1);
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

/* Reported descriptors that are gone now (closed by a hook we saw, or by one we did not). */
static void sweep_leaks(int64_t now)
{
    for (size_t i = 0; i < nleaks;) {
        struct leak *l = &leaks[i];
        struct cw_slot *s = cw_slot_peek(l->fd);
        uint32_t seq = s != NULL ? atomic_load_explicit(&s->seq, memory_order_acquire) : 0;
        const char *how = NULL;
        if (l->foreign) {
            if (fd_in_process(l->holder, l->inode) < 0) how = "holder";
        } else if (seq != l->seq) {
            how = "close";
        } else {
            CW_BORROW(b, l->fd);
            if (cw_kernel_socket_inode(cw_borrowed(&b)) != l->inode) how = "unseen";
        }
        if (how == NULL) {
            i++;
            continue;
        }
        report_closed(l, now, how);
        leaks[i] = leaks[--nleaks];
    }
}

/* ---- the scan ---------------------------------------------------------- */

/* Drop a stale record (the descriptor was closed by a path no hook saw), unless its slot
 * changed meanwhile. */
static void drop_stale(struct cw_slot *s, uint32_t seq)
{
    uint32_t next = ((SEQ_GEN(seq) + 1) << 2) | KIND_FREE;
    atomic_compare_exchange_strong(&s->seq, &seq, next);
}

static void examine(int fd, struct cw_slot *s, int have_diag, int64_t now)
{
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (SEQ_KIND(seq) != KIND_TCP) return;
    if (s->w_seq != seq) {
        s->w_seq = seq;
        s->w_flags = 0;
        s->w_fin_ms = 0;
    }
    if (s->w_flags & (WF_REPORTED | WF_SUPPRESSED)) return;
    /* The parent process answers for what a fork inherited (it knows where it came from);
     * once it is gone, the child speaks for it, saying the socket was inherited. */
    int inherited = atomic_load_explicit(&s->fork_gen, memory_order_relaxed) !=
                    atomic_load_explicit(&cw_sh->fork_gen, memory_order_relaxed);
    if (inherited && parent_alive) return;
    /* The steady state of an idle connection: registered, no FIN, no EOF: one cache line read. */
    if (watch_mode == WATCH_EPOLL && s->w_fin_ms == 0 && (s->w_flags >> WF_GEN_SHIFT) == epoll_gen &&
        !(atomic_load_explicit(&s->flags, memory_order_relaxed) & (SF_EOF | SF_SHUT_WR)))
        return;

    CW_BORROW(b, fd);
    uint64_t inode = atomic_load_explicit(&s->inode, memory_order_relaxed);
    if (inode == 0) {
        inode = cw_kernel_socket_inode(cw_borrowed(&b));
        if (atomic_load_explicit(&s->seq, memory_order_acquire) != seq) return;
        if (inode == 0) {
            drop_stale(s, seq);
            return;
        }
        atomic_store_explicit(&s->inode, inode, memory_order_relaxed);
    }
    remember_peer(fd, cw_borrowed(&b), seq);
    if (watch_mode == WATCH_EPOLL && (s->w_flags >> WF_GEN_SHIFT) != epoll_gen) {
        if (cw_epoll_watch(cw_borrowed(&b), fd, inode) == 0)
            s->w_flags = (s->w_flags & ((1u << WF_GEN_SHIFT) - 1)) | (epoll_gen << WF_GEN_SHIFT);
    }
    uint32_t flags = atomic_load_explicit(&s->flags, memory_order_acquire);
    if (s->w_fin_ms == 0 && watch_mode != WATCH_EPOLL) {
        int in_cw;
        if (watch_mode == WATCH_SOCK_DIAG) {
            in_cw = have_diag && cw_inode_set_has(&cw_inodes, inode);
        } else {
            struct tcp_info ti;
            in_cw = cw_kernel_tcp_info(cw_borrowed(&b), &ti) == 0 &&
                    (ti.tcpi_state == TCPS_CLOSE_WAIT || ti.tcpi_state == TCPS_LAST_ACK);
        }
        if (in_cw) s->w_fin_ms = now;
    }
    if (s->w_fin_ms == 0 && !(flags & SF_EOF) && (flags & SF_SHUT_WR)) {
        /* We sent our FIN first (a relay's half-close): when the peer's FIN arrives the socket
         * goes straight to CLOSE.  Few sockets sit shut down without being closed, so asking
         * each one is cheap. */
        struct tcp_info ti;
        if (cw_kernel_tcp_info(cw_borrowed(&b), &ti) == 0 && ti.tcpi_state == TCPS_CLOSE) s->w_fin_ms = now;
    }
    int64_t fin = s->w_fin_ms;
    if (flags & SF_EOF) {
        int64_t eof = atomic_load_explicit(&s->eof_ms, memory_order_relaxed);
        if (eof != 0 && (fin == 0 || eof < fin)) fin = eof;
    }
    if (fin == 0 || now - fin < cw_cfg.grace_ms) return;

    /* Past the grace period: the kernel's word on this very descriptor. */
    if (cw_kernel_socket_inode(cw_borrowed(&b)) != inode) {
        drop_stale(s, seq);
        return;
    }
    struct tcp_info ti;
    if (cw_kernel_tcp_info(cw_borrowed(&b), &ti) != 0) return;
    int state = ti.tcpi_state;
    /* CLOSE after a FIN the program read (it wrote to the half-closed peer and got a reset) or
     * after its own shutdown: the descriptor is still held past the peer's FIN. */
    int held = state == TCPS_CLOSE_WAIT ||
               ((flags & (SF_SHUT_WR | SF_EOF)) && (state == TCPS_LAST_ACK || state == TCPS_CLOSE));
    if (!held) {
        /* No FIN after all (the program's own shutdown(SHUT_RD) makes reads return 0), or an
         * RST: nothing held open by a forgotten close. */
        s->w_fin_ms = 0;
        return;
    }
    /* Data still going out, or sent after the FIN within the grace period: a reply to a
     * half-closing client, alive and not leaked. */
    int64_t last_send_age = (int64_t)ti.tcpi_last_data_sent;
    if (ti.tcpi_notsent_bytes > 0 || ti.tcpi_unacked > 0 ||
        (last_send_age < now - fin && last_send_age < cw_cfg.grace_ms))
        return;
    /* The addresses now, while the descriptor is known to be this socket; then make sure it
     * still was after asking (the program may close it this very moment). */
    char local[64], peer[64];
    cw_kernel_endpoint(cw_borrowed(&b), 0, local, sizeof local);
    cw_kernel_endpoint(cw_borrowed(&b), 1, peer, sizeof peer);
    if (strcmp(peer, "?") == 0) cached_peer(fd, seq, peer, sizeof peer);
    /* A copy borrowed before the close still names the socket: ask the program's table. */
    cw_borrow_end(&b);
    if (atomic_load_explicit(&s->seq, memory_order_acquire) != seq || cw_kernel_socket_inode(cw_borrowed(&b)) != inode)
        return;
    cw_borrow_end(&b);

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
        .spawn_stack = inherited ? atomic_load(&cw_sh->fork_stack) : 0,
        .spawn_kind = SPAWN_FORK,
    };
    /* A dup of a socket already reported: the report named this fd already. */
    for (size_t i = 0; i < nleaks; i++) {
        if (leaks[i].inode == inode) {
            s->w_flags |= WF_REPORTED;
            return;
        }
    }
    if (suppressed(o.open_stack)) {
        s->w_flags |= WF_SUPPRESSED;
        total_suppressed++;
        return;
    }
    s->w_flags |= WF_REPORTED;
    atomic_fetch_or_explicit(&s->flags, SF_REPORTED, memory_order_relaxed);
    report_leak(&o, now);
}

static void check_crossed(int64_t now, int have_diag);
static int spawns_pending_without_epoll(void);
static void check_listener(int fd, struct cw_slot *s, uint32_t seq, int64_t now);

static void tick(void)
{
    /* A process that never made a TCP socket (a shell, a compiler under an inherited
     * LD_PRELOAD) costs nothing more than this test. */
    if (cw_sh == NULL || !atomic_load_explicit(&cw_sh->any_tcp, memory_order_relaxed)) return;
    int64_t now = cw_now_ms();
    if (watch_mode == WATCH_EPOLL && cw_epoll_ensure() != 0) {
        cw_warn("epoll unavailable; ", "watching with sock_diag dumps", NULL);
        watch_mode = WATCH_SOCK_DIAG;
    }
    epoll_gen = cw_epoll_generation();
    /* Dumps: every interval without epoll; with it, only while a listener has a queue (dead
     * connections waiting there belong to no process yet, only a dump shows them). */
    int have_diag = 0;
    if (watch_mode == WATCH_SOCK_DIAG || listeners_waiting || spawns_pending_without_epoll()) {
        have_diag = cw_kernel_tcp_inodes(1u << TCPS_CLOSE_WAIT | 1u << TCPS_LAST_ACK, &cw_inodes,
                                         &unowned) == 0;
        if (!have_diag && watch_mode == WATCH_SOCK_DIAG) watch_mode = WATCH_TCP_INFO;
    } else {
        cw_inode_set_clear(&cw_inodes);
        unowned.n = 0;
    }
    listeners_waiting = 0;
    pid_t fork_parent = atomic_load(&cw_sh->fork_parent);
    parent_alive = fork_parent != 0 && cw_program_ppid() == fork_parent;
    for (int fd = cw_table_next(0); fd >= 0; fd = cw_table_next(fd + 1)) {
        struct cw_slot *s = cw_slot_peek(fd);
        if (s == NULL) continue;
        uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (SEQ_KIND(seq) == KIND_TCP) examine(fd, s, have_diag, now);
        else if (SEQ_KIND(seq) == KIND_LISTEN) check_listener(fd, s, seq, now);
    }
    check_crossed(now, have_diag);
    /* A fresh clock: reporting may have taken a while, and the close may be that recent. */
    sweep_leaks(cw_now_ms());
    /* libdw keeps the files it read open, at low numbers and inheritable across exec: the
     * names are cached by pc already, so let go of them until the next report. */
    cw_symbolize_release();
}

/* ---- sockets that crossed into children -------------------------------- */

/* Does process pid hold socket inode?  Returns its fd there, or -1. */
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

/* Who holds the socket now: the child we spawned, or (system, popen, a daemonizing child)
 * whichever process it is. */
static pid_t find_holder(pid_t hint, uint64_t inode, int *fd)
{
    pid_t self = cw_program_pid();
    if (hint > 0 && (*fd = fd_in_process(hint, inode)) >= 0) return hint;
    DIR *d = opendir("/proc");
    if (d == NULL) return 0;
    pid_t holder = 0;
    struct dirent *e;
    while (holder == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        /* the helper itself holds copies of the program's sockets for a moment at a time */
        if (pid == self || pid == hint || pid == getpid()) continue;
        if ((*fd = fd_in_process(pid, inode)) >= 0) holder = pid;
    }
    closedir(d);
    return holder;
}

/* Without epoll, crossed sockets are found in dumps: dump while any spawn record lives. */
static int spawns_pending_without_epoll(void)
{
    if (watch_mode == WATCH_EPOLL) return 0;
    for (int i = 0; i < CW_MAX_SPAWNS; i++)
        if (atomic_load(&cw_spawns[i].state) == 2) return 1;
    return 0;
}

static void check_crossed(int64_t now, int have_diag)
{
    if (watch_mode != WATCH_EPOLL && !have_diag) return;
    for (int i = 0; i < CW_MAX_SPAWNS; i++) {
        struct cw_spawn *r = &cw_spawns[i];
        int expected = 2;
        /* hold the record (state 1) so that a spawn on another thread does not reuse it */
        if (!atomic_compare_exchange_strong(&r->state, &expected, 1)) continue;
        for (size_t k = 0; k < r->nsocks; k++) {
            struct cw_crossed *c = &cw_spawn_socks((unsigned)i)[k];
            if (c->w_done) continue;
            if (watch_mode != WATCH_EPOLL) {
                /* with epoll, c->w_fin_ms is set by the socket's RDHUP event */
                if (!cw_inode_set_has(&cw_inodes, c->inode)) {
                    c->w_fin_ms = 0;
                    continue;
                }
                if (c->w_fin_ms == 0) c->w_fin_ms = now;
            }
            if (c->w_fin_ms == 0) continue;
            if (now - c->w_fin_ms < cw_cfg.grace_ms) continue;
            /* Ours still: our own report covers it. */
            if (fds_of_socket(c->inode, -1, NULL, 1) > 0) continue;
            int child_fd = -1;
            /* Walking /proc costs a readlink per descriptor of every process: a few tries,
             * then the socket is someone else's business. */
            if (c->w_searches >= 3) {
                c->w_done = 1;
                continue;
            }
            c->w_searches++;
            pid_t holder = find_holder(r->child, c->inode, &child_fd);
            if (holder == 0) continue;
            c->w_done = 1;
            int dup_of_reported = 0;
            for (size_t j = 0; j < nleaks; j++)
                if (leaks[j].inode == c->inode) dup_of_reported = 1;
            if (dup_of_reported) continue;
            if (!have_diag)
                have_diag = cw_kernel_tcp_inodes(1u << TCPS_CLOSE_WAIT, &cw_inodes, &unowned) == 0;
            const struct dumped_socket *ds = have_diag ? cw_kernel_dumped(c->inode) : NULL;
            struct observed o = {
                .fd = child_fd,
                .inode = c->inode,
                .open_stack = c->open_stack,
                .open_ms = c->open_ms,
                .fin_ms = c->w_fin_ms,
                .opened_by = c->opened_by,
                .state = TCPS_CLOSE_WAIT,
                .reason = R_INHERITED,
                .local = ds != NULL ? ds->local : "?",
                .peer = ds != NULL ? ds->peer : "?",
                .holder = holder,
                .spawn_stack = r->stack,
                .spawn_kind = r->kind,
            };
            if (suppressed(o.open_stack)) {
                total_suppressed++;
                continue;
            }
            report_leak(&o, now);
        }
        atomic_store(&r->state, 2);
    }
}

/* ---- listeners: the accept queue ---------------------------------------- */

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
static struct listener *listeners;
static size_t nlisteners, listeners_cap;

static struct listener *listener_for(int fd, uint32_t seq)
{
    for (size_t i = 0; i < nlisteners; i++)
        if (listeners[i].fd == fd) {
            if (listeners[i].seq != seq) {
                memset(&listeners[i], 0, sizeof listeners[i]);
                listeners[i].fd = fd;
                listeners[i].seq = seq;
            }
            return &listeners[i];
        }
    if (cw_grow(&listeners, &listeners_cap, nlisteners, sizeof *listeners, 8) != 0) return NULL;
    struct listener *l = &listeners[nlisteners++];
    memset(l, 0, sizeof *l);
    l->fd = fd;
    l->seq = seq;
    return l;
}

static void report_backlog(struct listener *l, struct cw_slot *s, const char *reason, uint32_t dead,
                           uint32_t queued, const struct tcp_info *ti)
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
                   backlog, dead, queued, ti->tcpi_unacked, ti->tcpi_sacked);
        buf_printf(&b, ",\"stack_id\":\"%016llx\",\"exe\":", (unsigned long long)stable_stack_id(stack));
        buf_json_str(&b, exe_path);
        json_frames(&b, "listen_stack", stack);
        buf_puts(&b, "}\n");
    } else {
        int pid = (int)cw_program_pid();
        if (strcmp(reason, "accept_queue_full") == 0)
            buf_printf(&b, "==%d==closewait: listener %s (backlog %d): accept queue full (%u waiting, limit %u); "
                           "the kernel is dropping new connections' SYNs and clients retry (accept_queue_full)\n",
                       pid, l->addr, backlog, ti->tcpi_unacked, ti->tcpi_sacked);
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

static void check_listener(int fd, struct cw_slot *s, uint32_t seq, int64_t now)
{
    if (atomic_load_explicit(&s->fork_gen, memory_order_relaxed) !=
        atomic_load_explicit(&cw_sh->fork_gen, memory_order_relaxed))
        return; /* the parent watches its own listeners */
    struct listener *l = listener_for(fd, seq);
    if (l == NULL) return;
    struct tcp_info ti;
    CW_BORROW(b, fd);
    if (cw_kernel_tcp_info(cw_borrowed(&b), &ti) != 0 || ti.tcpi_state != TCPS_LISTEN) return;
    if (l->port == 0) {
        cw_kernel_endpoint(cw_borrowed(&b), 0, l->addr, sizeof l->addr);
        const char *colon = strrchr(l->addr, ':');
        l->port = colon != NULL ? (uint16_t)atoi(colon + 1) : 0;
    }
    uint32_t queued = 0;
    for (int i = 0; i < unowned.n; i++)
        if (unowned.port[i] == l->port) queued = unowned.count[i];
    /* While connections wait, accept() checks each one it returns. */
    if (ti.tcpi_unacked > 0) listeners_waiting = 1;
    if (ti.tcpi_unacked > 0 || queued > 0)
        atomic_fetch_or_explicit(&s->flags, SF_BACKLOGGED, memory_order_relaxed);
    else
        atomic_fetch_and_explicit(&s->flags, ~SF_BACKLOGGED, memory_order_relaxed);
    uint32_t dead = atomic_load_explicit(&s->eof_stack, memory_order_relaxed);

    /* One finding per listener, its counts updated at most once per grace period. */
    if ((dead > l->dead_reported || queued > l->queued_reported) &&
        (l->last_report_ms == 0 || now - l->last_report_ms >= cw_cfg.grace_ms)) {
        report_backlog(l, s, "peer_closed_in_backlog", dead, queued, &ti);
        l->dead_reported = dead;
        if (queued > l->queued_reported) l->queued_reported = queued;
        l->last_report_ms = now;
    }
    /* Full: more waiting than the limit; the kernel drops SYNs until accept() catches up. */
    if (ti.tcpi_unacked > ti.tcpi_sacked) {
        if (l->full_since == 0) l->full_since = now;
        int64_t hold = cw_cfg.grace_ms < 1000 ? cw_cfg.grace_ms : 1000;
        if (!l->full_reported && now - l->full_since >= hold) {
            report_backlog(l, s, "accept_queue_full", dead, queued, &ti);
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
    for (size_t i = 0; i < ngroups; i++) {
        open += groups[i].now;
        if (groups[i].now > 0) sites++;
    }
    struct buf b = {0};
    if (cw_cfg.format == CW_FORMAT_JSON) {
        if (total_reported == 0 && total_suppressed == 0 && strcmp(why, "exit") == 0) return;
        announce();
        json_head(&b, "summary");
        buf_printf(&b, ",\"why\":\"%s\",\"leaks_open\":%ld,\"leaks_total\":%ld,\"suppressed\":%ld,\"findings\":[",
                   why, open, total_reported, total_suppressed);
        for (size_t i = 0; i < ngroups; i++)
            buf_printf(&b, "%s{\"stack_id\":\"%016llx\",\"site\":%d,\"count_now\":%ld,\"count_ever\":%ld,\"growing\":%s}",
                       i ? "," : "", (unsigned long long)groups[i].stable_id, groups[i].number,
                       groups[i].now, groups[i].ever, growing(&groups[i], now) ? "true" : "false");
        buf_puts(&b, "]}\n");
    } else {
        if (total_reported == 0 && total_suppressed == 0) {
            if (strcmp(why, "exit") == 0) return;
            buf_printf(&b, "==%d==closewait: no socket held in CLOSE_WAIT so far\n", (int)cw_program_pid());
        } else {
            int pid = (int)cw_program_pid();
            buf_printf(&b, "==%d==closewait: findings (%s), by open site:\n", pid, why);
            /* most open first, then most ever */
            size_t *order = calloc(ngroups ? ngroups : 1, sizeof *order);
            if (order != NULL) {
                for (size_t i = 0; i < ngroups; i++) order[i] = i;
                for (size_t i = 1; i < ngroups; i++)
                    for (size_t j = i; j > 0; j--) {
                        const struct group *a = &groups[order[j - 1]], *c = &groups[order[j]];
                        if (a->now > c->now || (a->now == c->now && a->ever >= c->ever)) break;
                        size_t t = order[j - 1];
                        order[j - 1] = order[j];
                        order[j] = t;
                    }
                for (size_t k = 0; k < ngroups; k++) {
                    struct group *g = &groups[order[k]];
                    buf_printf(&b, "Open site #%d (stack %016llx): %ld socket(s) held now, %ld in all%s\n",
                               g->number, (unsigned long long)g->stable_id, g->now, g->ever,
                               growing(g, now) ? ", growing" : "");
                    text_frames(&b, g->stack);
                }
            }
            free(order);
            buf_printf(&b, "SUMMARY: closewait: %ld socket(s) held in CLOSE_WAIT from %zu open site(s); %ld reported in all",
                       open, sites, total_reported);
            if (total_suppressed) buf_printf(&b, ", %ld suppressed", total_suppressed);
            buf_puts(&b, ".\n");
        }
    }
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

/* ---- the thread ---------------------------------------------------------- */

static void on_report_signal(int sig)
{
    (void)sig;
    if (cw_helper_running()) {
        atomic_fetch_add(&cw_sh->dump_req, 1);
        cw_helper_poke();
    } else {
        atomic_store(&dump_requested, 1);
    }
}

/* An RDHUP (or HUP/ERR) edge: the peer's FIN reached this socket.  Only the time is taken
 * here; the next tick decides. */
static void on_epoll_event(uint64_t data, int64_t now)
{
    int fd = (int)(data >> 32);
    uint64_t inode = data & 0xffffffffu;
    struct cw_slot *s = cw_slot_peek(fd);
    if (s != NULL) {
        uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (SEQ_KIND(seq) == KIND_TCP && s->w_seq == seq &&
            (atomic_load_explicit(&s->inode, memory_order_relaxed) & 0xffffffffu) == inode) {
            if (s->w_fin_ms == 0) s->w_fin_ms = now;
        }
    }
    /* A socket that crossed into a child: the parent may have closed its copy by now. */
    for (int i = 0; i < CW_MAX_SPAWNS; i++) {
        struct cw_spawn *r = &cw_spawns[i];
        int expected = 2;
        if (atomic_load(&r->state) != 2 || !atomic_compare_exchange_strong(&r->state, &expected, 1))
            continue;
        struct cw_crossed *socks = cw_spawn_socks((unsigned)i);
        for (size_t k = 0; k < r->nsocks; k++)
            if ((socks[k].inode & 0xffffffffu) == inode && socks[k].w_fin_ms == 0) socks[k].w_fin_ms = now;
        atomic_store(&r->state, 2);
    }
}

static long open_now(void)
{
    long open = 0;
    for (size_t i = 0; i < ngroups; i++) open += groups[i].now;
    return open;
}

static void *watcher_main(void *arg)
{
    (void)arg;
    cw_in_lib = 1;
    if (private_table_wanted) {
        int keep[2] = {cw_sink_fd(), atomic_load(&cw_epoll_fd)};
        cw_watcher_private_table(keep, 2);
    }
    int64_t next_tick = cw_now_ms() + cw_cfg.interval_ms;
    struct epoll_event ev[256];
    while (atomic_load(&running)) {
        int64_t now = cw_now_ms();
        int wait_ms = next_tick > now ? (int)(next_tick - now) : 0;
        int ep = watch_mode == WATCH_EPOLL ? atomic_load(&cw_epoll_fd) : -1;
        int n = 0;
        if (ep >= 0) {
            n = epoll_wait(ep, ev, (int)(sizeof ev / sizeof ev[0]), wait_ms);
            if (n < 0 && errno != EINTR) {
                /* not an epoll instance any more: sleep this round, the tick re-makes it */
                struct timespec ts = {wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L};
                nanosleep(&ts, NULL);
                n = 0;
            }
        } else {
            struct timespec ts = {wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            }
        }
        if (!atomic_load(&running)) break;
        pthread_mutex_lock(&tick_lock);
        now = cw_now_ms();
        for (int i = 0; i < n; i++) on_epoll_event(ev[i].data.u64, now);
        if (now >= next_tick) {
            tick();
            next_tick = cw_now_ms() + cw_cfg.interval_ms;
        }
        if (atomic_exchange(&dump_requested, 0)) write_summary("on request");
        pthread_mutex_unlock(&tick_lock);
    }
    return NULL;
}

static void start_thread(void)
{
    load_suppressions(); /* here, not before: a watcher process reads them itself */
    sigset_t all, old;
    sigfillset(&all);
    /* The thread inherits this mask: the program's signals must never land on it. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_store(&running, 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* libdw recurses through DWARF; sanitizers take their share of a stack too */
    pthread_attr_setstacksize(&attr, (size_t)2 * 1024 * 1024);
    if (pthread_create(&thread, &attr, watcher_main, NULL) != 0) {
        atomic_store(&running, 0);
        cw_warn("cannot start the watcher thread; ", "only exit summaries will be written", NULL);
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* CLOSEWAIT_WATCHER=process (default): the watcher is a process of its own; =thread: a thread
 * of the program (glibc then runs the program's calls on its multi-threaded paths). */
static int process_wanted = 1;

static void publish_for_helper(void)
{
    cw_sh->watch_mode = (int)watch_mode;
    atomic_store(&cw_sh->sink_fd, cw_sink_fd());
    atomic_store(&cw_sh->epoll_fd, watch_mode == WATCH_EPOLL ? atomic_load(&cw_epoll_fd) : -1);
    atomic_store(&cw_sh->epoll_generation, cw_epoll_generation());
}

/* An orphan is re-parented to the nearest subreaper or to the namespace's init: if that is the
 * program itself, the watcher process would become its child after all (seen by its wait()). */
static int orphans_come_back(void)
{
    int subreaper = 0;
    return getpid() == 1 || (prctl(PR_GET_CHILD_SUBREAPER, (unsigned long)&subreaper, 0, 0, 0) == 0 && subreaper);
}

/* The watcher process, or (it cannot run here) the thread.  memfd: the region's descriptor if
 * the caller has one (a forked child), else it is made here. */
static void start_watching(int memfd, int wait)
{
    if (process_wanted && cw_region_is_shared() && !orphans_come_back() && !cw_helper_pids_tight()) {
        int fd = memfd >= 0 ? memfd : cw_region_share();
        if (fd >= 0) {
            publish_for_helper();
            int rc = cw_helper_spawn(fd, wait);
            if (fd != memfd) close(fd);
            if (rc == 0) return;
        } else {
            snprintf(cw_sh->helper_error, sizeof cw_sh->helper_error, "no shared memory for it");
        }
        if (wait) cw_warn("the watcher process could not start (", cw_sh->helper_error, "); watching from a thread");
    }
    start_thread();
}

/* A process that never makes a TCP socket (a shell, a compiler under an inherited LD_PRELOAD)
 * never gets a watcher: it starts with the first one (cw_watcher_first_tcp), in the hook that
 * makes it. */
static _Atomic int watcher_pending;

void cw_watcher_first_tcp(void)
{
    if (!atomic_exchange(&watcher_pending, 0)) return;
    int saved = errno;
    cw_in_lib++;
    start_watching(-1, 1);
    cw_in_lib--;
    errno = saved;
}

void cw_watcher_start(void)
{
    const char *mode = getenv("CLOSEWAIT_WATCH");
    if (mode != NULL) {
        if (strcmp(mode, "epoll") == 0) watch_mode = WATCH_EPOLL;
        else if (strcmp(mode, "sock_diag") == 0) watch_mode = WATCH_SOCK_DIAG;
        else if (strcmp(mode, "tcp_info") == 0) watch_mode = WATCH_TCP_INFO;
        else cw_warn("CLOSEWAIT_WATCH", ": invalid value, expected epoll, sock_diag or tcp_info; using ", "epoll");
    }
    const char *where = getenv("CLOSEWAIT_WATCHER");
    if (where != NULL) {
        if (strcmp(where, "thread") == 0) process_wanted = 0;
        else if (strcmp(where, "process") != 0)
            cw_warn("CLOSEWAIT_WATCHER", ": invalid value, expected process or thread; using ", "process");
    }
    if (watch_mode == WATCH_EPOLL && cw_epoll_ensure() != 0) watch_mode = WATCH_SOCK_DIAG;
    const char *shared = getenv("CLOSEWAIT_SHARED_TABLE");
    if (shared != NULL && strcmp(shared, "1") == 0) private_table_wanted = 0;
    load_identity();
    cw_sink_open();
    if (cw_cfg.report_signal != 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_report_signal;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(cw_cfg.report_signal, &sa, NULL);
    }
    if (process_wanted) atomic_store(&watcher_pending, 1);
    else start_thread();
}

void cw_watcher_after_fork_child(int memfd)
{
    /* The child has no watcher and owns none of the parent's findings. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&tick_lock, &fresh, sizeof fresh);
    atomic_store(&running, 0);
    nleaks = 0;
    ngroups = 0;
    total_reported = total_suppressed = 0;
    announced = 0;
    cw_kernel_after_fork();
    cw_epoll_after_fork();
    cw_spawns_forget();
    cw_sink_after_fork();
    if (cw_sh == NULL) return; /* no table of its own could be made: nothing to watch */
    /* The child's epoll instance is made here, on the program's table, so that fork() and
     * posix_spawn() on the program's threads can register crossed sockets in it too. */
    if (watch_mode == WATCH_EPOLL) cw_epoll_ensure();
    load_identity();
    if (process_wanted && !atomic_load(&cw_sh->any_tcp)) {
        atomic_store(&watcher_pending, 1); /* as at start: with the first TCP socket */
        return;
    }
    atomic_store(&watcher_pending, 0);
    /* Not waited for: most children exec at once, and a failure here would have failed in the
     * parent too. */
    start_watching(memfd, 0);
}

void cw_watcher_at_exit(void)
{
    if (atomic_load(&watcher_pending)) return; /* no TCP socket ever: nothing to say */
    if (cw_helper_running()) {
        cw_helper_request(&cw_sh->exit_req, &cw_sh->exit_done);
        long open = (long)atomic_load(&cw_sh->open_now);
        if (open > 0 && cw_cfg.exitcode >= 0) {
            fflush(NULL);
            _exit(cw_cfg.exitcode);
        }
        return;
    }
    atomic_store(&running, 0);
    pthread_mutex_lock(&tick_lock);
    tick();
    write_summary("exit");
    long open = open_now();
    pthread_mutex_unlock(&tick_lock);
    if (open > 0 && cw_cfg.exitcode >= 0) {
        fflush(NULL);
        _exit(cw_cfg.exitcode);
    }
}

/* ---- the watcher process's loop -------------------------------------------- */

static void on_wake(int sig)
{
    (void)sig;
}

/* A request of the program (exit summary, closewait_dump(), the report signal): a fresh look,
 * the summary, then the answer it waits for. */
static int answer(_Atomic uint32_t *req, _Atomic uint32_t *done, const char *why)
{
    uint32_t r = atomic_load(req);
    if (r == atomic_load(done)) return 0;
    tick();
    write_summary(why);
    atomic_store(&cw_sh->open_now, open_now());
    atomic_store(done, r);
    cw_futex_wake(done);
    return 1;
}

#define EV_PROGRAM UINT64_MAX       /* the program's pidfd: it is gone */
#define EV_SOCKETS (UINT64_MAX - 1) /* the epoll instance of the sockets has events */

void cw_watcher_helper_run(int pidfd)
{
    watch_mode = (enum watch_mode)cw_sh->watch_mode;
    cw_kernel_borrow_from(pidfd);
    struct cw_borrow sink = {atomic_load(&cw_sh->sink_fd), -1};
    cw_sink_use(cw_borrowed(&sink));
    /* Our own warnings (one line each) go to the program's stderr, as the program's would; not a
     * copy of a socket, though (an inetd-style server's stderr), which would keep it open. */
    struct cw_borrow err = {2, -1};
    int errfd = cw_borrowed(&err);
    struct stat est;
    if (errfd >= 0 && fstat(errfd, &est) == 0 && !S_ISSOCK(est.st_mode) && errfd != 2) dup2(errfd, 2);
    if (errfd != 2) cw_borrow_end(&err);
    int sockets_ep = -1;
    if (watch_mode == WATCH_EPOLL) {
        struct cw_borrow ep = {atomic_load(&cw_sh->epoll_fd), -1};
        sockets_ep = cw_borrowed(&ep);
        if (sockets_ep < 0) watch_mode = WATCH_SOCK_DIAG;
        else cw_epoll_adopt(sockets_ep, atomic_load(&cw_sh->epoll_generation));
    }
    int outer = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = EPOLLIN;
    e.data.u64 = EV_PROGRAM;
    if (outer < 0 || epoll_ctl(outer, EPOLL_CTL_ADD, pidfd, &e) != 0) {
        snprintf(cw_sh->helper_error, sizeof cw_sh->helper_error, "epoll: %s", strerror(errno));
        atomic_store(&cw_sh->helper_state, CW_HELPER_FAILED);
        cw_futex_wake(&cw_sh->helper_state);
        return;
    }
    if (sockets_ep >= 0) {
        e.data.u64 = EV_SOCKETS;
        epoll_ctl(outer, EPOLL_CTL_ADD, sockets_ep, &e);
    }
    load_identity();
    load_suppressions();
    /* A relative suppressions path is read: from now on no directory is held busy (an unmount of
     * the program's working directory must not find the watcher in it). */
    if (chdir("/") != 0) {
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_wake;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGURG, &sa, NULL);
    sigset_t waking;
    sigfillset(&waking);
    sigdelset(&waking, SIGURG);
    atomic_store(&cw_sh->helper_state, CW_HELPER_READY);
    cw_futex_wake(&cw_sh->helper_state);

    int64_t next_tick = cw_now_ms() + cw_cfg.interval_ms;
    struct epoll_event ev[256];
    for (;;) {
        int64_t now = cw_now_ms();
        int wait_ms = next_tick > now ? (int)(next_tick - now) : 0;
        uint32_t dump_req = atomic_load(&cw_sh->dump_req), exit_req = atomic_load(&cw_sh->exit_req);
        if (dump_req != atomic_load(&cw_sh->dump_done) || exit_req != atomic_load(&cw_sh->exit_done)) wait_ms = 0;
        struct epoll_event top[2];
        int n = epoll_pwait(outer, top, 2, wait_ms, &waking);
        int gone = 0;
        now = cw_now_ms();
        for (int i = 0; i < n; i++) {
            if (top[i].data.u64 == EV_PROGRAM) gone = 1;
            if (top[i].data.u64 != EV_SOCKETS) continue;
            int k;
            while ((k = epoll_wait(sockets_ep, ev, (int)(sizeof ev / sizeof ev[0]), 0)) > 0)
                for (int j = 0; j < k; j++) on_epoll_event(ev[j].data.u64, now);
        }
        /* Ended without its exit handler (_exit, a signal): nothing left to ask the kernel. */
        if (gone) break;
        if (now >= next_tick) {
            if (cw_helper_program_changed()) break; /* exec'd: the new image watches itself */
            tick();
            atomic_store(&cw_sh->open_now, open_now());
            next_tick = cw_now_ms() + cw_cfg.interval_ms;
        }
        if (answer(&cw_sh->exit_req, &cw_sh->exit_done, "exit")) break;
        answer(&cw_sh->dump_req, &cw_sh->dump_done, "on request");
    }
}

/* ---- public API ---------------------------------------------------------- */
#include "../include/closewait.h"

__attribute__((visibility("default"))) const char *closewait_version(void)
{
    return CLOSEWAIT_VERSION;
}

__attribute__((visibility("default"))) void closewait_dump(void)
{
    cw_init();
    int saved = errno;
    if (cw_helper_running()) {
        cw_helper_request(&cw_sh->dump_req, &cw_sh->dump_done);
    } else {
        pthread_mutex_lock(&tick_lock);
        tick();
        write_summary("on request");
        pthread_mutex_unlock(&tick_lock);
    }
    errno = saved;
}

__attribute__((visibility("default"))) long closewait_leaks_open(void)
{
    if (cw_helper_running()) return (long)atomic_load(&cw_sh->open_now);
    pthread_mutex_lock(&tick_lock);
    long open = open_now();
    pthread_mutex_unlock(&tick_lock);
    return open;
}
