/* CLOSEWAIT_FORMAT=json: JSON Lines, one event per line (docs/CONTRACT.md). */
#define _GNU_SOURCE
#include "report/report.h"
#include "unwind/symbolize.h"
#include "shared/langstack.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static void iso_time(int64_t wall_ms, char *out, size_t cap)
{
    time_t t = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(wall_ms % 1000));
}

static void head(struct buf *b, const char *event, pid_t pid)
{
    int64_t wall = cw_wall_ms();
    char iso[64];
    iso_time(wall, iso, sizeof iso);
    buf_printf(b, "{\"event\":\"%s\",\"pid\":%ld,\"time\":\"%s\",\"ts_ms\":%lld", event, (long)pid, iso,
               (long long)wall);
}

static void frame_obj(struct buf *b, const struct cw_frame *f)
{
    buf_printf(b, "{\"pc\":\"0x%lx\",\"module\":", (unsigned long)f->pc);
    buf_json_str(b, f->module);
    buf_printf(b, ",\"offset\":\"0x%lx\"", (unsigned long)f->offset);
    if (f->build_id != NULL) buf_printf(b, ",\"build_id\":\"%s\"", f->build_id);
    if (f->function != NULL) {
        buf_puts(b, ",\"function\":");
        buf_json_str(b, f->function);
    }
    if (f->file != NULL) {
        buf_puts(b, ",\"file\":");
        buf_json_str(b, f->file);
        buf_printf(b, ",\"line\":%d", f->line);
    }
    if (f->inlined) buf_puts(b, ",\"inlined\":true");
    if (f->tail_call) buf_puts(b, ",\"tail_call\":true");
    buf_puts(b, "}");
}

static void frames(struct buf *b, const char *key, uint32_t id)
{
    struct cw_frame f[CW_MAX_FRAMES];
    int n = cw_report_frames(id, f, CW_MAX_FRAMES);
    buf_printf(b, ",\"%s\":[", key);
    for (int i = 0; i < n; i++) {
        if (i) buf_puts(b, ",");
        frame_obj(b, &f[i]);
    }
    buf_puts(b, "]");
}

static struct cw_lang_stack lang_stack; /* big: not on the watcher's stack */

static void lang_frame(struct buf *b, const struct cw_lang_frame *f)
{
    buf_puts(b, "{\"function\":");
    buf_json_str(b, f->function);
    buf_puts(b, ",\"file\":");
    buf_json_str(b, f->file);
    buf_printf(b, ",\"line\":%d,\"program\":%s}", f->line, f->program ? "true" : "false");
}

/* ,"KEY_stack":[frames],"KEY_at":{first frame of the program's code}; with `lang`, "lang" too. */
static void lang_frames(struct buf *b, const char *key, uint32_t id, int lang)
{
    if (id == 0 || cw_lang_read(id, &lang_stack) != 0) return;
    const struct cw_lang_stack *ls = &lang_stack;
    if (lang) {
        buf_puts(b, ",\"lang\":");
        buf_json_str(b, ls->lang);
    }
    buf_printf(b, ",\"%s_stack\":[", key);
    for (int i = 0; i < ls->n; i++) {
        if (i) buf_puts(b, ",");
        lang_frame(b, &ls->f[i]);
    }
    buf_printf(b, "],\"%s_at\":", key);
    if (ls->first_program >= 0)
        lang_frame(b, &ls->f[ls->first_program]);
    else
        buf_puts(b, "null");
}

/* One code address as a frame: exact (a callback's entry) or a return address. */
static void pc_frame(struct buf *b, const char *key, uintptr_t pc, int exact)
{
    struct cw_frame f[CW_MAX_FRAMES];
    int n = cw_symbolize(pc, exact, f, CW_MAX_FRAMES);
    buf_printf(b, ",\"%s\":", key);
    if (n > 0) {
        frame_obj(b, &f[0]);
    } else {
        struct cw_frame none = {.pc = pc};
        frame_obj(b, &none);
    }
}

