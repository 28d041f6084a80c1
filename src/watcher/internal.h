/* The inside of the watcher: what its files share. */
#ifndef CLOSEWAIT_WATCHER_INTERNAL_H
#define CLOSEWAIT_WATCHER_INTERNAL_H
#include "report/buf.h"
#include "report/report.h"
#include "report/sink.h"
#include "shared/langstack.h"
#include "shared/modules.h"
#include "shared/region.h"
#include "unwind/stacks.h"
#include "unwind/symbolize.h"
#include "watcher/process.h"
#include "watcher/suppress.h"
#include "watcher/watcher.h"

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

enum reason { REASON_EOF_NOT_CLOSED, REASON_PEER_CLOSED_UNREAD, REASON_SHUTDOWN_NOT_CLOSED, REASON_INHERITED };
CW_HIDDEN extern const char *const reason_names[];

/* w_flags bits (watcher-owned, per slot life) */
#define WF_REPORTED 1u
#define WF_SUPPRESSED 2u
#define WF_ESTABLISHED 4u   /* read EOF or shut down, yet found established (its own SHUT_RD) */

/* Findings from one open site (one open stack). */
struct open_site {
    uint32_t stack;
    uint32_t lang;        /* its language stack's id (0: none): one native stack runs many sites of a script */
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
    uint64_t id;                  /* which socket: as the slot says (shared/fdtable.h) */
    size_t site_index;            /* index into sites */
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
    /* at the last look: the queue's length, the accepts the program had counted */
    uint32_t last_qlen;
    uint32_t last_accepts;
    /* its queue was neither empty nor turned over at any look since then; 0: empty */
    int64_t queue_since;
    /* for the metrics */
    uint32_t dead_now, queued_now;
    long full_events;
    int64_t seen_ms;
};

/* One watched process: everything the watcher knows of it, in one place. */
struct proc {
    struct cw_area *area;
    pid_t pid;
    int pidfd;
    int64_t exec_since;
    int untrusted;        /* changed credentials without leaving: not read any more */
    int64_t creds_checked_ms; /* its credentials were last compared with ours */
    char exe[PATH_MAX];
    struct open_site *sites;
    size_t nsites, sites_cap;
    struct leak *leaks;
    size_t nleaks, leaks_cap;
    struct listener *listeners;
    size_t nlisteners, listeners_cap;
    uint32_t *shown;      /* text format: EOF stacks printed in full already */
    size_t nshown, shown_cap;
    long total_reported, total_suppressed;
    int announced;
};

CW_HIDDEN extern struct proc *procs;
CW_HIDDEN extern size_t nprocs, procs_cap;
CW_HIDDEN extern struct proc *P; /* the process being looked at */
/* A watcher that takes over (from a dead or stopped one) counts what that one reported and is
 * still held, without writing it again. */
CW_HIDDEN extern int adopting, silent;

CW_HIDDEN extern pthread_mutex_t tick_lock;
CW_HIDDEN extern _Atomic int running; /* thread mode: the thread runs */
CW_HIDDEN extern _Atomic int thread_done;
CW_HIDDEN extern struct cw_dump dump, established;
CW_HIDDEN extern int listeners_seen;
CW_HIDDEN extern char hostname[256];
CW_HIDDEN extern int thread_mode; /* this process watches itself, from a thread */
CW_HIDDEN extern int ebpf_front_end; /* closewait-ebpf: the slots are written from the kernel's records */
CW_HIDDEN extern int suppressions_loaded;

struct observed {
    int fd;
    uint32_t seq;
    uint64_t id;                /* which socket: as the slot says (shared/fdtable.h) */
    uint64_t proc_inode;        /* its inode, from /proc/PID/fd: its key is another socket's too */
    uint32_t flags, open_stack, eof_stack;
    int64_t open_ms, eof_ms, fin_ms;
    int opened_by, eof_by, state;
    enum reason reason;
    const char *local, *peer;
    pid_t holder;               /* the process holding it, if not the one it was opened in */
    int before_attach;          /* held in CLOSE_WAIT already when the eBPF front-end attached */
    uint32_t spawn_stack;
    int spawn_kind;
    uint32_t lang_open, lang_eof; /* language stacks (shared/langstack.h), 0: none */
};


