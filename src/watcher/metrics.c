/*
 * CLOSEWAIT_METRICS: what the watcher knows, in Prometheus' text exposition format, for
 * node_exporter's textfile collector.  Written by the watcher (its process, or in thread mode
 * its thread, on a descriptor table of its own), never more often than once a second, and when
 * the last process of the tree answers its exit.
 *
 * Every series carries the program (and the pid when the path has `%p`); open sites are named
 * as the reports name them (the stack id, the top frame as closewait-report shows it).  The
 * series are bounded whatever the program does: the METRICS_SITES sites that hold the most, the
 * rest summed in one "other" series per program; the first METRICS_LISTENERS listeners.
 */
#define _GNU_SOURCE
#include "watcher/internal.h"
#include "report/promfile.h"

#include <stddef.h>

#include <fnmatch.h>

#define METRICS_SITES 20
#define METRICS_LISTENERS 20
#define METRICS_MIN_PERIOD_MS 1000
#define TOP_CACHE_MAX 1024
#define LABEL_MAX 256

static int64_t last_write_ms;
static pid_t owner_pid;
static char owner_exe[PATH_MAX];
static int forked_without_pid;
static int symbolized; /* libdw opened files for this write */ /* thread mode: a forked child whose path would be its parent's */

/* Leaks counted by processes that are gone, by program: the counters never go back. */
struct retired {
    char exe[PATH_MAX];
    long reported, suppressed;
};
static struct retired *retired;
static size_t nretired, retired_cap;

/* The top frame of each open stack, named once. */
struct top_entry {
    uint32_t stack;
    char *text;
};
static struct top_entry *tops;
static size_t ntops, tops_cap;

void cw_metrics_set_owner(pid_t pid)
{
    owner_pid = pid;
}

CW_FORK_PATH void cw_metrics_after_fork_child(void)
{
    /* Thread mode: the child's thread watches the child alone, from scratch (only there: each
     * page written here is a copy-on-write fault in every forked child). */
    if (!cw_private.fork_thread_mode) return;
    if (!cw_promfile_names_pid(cw_cfg.metrics_path)) forked_without_pid = 1;
    owner_pid = 0;
    last_write_ms = 0;
    nretired = 0;
}

static int enabled(void)
{
    /* The configuration may come from the region: a string the program could leave unended. */
    cw_cfg.metrics_path[sizeof cw_cfg.metrics_path - 1] = '\0';
    return cw_cfg.metrics_path[0] != '\0' && !forked_without_pid;
}

/* libc, the loader, the unwinder, this library: not the program's own code (as closewait-report's
 * SYSTEM_MODULE_GLOBS). */
static int system_module(const char *path)
{
    static const char *const globs[] = {"libclosewait*", "libc.so*", "libc-*",  "libpthread*", "ld-linux*",
                                        "ld-*.so*",      "ld.so*",   "libunwind*", "libdl.so*"};
    if (path == NULL) return 0;
    const char *slash = strrchr(path, '/');
    const char *base = slash != NULL ? slash + 1 : path;
    if (*base == '\0') return 0;
    for (size_t i = 0; i < sizeof globs / sizeof globs[0]; i++)
        if (fnmatch(globs[i], base, 0) == 0) return 1;
    return 0;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash != NULL ? slash + 1 : path;
}

/* `function (file:line)`, as closewait-report's top frame; "" when the stack is unknown. */
static void top_frame_text(uint32_t stack, char *out, size_t cap)
{
    static struct cw_frame f[CW_MAX_FRAMES];
    int n = cw_report_frames(stack, f, CW_MAX_FRAMES);
    out[0] = '\0';
    if (n <= 0) return;
    const struct cw_frame *top = &f[0];
    for (int i = 0; i < n; i++) {
        if (system_module(f[i].module)) continue;
        if (f[i].module == NULL && f[i].function != NULL &&
            (strncmp(f[i].function, "closewait_", 10) == 0 || strncmp(f[i].function, "__closewait", 11) == 0))
            continue;
        top = &f[i];
        break;
    }
    size_t len;
    if (top->function != NULL) len = (size_t)snprintf(out, cap, "%s", top->function);
    else if (top->module != NULL) len = (size_t)snprintf(out, cap, "%s+0x%lx", base_name(top->module), (unsigned long)top->offset);
    else len = (size_t)snprintf(out, cap, "0x%lx", (unsigned long)top->pc);
    if (len < cap && top->file != NULL) {
        if (top->line > 0) snprintf(out + len, cap - len, " (%s:%d)", base_name(top->file), top->line);
        else snprintf(out + len, cap - len, " (%s)", base_name(top->file));
    }
}

