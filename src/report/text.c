/* CLOSEWAIT_FORMAT=text (the default): LeakSanitizer-style lines for people.  Each open site's
 * stack is written in full at its first report in a process; later ones point back to it. */
#define _GNU_SOURCE
#include "report/report.h"
#include "unwind/symbolize.h"
#include "shared/langstack.h"
#include "shared/owners.h"

#include <stdlib.h>
#include <string.h>

/* At most `max` frames (the rest counted), all with max < 0. */
static void frames_upto(struct buf *b, uint32_t id, int max)
{
    struct cw_frame f[CW_MAX_FRAMES];
    int n = cw_report_frames(id, f, CW_MAX_FRAMES);
    if (n == 0) buf_puts(b, "    (no backtrace: none could be taken, or born before an eBPF attach)\n");
    for (int i = 0; i < n; i++) {
        if (max >= 0 && i >= max) {
            buf_printf(b, "    ... %d more native frame(s) (CLOSEWAIT_FORMAT=json has them all)\n", n - i);
            break;
        }
        buf_printf(b, "    #%d 0x%lx in %s", i, (unsigned long)f[i].pc, f[i].function != NULL ? f[i].function : "??");
        if (f[i].file != NULL) buf_printf(b, " %s:%d", f[i].file, f[i].line);
        if (f[i].inlined) buf_puts(b, " (inlined)");
        if (f[i].tail_call) buf_puts(b, " (tail call, recovered)");
        buf_printf(b, " (%s+0x%lx)\n", f[i].module != NULL ? f[i].module : "?", (unsigned long)f[i].offset);
    }
}

static void frames(struct buf *b, uint32_t id)
{
    frames_upto(b, id, -1);
}

/* A language stack, read once per use (the watcher's stack is small: it lives here). */
static struct cw_lang_stack lang_stack;

static const struct cw_lang_stack *lang_of(uint32_t id)
{
    return id != 0 && cw_lang_read(id, &lang_stack) == 0 ? &lang_stack : NULL;
}

static const char *base_of(const char *path)
{
    const char *s = strrchr(path, '/');
    return s != NULL && s[1] != '\0' ? s + 1 : path;
}

/* " at server.py:42 in handle": the first frame of the program's own code. */
static void lang_at(struct buf *b, const char *what, uint32_t id)
{
    const struct cw_lang_stack *ls = lang_of(id);
    if (ls == NULL) return;
    const struct cw_lang_frame *f = &ls->f[ls->first_program >= 0 ? ls->first_program : 0];
    buf_printf(b, "%s %s:%d in %s", what, base_of(f->file), f->line, f->function);
}

/* The program's stack in its language, then the native one under it. */
static void stack(struct buf *b, uint32_t native, uint32_t lang)
{
    const struct cw_lang_stack *ls = lang_of(lang);
    if (ls == NULL) {
        frames(b, native);
        return;
    }
    buf_printf(b, "  in %s:\n", ls->lang);
    for (int i = 0; i < ls->n; i++)
        buf_printf(b, "    #%d in %s %s:%d%s\n", i, ls->f[i].function, ls->f[i].file, ls->f[i].line,
                   ls->f[i].program ? "" : " (library)");
    /* The interpreter's own frames under it: where it entered the C library is what helps. */
    buf_puts(b, "  native:\n");
    frames_upto(b, native, 6);
}

/* "function file:line" of a frame. */
static void frame_name(struct buf *b, const struct cw_frame *f)
{
    buf_puts(b, f->function != NULL ? f->function : "??");
    if (f->file != NULL) {
        const char *base = strrchr(f->file, '/');
        buf_printf(b, " %s:%d", base != NULL ? base + 1 : f->file, f->line);
    }
}

/* Frames of the C library, the loader, the unwinder, sanitizer runtimes and ours: not where a
 * person looks (closewait-report's top frame skips the same). */
static int system_frame(const struct cw_frame *f)
{
    static const char *const prefixes[] = {"libclosewait", "libc.so", "libc-", "libpthread", "ld-", "ld.so",
                                            "libunwind", "libdl.so", "libasan.so", "libtsan.so", "libubsan.so",
                                            "liblsan.so", "libhwasan.so"};
    if (f->module == NULL) return 0;
    const char *base = strrchr(f->module, '/');
    base = base != NULL ? base + 1 : f->module;
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (strncmp(base, prefixes[i], strlen(prefixes[i])) == 0) return 1;
    return 0;
}

/* The innermost frame of a stored stack in the program's own code, by name. */
static void stack_top(struct buf *b, uint32_t id)
{
    struct cw_frame f[8];
    int n = cw_report_frames(id, f, 8), i = 0;
    while (i < n - 1 && system_frame(&f[i])) i++;
    if (n > 0) frame_name(b, &f[i]);
    else buf_puts(b, "??");
}