static void owner(struct buf *b, const struct cw_owner_event *o)
{
    buf_printf(b, ",\"owner\":{\"tid\":%ld,\"alive\":%s", (long)o->tid, o->alive ? "true" : "false");
    if (o->name[0] != '\0') {
        buf_puts(b, ",\"name\":");
        buf_json_str(b, o->name);
    }
    if (o->unrecorded) buf_puts(b, ",\"calls_recorded\":false");
    if (o->call != NULL) {
        buf_printf(b, ",\"blocked_in\":\"%s\"", o->call);
        if (o->fd >= 0) buf_printf(b, ",\"blocked_fd\":%d", o->fd);
        if (o->blocked_ms >= 0) buf_printf(b, ",\"blocked_ms\":%lld", (long long)o->blocked_ms);
        if (o->caller != 0) pc_frame(b, "blocked_caller", o->caller, 0);
        if (o->fd_tracked) {
            buf_puts(b, ",\"blocked_fd_socket\":{\"local\":");
            buf_json_str(b, o->local);
            buf_puts(b, ",\"peer\":");
            buf_json_str(b, o->peer);
            buf_printf(b, ",\"state\":\"%s\",\"opened_by\":\"%s\",\"role\":\"%s\"", o->state, o->opened_by, o->role);
            frames(b, "open_stack", o->open_stack);
            buf_puts(b, "}");
        }
    }
    buf_puts(b, "}");
}

static void callbacks(struct buf *b, const struct cw_callbacks_event *c)
{
    buf_printf(b, ",\"callbacks\":{\"registered_by\":\"%s\"", c->registered_by);
    if (c->connection != 0) pc_frame(b, "connection", c->connection, 1);
    if (c->read != 0) pc_frame(b, "read", c->read, 1);
    if (c->write != 0) pc_frame(b, "write", c->write, 1);
    if (c->event != 0) pc_frame(b, "event", c->event, 1);
    if (c->stack != 0) frames(b, "registration_stack", c->stack);
    buf_puts(b, "}");
}

static void start(struct buf *b, const struct cw_start_event *e)
{
    head(b, "start", e->pid);
    buf_printf(b, ",\"ppid\":%ld,\"exe\":", (long)e->ppid);
    buf_json_str(b, e->exe);
    buf_puts(b, ",\"host\":");
    buf_json_str(b, e->host);
    buf_printf(b, ",\"grace_ms\":%lld,\"watch\":\"sock_diag\",\"watcher\":\"%s\",\"version\":\"%s\"}\n",
               (long long)e->grace_ms, e->watcher, e->version);
}

static void leak(struct buf *b, const struct cw_leak_event *e)
{
    /* Symbolize first, so that the event's time and its ages are taken together. */
    struct buf fr = {0};
    if (e->inherited) frames(&fr, "spawn_stack", e->spawn_stack);
    frames(&fr, "open_stack", e->open_stack);
    lang_frames(&fr, "lang_open", e->lang_open, 1);
    if (e->eof_by != NULL) {
        buf_printf(&fr, ",\"eof_by\":\"%s\"", e->eof_by);
        frames(&fr, "eof_stack", e->eof_stack);
        lang_frames(&fr, "lang_eof", e->lang_eof, e->lang_open == 0);
    }
    if (e->owner != NULL) owner(&fr, e->owner);
    if (e->callbacks != NULL) callbacks(&fr, e->callbacks);
    int64_t now = cw_now_ms();
    head(b, "leak", e->pid);
    buf_printf(b, ",\"fd\":%d,\"reason\":\"%s\",\"state\":\"%s\",\"local\":", e->fd, e->reason, e->state);
    buf_json_str(b, e->local);
    buf_puts(b, ",\"peer\":");
    buf_json_str(b, e->peer);
    buf_printf(b, ",\"since_fin_ms\":%lld,\"open_age_ms\":%lld,\"opened_by\":\"%s\",\"role\":\"%s\"",
               (long long)(now - e->fin_ms), (long long)(now - e->open_ms), e->opened_by, e->role);
    buf_printf(b, ",\"stack_id\":\"%016llx\",\"site\":%d,\"site_open\":%ld,\"site_ever\":%ld,\"growing\":%s",
               (unsigned long long)e->stable_id, e->site, e->site_open, e->site_ever, e->growing ? "true" : "false");
    if (e->ndups > 0) {
        buf_puts(b, ",\"dup_fds\":[");
        for (int i = 0; i < e->ndups; i++) buf_printf(b, "%s%d", i ? "," : "", e->dups[i]);
        buf_puts(b, "]");
    }
    buf_puts(b, ",\"exe\":");
    buf_json_str(b, e->exe);
    if (e->before_attach) buf_puts(b, ",\"before_attach\":true");
    if (e->inherited) buf_printf(b, ",\"holder_pid\":%ld,\"spawned_by\":\"%s\"", (long)e->holder, e->spawned_by);
    if (fr.p != NULL) buf_put(b, fr.p, fr.n);
    buf_free(&fr);
    buf_puts(b, "}\n");
}