CW_HIDDEN void cw_proc_load_identity(struct proc *p);
CW_HIDDEN void cw_finding_announce(void);
CW_HIDDEN void cw_watch_load_suppressions(void);
CW_HIDDEN int cw_watch_suppressed(uint32_t id, uint32_t lang);
CW_HIDDEN struct open_site *cw_open_site_for(uint32_t stack, uint32_t lang, int64_t now);
CW_HIDDEN int cw_open_site_growing(const struct open_site *g, int64_t now);
CW_HIDDEN long cw_proc_open_now(const struct proc *p);
CW_HIDDEN int cw_reported_anywhere(uint64_t id);
CW_HIDDEN const char *cw_role_of(const struct observed *o);
CW_HIDDEN void cw_finding_leak(const struct observed *o, int64_t now);
CW_HIDDEN void cw_finding_closed(const struct leak *l, int64_t now, const char *how);
CW_HIDDEN void cw_finding_summary(const char *why);
CW_HIDDEN struct cw_slot *cw_proc_slot(int fd);
CW_HIDDEN struct cw_peer *cw_proc_peer(int fd);
CW_HIDDEN struct cw_lang_ref *cw_proc_lang(int fd);
CW_HIDDEN struct cw_owner *cw_proc_owner(int fd);
/* The owner story and the registered callbacks of a leaked descriptor of the current process
 * (watcher/owner.c): 1 for each that is known. */
CW_HIDDEN int cw_owner_story(int fd, int64_t now, struct cw_owner_event *out);
CW_HIDDEN int cw_owner_callbacks(int fd, uint32_t seq, struct cw_callbacks_event *out);
CW_HIDDEN int cw_area_limit(const struct cw_area *a);
CW_HIDDEN int cw_proc_next(int fd);
CW_HIDDEN int cw_proc_fds_of_socket(uint64_t id, int except, int *out, int max);
/* The inode of the socket at fd in the current process by /proc/PID/fd, where that may be read
 * (the program's credentials and dumpability allow it), while its slot's life is seq; else 0.
 * Only to tell apart two sockets with one key (shared/fdtable.h). */
CW_HIDDEN uint64_t cw_proc_fd_inode(int fd, uint32_t seq);
CW_HIDDEN int cw_proc_cached_ends(int fd, uint32_t seq, char *local, char *peer, size_t cap);
CW_HIDDEN void cw_proc_keep_ends(int fd, uint32_t seq, const struct cw_sock *k);
CW_HIDDEN int cw_watch_dumped_held(uint64_t id);
/* Every socket of the namespace a process may hold (not the listeners): dumped at most once per
 * look, and only when asked; NULL if the kernel did not answer. */
CW_HIDDEN const struct cw_dump *cw_watch_dump_held(int64_t now);
/* Before a socket found by its key is reported: no other socket held has that key. */
CW_HIDDEN int cw_watch_id_unique(uint64_t id, int64_t now);
/* When a socket the dump shows in CLOSE_WAIT got its FIN, at the latest: its peer's last
 * acknowledgement (the FIN carried one; a later one only moves this later), not before `born`
 * (0: unknown, held before an attach); now when the kernel does not say. */
CW_HIDDEN int64_t cw_fin_dated(const struct cw_sock *k, int64_t now, int64_t born);
CW_HIDDEN struct proc *cw_proc_parent(void);
CW_HIDDEN int cw_watch_pid_watched(pid_t pid);
CW_HIDDEN void cw_watch_tick(int whole);
CW_HIDDEN void cw_watch_children(int64_t now);
CW_HIDDEN void cw_watch_listener(int fd, struct cw_slot *s, uint32_t seq, int64_t now);
CW_HIDDEN void cw_proc_free(struct proc *p);
CW_HIDDEN struct proc *cw_proc_add(struct cw_area *a, pid_t pid);
CW_HIDDEN void cw_watch_loop(void);
/* When the loop started (CLOCK_MONOTONIC ms): a call that began before it is timed from then. */
CW_HIDDEN extern int64_t cw_watch_started_ms;
CW_HIDDEN void cw_watch_thread_start(void);
CW_HIDDEN void cw_watch_thread_stop(void);
/* The interval in force: CLOSEWAIT_INTERVAL_MS, or longer where a look costs the kernel much. */
CW_HIDDEN extern int64_t cw_watch_interval_ms;
CW_HIDDEN int cw_watch_any_inet6(void);
/* CLOSEWAIT_METRICS (metrics.c): the file, after a look (at most once a second) or now; the
 * counts of a process that is gone; the exit of a process. */
CW_HIDDEN void cw_metrics_write(int64_t now, int now_or_never);
CW_HIDDEN void cw_metrics_retire(const struct proc *p);
CW_HIDDEN void cw_metrics_at_exit_of(const struct proc *p);
CW_HIDDEN void cw_metrics_after_fork_child(void);
/* "ip:port" of both ends of a dumped socket, "?" when k is NULL. */
CW_HIDDEN void cw_sock_ends(const struct cw_sock *k, char *local, char *peer, size_t cap);
#endif