static void pc_name(struct buf *b, uintptr_t pc, int exact)
{
    struct cw_frame f[CW_MAX_FRAMES];
    if (cw_symbolize(pc, exact, f, CW_MAX_FRAMES) > 0) frame_name(b, &f[0]);
    else buf_printf(b, "0x%lx", (unsigned long)pc);
}

static void owner(struct buf *b, int pid, const struct cw_owner_event *o)
{
    buf_printf(b, "==%d==  its owner, thread %ld", pid, (long)o->tid);
    if (o->name[0] != '\0') buf_printf(b, " (%s)", o->name);
    if (!o->alive) {
        buf_puts(b, ", has exited\n");
        return;
    }
    if (o->unrecorded) {
        /* a thread gets a record at its first blocking call on a tracked socket, while any are left */
        buf_printf(b,
                   ", is alive; none of its calls is recorded (no blocking call on a tracked socket yet, "
                   "or more than %d threads)\n",
                   CW_MAX_THREADS);
        return;
    }
    if (o->call == NULL) {
        buf_puts(b, ", is alive, not waiting on a blocking socket\n");
        return;
    }
    buf_puts(b, ", has been blocked");
    if (o->blocked_ms >= 0) buf_printf(b, " %.1f s", (double)o->blocked_ms / 1000.0);
    buf_printf(b, " in %s()", o->call);
    if (o->fd >= 0) buf_printf(b, " on fd %d", o->fd);
    if (o->caller != 0) {
        buf_puts(b, " called from ");
        pc_name(b, o->caller, 0);
    }
    buf_puts(b, "\n");
    if (o->fd_tracked) {
        int client = strcmp(o->role, "client") == 0;
        buf_printf(b, "==%d==  fd %d: %s %s %s %s (%s), opened by %s at ", pid, o->fd, o->role, o->local,
                   client ? "->" : "<-", o->peer, o->state, o->opened_by);
        stack_top(b, o->open_stack);
        buf_puts(b, "\n");
    }
}

static void callbacks(struct buf *b, int pid, const struct cw_callbacks_event *c, int stack_shown)
{
    buf_printf(b, "==%d==  event-loop callbacks:", pid);
    const char *sep = " ";
    const struct { const char *role; uintptr_t pc; } cbs[] = {
        {"read", c->read}, {"event", c->event}, {"write", c->write}, {"connection", c->connection}};
    for (size_t i = 0; i < sizeof cbs / sizeof cbs[0]; i++) {
        if (cbs[i].pc == 0) continue;
        buf_printf(b, "%s%s ", sep, cbs[i].role);
        pc_name(b, cbs[i].pc, 1);
        sep = ", ";
    }
    if (c->stack == 0) {
        buf_printf(b, "; registered by %s\n", c->registered_by);
    } else if (stack_shown) {
        buf_printf(b, "; registered by %s in ", c->registered_by);
        stack_top(b, c->stack);
        buf_puts(b, ", the same stack as shown above\n");
    } else {
        buf_printf(b, "; registered by %s at:\n", c->registered_by);
        frames(b, c->stack);
    }
}

static void leak(struct buf *b, const struct cw_leak_event *e)
{
    int pid = (int)e->pid;
    double held = (double)(e->now_ms - e->fin_ms) / 1000.0;
    if (e->before_attach) {
        buf_printf(b,
                   "==%d==closewait: fd %d held in %s since before the attach, the peer's last segment %.1f s ago (%s)\n"
                   "==%d==  connection %s <-> %s; where it was opened is not known (born before the attach)\n\n",
                   pid, e->fd, e->state, held, e->reason, pid, e->local, e->peer);
        return;
    }
    buf_printf(b, "==%d==closewait: fd %d held in %s %.1f s after the peer closed (%s)\n", pid, e->fd, e->state, held,
               e->reason);
    buf_printf(b, "==%d==  %s connection %s %s %s, opened by %s %.1f s ago", pid, e->role, e->local,
               strcmp(e->role, "client") == 0 ? "->" : "<-", e->peer, e->opened_by,
               (double)(e->now_ms - e->open_ms) / 1000.0);
    lang_at(b, ", at", e->lang_open);
    if (e->eof_by != NULL) lang_at(b, "; EOF read at", e->lang_eof);
    if (e->ndups > 0) {
        buf_puts(b, "; also held as fd");
        for (int i = 0; i < e->ndups; i++) buf_printf(b, " %d", e->dups[i]);
    }
    buf_puts(b, "\n");
    if (e->site_first) {
        buf_printf(b, "Socket opened at (open site #%d, stack %016llx):\n", e->site, (unsigned long long)e->stable_id);
        stack(b, e->open_stack, e->lang_open);
    } else {
        buf_printf(b, "Socket opened at open site #%d (stack %016llx), shown above: %ld open now, %ld in all%s\n",
                   e->site, (unsigned long long)e->stable_id, e->site_open, e->site_ever,
                   e->growing ? ", growing" : "");
    }
    if (e->eof_by != NULL) {
        if (e->eof_stack_shown && lang_of(e->lang_eof) != NULL) {
            buf_printf(b, "EOF read by %s", e->eof_by);
            lang_at(b, " at", e->lang_eof);
            buf_puts(b, "\n");
        } else if (e->eof_stack_shown) {
            struct cw_frame f[4];
            int nf = cw_report_frames(e->eof_stack, f, 4);
            buf_printf(b, "EOF read by %s in %s", e->eof_by, nf > 0 && f[0].function != NULL ? f[0].function : "??");
            if (nf > 0 && f[0].file != NULL) buf_printf(b, " %s:%d", f[0].file, f[0].line);
            buf_puts(b, ", the same stack as shown above\n");
        } else {
            buf_printf(b, "EOF read by %s at:\n", e->eof_by);
            stack(b, e->eof_stack, e->lang_eof);
        }
    }
    if (e->callbacks != NULL) callbacks(b, pid, e->callbacks, e->reg_stack_shown);
    if (e->owner != NULL) owner(b, pid, e->owner);
    if (e->inherited) {
        buf_printf(b, "Held by process %ld, which inherited it through %s at:\n", (long)e->holder, e->spawned_by);
        frames(b, e->spawn_stack);
    }
    buf_puts(b, "\n");
}