static const char *top_frame_of(uint32_t stack)
{
    for (size_t i = 0; i < ntops; i++)
        if (tops[i].stack == stack) return tops[i].text;
    if (ntops >= TOP_CACHE_MAX) {
        for (size_t i = 0; i < ntops; i++) free(tops[i].text);
        ntops = 0;
    }
    char text[LABEL_MAX];
    top_frame_text(stack, text, sizeof text);
    char *copy = strdup(text);
    if (copy == NULL || cw_grow(&tops, &tops_cap, ntops, sizeof *tops, 32) != 0) {
        free(copy);
        return "";
    }
    tops[ntops++] = (struct top_entry){stack, copy};
    symbolized = 1;
    return copy;
}

void cw_metrics_retire(const struct proc *p)
{
    if (!enabled() || (p->total_reported == 0 && p->total_suppressed == 0)) return;
    struct retired *r = NULL;
    for (size_t i = 0; i < nretired && r == NULL; i++)
        if (strcmp(retired[i].exe, p->exe) == 0) r = &retired[i];
    if (r == NULL) {
        if (cw_grow(&retired, &retired_cap, nretired, sizeof *retired, 4) != 0) return;
        r = &retired[nretired++];
        memset(r, 0, sizeof *r);
        snprintf(r->exe, sizeof r->exe, "%s", p->exe);
    }
    r->reported += p->total_reported;
    r->suppressed += p->total_suppressed;
}

/* ---- the file ---- */

struct site_row {
    const char *exe;
    uint64_t id;
    uint32_t stack;
    long now, ever;
};

static int by_program_and_id(const void *a, const void *b)
{
    const struct site_row *x = a, *y = b;
    int c = strcmp(x->exe, y->exe);
    if (c != 0) return c;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Most held now first, then most reported, then the id: the order of the reports. */
static int by_weight(const void *a, const void *b)
{
    const struct site_row *x = a, *y = b;
    if (x->now != y->now) return x->now > y->now ? -1 : 1;
    if (x->ever != y->ever) return x->ever > y->ever ? -1 : 1;
    int c = strcmp(x->exe, y->exe);
    if (c != 0) return c;
    return x->id < y->id ? -1 : x->id > y->id;
}

struct program_row {
    const char *exe;
    long reported, suppressed, sites, procs, other_now;
    int other;
};

static struct program_row *program_for(struct program_row *rows, size_t *n, size_t cap, const char *exe)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(rows[i].exe, exe) == 0) return &rows[i];
    if (*n >= cap) return NULL;
    memset(&rows[*n], 0, sizeof rows[*n]);
    rows[*n].exe = exe;
    return &rows[(*n)++];
}