static void closed(struct buf *b, const struct cw_closed_event *e)
{
    head(b, "closed_late", e->pid);
    buf_printf(b, ",\"fd\":%d,\"stack_id\":\"%016llx\",\"local\":", e->fd, (unsigned long long)e->stable_id);
    buf_json_str(b, e->local);
    buf_puts(b, ",\"peer\":");
    buf_json_str(b, e->peer);
    buf_printf(b, ",\"held_ms\":%lld,\"closed_by\":\"%s\"}\n", (long long)e->held_ms, e->closed_by);
}

static void backlog(struct buf *b, const struct cw_backlog_event *e)
{
    head(b, "backlog", e->pid);
    buf_printf(b, ",\"reason\":\"%s\",\"fd\":%d,\"listen\":", e->reason, e->fd);
    buf_json_str(b, e->listen);
    buf_printf(b, ",\"backlog\":%d,\"accepted_dead\":%u,\"queued_dead\":%u,\"queue_len\":%u,\"queue_limit\":%u",
               e->backlog, e->accepted_dead, e->queued_dead, e->queue_len, e->queue_limit);
    buf_printf(b, ",\"stack_id\":\"%016llx\",\"exe\":", (unsigned long long)e->stable_id);
    buf_json_str(b, e->exe);
    frames(b, "listen_stack", e->stack);
    buf_puts(b, "}\n");
}

static void summary(struct buf *b, const struct cw_summary_event *e)
{
    if (e->total == 0 && e->suppressed == 0 && strcmp(e->why, "exit") == 0) return; /* nothing to say */
    head(b, "summary", e->pid);
    buf_printf(b, ",\"why\":\"%s\",\"leaks_open\":%ld,\"leaks_total\":%ld,\"suppressed\":%ld", e->why, e->open,
               e->total, e->suppressed);
    if (e->dropped > 0) buf_printf(b, ",\"reports_dropped\":%ld", e->dropped);
    buf_puts(b, ",\"findings\":[");
    for (size_t i = 0; i < e->nsites; i++) {
        const struct cw_site_line *s = &e->sites[i];
        buf_printf(b, "%s{\"stack_id\":\"%016llx\",\"site\":%d,\"count_now\":%ld,\"count_ever\":%ld,\"growing\":%s",
                   i ? "," : "", (unsigned long long)s->stable_id, s->site, s->now, s->ever,
                   s->growing ? "true" : "false");
        if (s->lang != 0 && cw_lang_read(s->lang, &lang_stack) == 0 && lang_stack.first_program >= 0) {
            buf_puts(b, ",\"lang_open_at\":");
            lang_frame(b, &lang_stack.f[lang_stack.first_program]);
        }
        buf_puts(b, "}");
    }
    buf_puts(b, "]}\n");
}

const struct cw_printer cw_printer_json = {"json", start, leak, closed, backlog, summary};
