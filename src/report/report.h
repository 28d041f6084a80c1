/*
 * Reports: what the watcher found, as events, and the formats that write them.  The watcher
 * (watcher/findings.c) fills an event; the format chosen by CLOSEWAIT_FORMAT turns it into text
 * for the sink (report/sink.h).  A new format is one file in this folder: a `struct cw_printer`
 * and its name in cw_report_printer().
 */
#ifndef CLOSEWAIT_REPORT_H
#define CLOSEWAIT_REPORT_H
#include "base.h"
#include "report/buf.h"

/* The first event of a process (JSON): what the process is. */
struct cw_start_event {
    pid_t pid, ppid;
    const char *exe, *host, *watcher, *version;
    int64_t grace_ms;
};

/* Who owned a leaked descriptor (watcher/owner.c): the thread that last used it (shared/owners.h),
 * and what that thread is blocked in now, with that descriptor's own story. */
struct cw_owner_event {
    pid_t tid;
    int alive;                        /* 1 its task exists, 0 gone */
    char name[32];                    /* its comm, "" unknown */
    int unrecorded;                   /* alive, but its calls are not recorded (no record left) */
    const char *call;                 /* blocked in this call; NULL: in none closewait watches */
    int fd;                           /* on this descriptor, -1 unknown */
    int64_t blocked_ms;               /* -1 unknown; at most one watcher interval long */
    uintptr_t caller;                 /* the program's return address out of the call, 0 unknown */
    int fd_tracked;                   /* the descriptor below is a TCP socket of the table */
    char local[64], peer[64];
    const char *state, *opened_by, *role;
    uint32_t open_stack;
};

/* Callbacks an event loop was given for the descriptor (hooks/loops.c), code addresses, 0: none. */
struct cw_callbacks_event {
    const char *registered_by;        /* the registering call */
    uint32_t stack;                   /* its stack */
    uintptr_t connection, read, write, event;
};

/* A descriptor held past the grace period after the peer's FIN. */
struct cw_leak_event {
    pid_t pid;
    int fd;
    const char *reason, *state, *local, *peer, *opened_by, *role, *exe;
    int64_t now_ms, fin_ms, open_ms;  /* CLOCK_MONOTONIC */
    uint64_t stable_id;               /* of the open stack: the open site's id */
    int site;                         /* its number in this process, 1, 2, ... */
    long site_open, site_ever;
    int growing;
    const int *dups;                  /* other descriptors of the same socket */
    int ndups;
    uint32_t open_stack, eof_stack, spawn_stack; /* stack store ids, 0: none */
    const char *eof_by;               /* NULL: no EOF read */
    int inherited;
    pid_t holder;
    const char *spawned_by;
    int site_first;                   /* the open site's first report in this process */
    int eof_stack_shown;              /* this EOF stack was written in full before */
    uint32_t lang_open, lang_eof;     /* the program's own stacks in its language (langstack.h), 0: none */
    const struct cw_owner_event *owner;         /* NULL: unknown */
    const struct cw_callbacks_event *callbacks; /* NULL: none registered */
    int reg_stack_shown;              /* the registration stack was written in full before */
    int before_attach;                /* in CLOSE_WAIT already when the eBPF front-end attached */
};

/* A reported descriptor closed at last. */
struct cw_closed_event {
    pid_t pid;
    int fd, site;
    uint64_t stable_id;
    const char *local, *peer, *closed_by;
    int64_t held_ms;
};

/* A listener whose clients died in its accept queue, or whose queue is full. */
struct cw_backlog_event {
    pid_t pid;
    const char *reason, *listen, *exe;
    int fd, backlog;
    uint32_t accepted_dead, queued_dead, queue_len, queue_limit;
    uint32_t stack;
    uint64_t stable_id;
};

/* One open site in a summary. */
struct cw_site_line {
    uint64_t stable_id;
    int site, growing;
    long now, ever;
    uint32_t stack;
    uint32_t lang;
};

/* The findings of a process so far (at exit, or on request). */
struct cw_summary_event {
    pid_t pid;
    const char *why;
    long open, total, suppressed, dropped;
    const struct cw_site_line *sites; /* most held now first, then most ever */
    size_t nsites, sites_open;
};

struct cw_printer {
    const char *name;
    void (*start)(struct buf *b, const struct cw_start_event *e); /* NULL: none */
    void (*leak)(struct buf *b, const struct cw_leak_event *e);
    void (*closed)(struct buf *b, const struct cw_closed_event *e);
    void (*backlog)(struct buf *b, const struct cw_backlog_event *e);
    /* Nothing written (an empty buffer) when there is nothing to say. */
    void (*summary)(struct buf *b, const struct cw_summary_event *e);
};

/* The format CLOSEWAIT_FORMAT names. */
CW_HIDDEN const struct cw_printer *cw_report_printer(void);

/* ---- frames, for the formats (report/frames.c) ---- */
struct cw_frame;
#define CW_MAX_FRAMES (CW_MAX_DEPTH * 4)
/* A stored stack as source-level frames (inlined ones and a recovered tail call included). */
CW_HIDDEN int cw_report_frames(uint32_t stack, struct cw_frame *out, int max);
/* The same code in any process and any run gives the same id: module names and offsets, not
 * addresses (ASLR) nor pids. */
CW_HIDDEN uint64_t cw_report_stack_id(uint32_t stack);
#endif