static void labels(struct buf *b, const char *exe, int with_pid)
{
    buf_puts(b, "{program=\"");
    buf_prom_label(b, exe, LABEL_MAX);
    buf_puts(b, "\"");
    if (with_pid) buf_printf(b, ",pid=\"%ld\"", (long)owner_pid);
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int listener_shown(const struct listener *l, int64_t now, int64_t period)
{
    return l->port != 0 && now - l->seen_ms <= 3 * period;
}

static void render(struct buf *b, int64_t now, int64_t period)
{
    int with_pid = cw_promfile_names_pid(cw_cfg.metrics_path);
    if (owner_pid == 0) owner_pid = getpid();
    for (size_t k = 0; k < nprocs; k++)
        if (procs[k].pid == owner_pid || owner_exe[0] == '\0') snprintf(owner_exe, sizeof owner_exe, "%s", procs[k].exe);

    /* Programs: the live ones, and those whose processes are gone. */
    size_t prog_cap = nprocs + nretired + 1, nprog = 0;
    struct program_row *progs = calloc(prog_cap, sizeof *progs);
    size_t nrows = 0;
    for (size_t k = 0; k < nprocs; k++)
        if (!procs[k].untrusted) nrows += procs[k].nsites;
    struct site_row *rows = calloc(nrows ? nrows : 1, sizeof *rows);
    if (progs == NULL || rows == NULL) {
        free(progs);
        free(rows);
        b->failed = 1;
        return;
    }
    program_for(progs, &nprog, prog_cap, owner_exe[0] != '\0' ? owner_exe : "?");
    for (size_t i = 0; i < nretired; i++) {
        struct program_row *pr = program_for(progs, &nprog, prog_cap, retired[i].exe);
        pr->reported += retired[i].reported;
        pr->suppressed += retired[i].suppressed;
    }
    size_t n = 0;
    for (size_t k = 0; k < nprocs; k++) {
        const struct proc *p = &procs[k];
        if (p->untrusted) continue;
        struct program_row *pr = program_for(progs, &nprog, prog_cap, p->exe);
        pr->procs++;
        pr->reported += p->total_reported;
        pr->suppressed += p->total_suppressed;
        for (size_t i = 0; i < p->nsites; i++) {
            const struct open_site *g = &p->sites[i];
            rows[n++] = (struct site_row){p->exe, g->stable_id, g->stack, g->now, g->ever};
        }
    }
    /* One row per program and site, over every process of the tree. */
    qsort(rows, n, sizeof *rows, by_program_and_id);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && rows[m - 1].id == rows[i].id && strcmp(rows[m - 1].exe, rows[i].exe) == 0) {
            rows[m - 1].now += rows[i].now;
            rows[m - 1].ever += rows[i].ever;
        } else {
            rows[m++] = rows[i];
        }
    }
    qsort(rows, m, sizeof *rows, by_weight);
    for (size_t i = 0; i < m; i++) {
        struct program_row *pr = program_for(progs, &nprog, prog_cap, rows[i].exe);
        if (pr == NULL) continue;
        pr->sites++;
        if (i >= METRICS_SITES) {
            pr->other = 1;
            pr->other_now += rows[i].now;
        }
    }

    family(b, "closewait_sockets_held", "gauge",
           "Sockets held in CLOSE_WAIT past the grace period (reported, not closed yet), by open site: the "
           "20 sites that hold the most, the others summed in stack_id=\"other\".");
    for (size_t i = 0; i < m && i < METRICS_SITES; i++) {
        buf_puts(b, "closewait_sockets_held");
        labels(b, rows[i].exe, with_pid);
        buf_printf(b, ",stack_id=\"%016llx\",top_frame=\"", (unsigned long long)rows[i].id);
        buf_prom_label(b, top_frame_of(rows[i].stack), LABEL_MAX);
        buf_printf(b, "\"} %ld\n", rows[i].now);
    }
    for (size_t i = 0; i < nprog; i++) {
        if (!progs[i].other) continue;
        buf_puts(b, "closewait_sockets_held");
        labels(b, progs[i].exe, with_pid);
        buf_printf(b, ",stack_id=\"other\",top_frame=\"\"} %ld\n", progs[i].other_now);
    }
    /* One series a program for each of these. */
    static const struct {
        const char *name, *type, *help;
        size_t field;
    } per_program[] = {
        {"closewait_open_sites", "gauge", "Open sites (code that opened a socket later reported) known in the running processes.",
         offsetof(struct program_row, sites)},
        {"closewait_leaks_reported_total", "counter", "Sockets reported held in CLOSE_WAIT past the grace period, in all.",
         offsetof(struct program_row, reported)},
        {"closewait_leaks_suppressed_total", "counter", "Leaks not reported because CLOSEWAIT_SUPPRESSIONS matched them, in all.",
         offsetof(struct program_row, suppressed)},
        {"closewait_processes_watched", "gauge", "Processes of the program watched now.",
         offsetof(struct program_row, procs)},
    };
    for (size_t f = 0; f < sizeof per_program / sizeof per_program[0]; f++) {
        family(b, per_program[f].name, per_program[f].type, per_program[f].help);
        for (size_t i = 0; i < nprog; i++) {
            long v;
            memcpy(&v, (const char *)&progs[i] + per_program[f].field, sizeof v);
            buf_puts(b, per_program[f].name);
            labels(b, progs[i].exe, with_pid);
            buf_printf(b, "} %ld\n", v);
        }
    }

    /* Listeners: the first ones met, in order (a bounded, stable set). */
    static const struct {
        const char *name, *type, *help;
    } lf[] = {
        {"closewait_backlog_dead_accepted_total", "counter",
         "Connections accept() returned already closed by the client, after it gave up waiting in the accept queue."},
        {"closewait_backlog_dead_queued", "gauge", "Connections closed by the client, still waiting in the accept queue."},
        {"closewait_accept_queue_full_total", "counter",
         "Times the accept queue was found over its limit for a while (the kernel dropping SYNs)."},
    };
    for (size_t f = 0; f < sizeof lf / sizeof lf[0]; f++) {
        family(b, lf[f].name, lf[f].type, lf[f].help);
        size_t shown = 0;
        long other = 0;
        int any_other = 0;
        for (size_t k = 0; k < nprocs; k++) {
            const struct proc *p = &procs[k];
            if (p->untrusted) continue;
            for (size_t i = 0; i < p->nlisteners; i++) {
                const struct listener *l = &p->listeners[i];
                if (!listener_shown(l, now, period)) continue;
                long v = f == 0 ? (long)l->dead_now : f == 1 ? (long)l->queued_now : l->full_events;
                if (shown >= METRICS_LISTENERS) {
                    other += v;
                    any_other = 1;
                    continue;
                }
                shown++;
                buf_puts(b, lf[f].name);
                labels(b, p->exe, with_pid);
                buf_puts(b, ",listen=\"");
                buf_prom_label(b, l->addr, sizeof l->addr);
                buf_printf(b, "\"} %ld\n", v);
            }
        }
        if (any_other) {
            buf_puts(b, lf[f].name);
            labels(b, owner_exe, with_pid);
            buf_printf(b, ",listen=\"other\"} %ld\n", other);
        }
    }

    /* The watcher itself. */
    long restarts = 0;
    if (!thread_mode && cw_sh != NULL) restarts = (long)atomic_load(&cw_sh->watcher_restarts);
    family(b, "closewait_reports_dropped_total", "counter",
           "Reports that could not be written (a full pipe or disk, a FIFO nobody reads, a refused log).");
    buf_puts(b, "closewait_reports_dropped_total");
    labels(b, progs[0].exe, with_pid);
    buf_printf(b, "} %ld\n", cw_sink_dropped());
    family(b, "closewait_watcher_restarts_total", "counter", "Watcher processes started again after one died.");
    buf_puts(b, "closewait_watcher_restarts_total");
    labels(b, progs[0].exe, with_pid);
    buf_printf(b, "} %ld\n", restarts);
    family(b, "closewait_sock_diag_dumps_total", "counter",
           "Socket lists the watcher asked of the kernel: connections (a walk of every TCP socket of the "
           "network namespace, TIME_WAIT ones included), listeners (the listening table alone).");
    static const char *const tables[] = {"connections", "listeners"};
    for (int t = 0; t < 2; t++) {
        buf_puts(b, "closewait_sock_diag_dumps_total");
        labels(b, progs[0].exe, with_pid);
        buf_printf(b, ",table=\"%s\"} %ld\n", tables[t], cw_dumps_taken[t]);
    }
    free(rows);
    free(progs);
}