static void closed(struct buf *b, const struct cw_closed_event *e)
{
    buf_printf(b, "==%d==closewait: fd %d (%s <- %s) closed at last, %.1f s after the peer closed (open site #%d)\n\n",
               (int)e->pid, e->fd, e->local, e->peer, (double)e->held_ms / 1000.0, e->site);
}

static void backlog(struct buf *b, const struct cw_backlog_event *e)
{
    int pid = (int)e->pid;
    if (strcmp(e->reason, "accept_queue_full") == 0)
        buf_printf(b, "==%d==closewait: listener %s (backlog %d): accept queue full (%u waiting, limit %u); "
                      "the kernel is dropping new connections' SYNs and clients retry (accept_queue_full)\n",
                   pid, e->listen, e->backlog, e->queue_len, e->queue_limit);
    else
        buf_printf(b, "==%d==closewait: listener %s (backlog %d): %u connection(s) accepted after the client "
                      "had given up, %u dead in the accept queue now (peer_closed_in_backlog)\n",
                   pid, e->listen, e->backlog, e->accepted_dead, e->queued_dead);
    buf_puts(b, "Listening socket set up at:\n");
    frames(b, e->stack);
    buf_puts(b, "\n");
}

static void summary(struct buf *b, const struct cw_summary_event *e)
{
    int pid = (int)e->pid;
    if (e->total == 0 && e->suppressed == 0) {
        if (strcmp(e->why, "exit") == 0) return;
        buf_printf(b, "==%d==closewait: no socket held in CLOSE_WAIT so far\n", pid);
        return;
    }
    buf_printf(b, "==%d==closewait: findings (%s), by open site:\n", pid, e->why);
    /* most open first, then most ever */
    size_t *order = calloc(e->nsites ? e->nsites : 1, sizeof *order);
    if (order != NULL) {
        for (size_t i = 0; i < e->nsites; i++) order[i] = i;
        for (size_t i = 1; i < e->nsites; i++)
            for (size_t j = i; j > 0; j--) {
                const struct cw_site_line *a = &e->sites[order[j - 1]], *c = &e->sites[order[j]];
                if (a->now > c->now || (a->now == c->now && a->ever >= c->ever)) break;
                size_t t = order[j - 1];
                order[j - 1] = order[j];
                order[j] = t;
            }
        for (size_t k = 0; k < e->nsites; k++) {
            const struct cw_site_line *s = &e->sites[order[k]];
            buf_printf(b, "Open site #%d (stack %016llx): %ld socket(s) held now, %ld in all%s\n", s->site,
                       (unsigned long long)s->stable_id, s->now, s->ever, s->growing ? ", growing" : "");
            stack(b, s->stack, s->lang);
        }
    }
    free(order);
    buf_printf(b, "SUMMARY: closewait: %ld socket(s) held in CLOSE_WAIT from %zu open site(s); %ld reported in all",
               e->open, e->sites_open, e->total);
    if (e->suppressed) buf_printf(b, ", %ld suppressed", e->suppressed);
    if (e->dropped > 0) buf_printf(b, "; %ld report(s) could not be written", e->dropped);
    buf_puts(b, ".\n");
}

const struct cw_printer cw_printer_text = {"text", NULL, leak, closed, backlog, summary};
