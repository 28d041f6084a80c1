/* Findings: open sites, leaks and their reports, the summary of a process. */
#define _GNU_SOURCE
#include "watcher/internal.h"

/* The program's path as it published it (its own /proc/self/exe). */
void cw_proc_load_identity(struct proc *p)
{
    memcpy(p->exe, p->area->exe, sizeof p->area->exe);
    p->exe[sizeof p->area->exe - 1] = '\0';
    if (hostname[0] == '\0' && gethostname(hostname, sizeof hostname - 1) != 0) hostname[0] = '\0';
}

/* The first event of a process, in a format that has one, says what the process is. */
void cw_finding_announce(void)
{
    const struct cw_printer *fmt = cw_report_printer();
    if (P->announced || fmt->start == NULL) return;
    P->announced = 1;
    struct cw_start_event e = {
        .pid = cw_program_pid(),
        .ppid = cw_program_ppid(),
        .exe = P->exe,
        .host = hostname,
        .watcher = thread_mode ? "thread" : ebpf_front_end ? "ebpf" : "process",
        .version = CLOSEWAIT_VERSION,
        .grace_ms = cw_cfg.grace_ms,
    };
    struct buf b = {0};
    fmt->start(&b, &e);
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

void cw_watch_load_suppressions(void)
{
    if (suppressions_loaded || cw_cfg.suppress_path[0] == '\0') return;
    suppressions_loaded = 1;
    cw_suppressions_load(cw_cfg.suppress_path);
}

int cw_watch_suppressed(uint32_t id, uint32_t lang)
{
    if (cw_suppressions_count() == 0) return 0;
    struct cw_frame f[CW_MAX_FRAMES];
    int n = cw_report_frames(id, f, CW_MAX_FRAMES);
    if (cw_suppressions_match(f, n)) return 1;
    /* The program's own frames in its language match as frames without a module. */
    static struct cw_lang_stack ls;
    if (lang == 0 || cw_lang_read(lang, &ls) != 0) return 0;
    memset(f, 0, sizeof f);
    _Static_assert(CW_LANG_MAX_FRAMES <= CW_MAX_FRAMES, "a language stack fits the frames");
    n = ls.n < CW_LANG_MAX_FRAMES ? ls.n : CW_LANG_MAX_FRAMES;
    for (int i = 0; i < n; i++) {
        f[i].function = ls.f[i].function;
        f[i].file = ls.f[i].file;
        f[i].line = ls.f[i].line;
    }
    return cw_suppressions_match(f, n);
}

/* The site's id: its language stack's when it has one (the interpreter's native stack is the
 * same for every line of a script), else its native stack's. */
static uint64_t site_stable_id(uint32_t stack, uint32_t lang)
{
    static struct cw_lang_stack ls; /* big: not on the watcher's stack */
    if (lang != 0 && cw_lang_read(lang, &ls) == 0) return ls.stable_id;
    return cw_report_stack_id(stack);
}

struct open_site *cw_open_site_for(uint32_t stack, uint32_t lang, int64_t now)
{
    for (size_t i = 0; i < P->nsites; i++)
        if (P->sites[i].stack == stack && P->sites[i].lang == lang) return &P->sites[i];
    if (cw_grow(&P->sites, &P->sites_cap, P->nsites, sizeof *P->sites, 16) != 0) return NULL;
    struct open_site *g = &P->sites[P->nsites++];
    memset(g, 0, sizeof *g);
    g->stack = stack;
    g->lang = lang;
    g->stable_id = site_stable_id(stack, lang);
    g->number = (int)P->nsites;
    g->first_ms = now;
    return g;
}

/* Growing: the number held open from this site reached a new high in the last minute. */
int cw_open_site_growing(const struct open_site *g, int64_t now)
{
    return g->now >= 2 && g->now == g->peak && now - g->peak_ms < 60000;
}

long cw_proc_open_now(const struct proc *p)
{
    long open = 0;
    for (size_t i = 0; i < p->nsites; i++) open += p->sites[i].now;
    return open;
}

int cw_reported_anywhere(uint64_t id)
{
    for (size_t k = 0; k < nprocs; k++)
        for (size_t i = 0; i < procs[k].nleaks; i++)
            if (procs[k].leaks[i].id == id) return 1;
    return 0;
}

const char *cw_role_of(const struct observed *o)
{
    if (o->opened_by == CW_OP_ACCEPT || o->opened_by == CW_OP_ACCEPT4) return "server";
    if (o->flags & CW_SF_CLIENT) return "client";
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

void cw_finding_leak(const struct observed *o, int64_t now)
{
    struct open_site *g = cw_open_site_for(o->open_stack, o->lang_open, now);
    if (g == NULL) return;
    if (cw_grow(&P->leaks, &P->leaks_cap, P->nleaks, sizeof *P->leaks, 64) != 0) return;
    struct leak *l = &P->leaks[P->nleaks++];
    memset(l, 0, sizeof *l);
    l->fd = o->fd;
    l->seq = o->seq;
    l->id = o->id;
    l->site_index = (size_t)(g - P->sites);
    l->fin_ms = o->fin_ms;
    l->foreign = o->holder != 0 && o->holder != cw_program_pid();
    l->in_close = o->state == TCPS_CLOSE;
    l->holder = o->holder;
    snprintf(l->local, sizeof l->local, "%s", o->local != NULL ? o->local : "?");
    snprintf(l->peer, sizeof l->peer, "%s", o->peer != NULL ? o->peer : "?");
    g->now++;
    /* before the report is written: a program that reads it and asks closewait_leaks_open()
     * finds it counted */
    atomic_store(&P->area->open_now, cw_proc_open_now(P));
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
    if (!l->foreign) ndups = cw_proc_fds_of_socket(o->id, o->fd, dups, 8);
    if (o->proc_inode != 0) {
        /* its key is another socket's too: its copies are those /proc names alike */
        int same = 0;
        for (int i = 0; i < ndups; i++) {
            struct cw_slot *d = cw_proc_slot(dups[i]);
            uint32_t dseq = d != NULL ? atomic_load_explicit(&d->seq, memory_order_acquire) : 0;
            if (cw_proc_fd_inode(dups[i], dseq) == o->proc_inode) dups[same++] = dups[i];
        }
        ndups = same;
    }
    /* Its owner and callbacks: of the process that holds it (not a parent answering for an
     * inherited one). */
    struct cw_owner_event owner;
    struct cw_callbacks_event callbacks;
    int has_owner = 0, has_callbacks = 0;
    if (o->reason != REASON_INHERITED && !l->foreign) {
        has_owner = cw_owner_story(o->fd, now, &owner);
        has_callbacks = cw_owner_callbacks(o->fd, o->seq, &callbacks);
    }
    struct cw_leak_event e = {
        .pid = cw_program_pid(),
        .fd = o->fd,
        .reason = reason_names[o->reason],
        .state = cw_tcp_state_name(o->state),
        .local = l->local,
        .peer = l->peer,
        .opened_by = cw_op_name(o->opened_by),
        .role = cw_role_of(o),
        .exe = P->exe,
        .now_ms = now,
        .fin_ms = o->fin_ms,
        .open_ms = o->open_ms,
        .stable_id = g->stable_id,
        .site = g->number,
        .site_open = g->now,
        .site_ever = g->ever,
        .growing = cw_open_site_growing(g, now),
        .dups = dups,
        .ndups = ndups,
        .open_stack = o->open_stack,
        .eof_stack = o->eof_stack,
        .spawn_stack = o->spawn_stack,
        .eof_by = (o->flags & CW_SF_EOF) ? cw_op_name(o->eof_by) : NULL,
        .inherited = o->reason == REASON_INHERITED,
        .holder = o->holder,
        .spawned_by = cw_spawn_kind_name(o->spawn_kind),
        .site_first = !g->printed,
        .eof_stack_shown = (o->flags & CW_SF_EOF) ? text_stack_shown(o->eof_stack) : 0,
        .lang_open = o->lang_open,
        .lang_eof = o->lang_eof,
        .owner = has_owner ? &owner : NULL,
        .callbacks = has_callbacks ? &callbacks : NULL,
        .reg_stack_shown = has_callbacks && callbacks.stack != 0 ? text_stack_shown(callbacks.stack) : 0,
        .before_attach = o->before_attach,
    };
    g->printed = 1;
    cw_finding_announce();
    struct buf b = {0};
    cw_report_printer()->leak(&b, &e);
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

void cw_finding_closed(const struct leak *l, int64_t now, const char *how)
{
    struct open_site *g = &P->sites[l->site_index];
    g->now--;
    atomic_store(&P->area->open_now, cw_proc_open_now(P));
    struct cw_closed_event e = {
        .pid = cw_program_pid(),
        .fd = l->fd,
        .site = g->number,
        .stable_id = g->stable_id,
        .local = l->local,
        .peer = l->peer,
        .closed_by = how,
        .held_ms = now - l->fin_ms,
    };
    cw_finding_announce();
    struct buf b = {0};
    cw_report_printer()->closed(&b, &e);
    cw_sink_write(b.p, b.n);
    buf_free(&b);
}

void cw_finding_summary(const char *why)
{
    int64_t now = cw_now_ms();
    struct cw_summary_event e = {
        .pid = cw_program_pid(),
        .why = why,
        .total = P->total_reported,
        .suppressed = P->total_suppressed,
        .dropped = cw_sink_dropped(),
        .nsites = P->nsites,
    };
    struct cw_site_line *lines = calloc(P->nsites ? P->nsites : 1, sizeof *lines);
    if (lines == NULL) return;
    for (size_t i = 0; i < P->nsites; i++) {
        const struct open_site *g = &P->sites[i];
        lines[i] = (struct cw_site_line){g->stable_id, g->number, cw_open_site_growing(g, now), g->now, g->ever, g->stack,
                                         g->lang};
        e.open += g->now;
        if (g->now > 0) e.sites_open++;
    }
    e.sites = lines;
    struct buf b = {0};
    cw_report_printer()->summary(&b, &e);
    if (b.n > 0) {
        cw_finding_announce();
        cw_sink_write(b.p, b.n);
    }
    buf_free(&b);
    free(lines);
}