void cw_metrics_write(int64_t now, int now_or_never)
{
    if (!enabled()) return;
    /* Once per look, but at most once a second: the file is for a scraper that comes every
     * 15 s or so, and each write is a new file and a rename. */
    int64_t period = cw_watch_interval_ms > cw_cfg.interval_ms ? cw_watch_interval_ms : cw_cfg.interval_ms;
    if (period < METRICS_MIN_PERIOD_MS) period = METRICS_MIN_PERIOD_MS;
    if (!now_or_never && last_write_ms != 0 && now - last_write_ms < period) return;
    last_write_ms = now;
    struct buf b = {0};
    render(&b, now, period);
    if (!b.failed && b.n > 0) cw_promfile_write(cw_cfg.metrics_path, owner_pid, b.p, b.n);
    buf_free(&b);
    if (symbolized) cw_symbolize_release();
    symbolized = 0;
}

void cw_metrics_at_exit_of(const struct proc *p)
{
    /* The tree's last process: its counts as at its exit.  Others (a forking server's children
     * come and go) wait for the next regular write. */
    int others = 0;
    for (size_t k = 0; k < nprocs && !others; k++)
        others = &procs[k] != p && atomic_load(&procs[k].area->state) == AREA_LIVE;
    cw_metrics_write(cw_now_ms(), !others);
}
