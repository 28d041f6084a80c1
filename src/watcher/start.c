/* The watcher as the program sees it: when it starts, where (process or thread), what a fork,
 * a change of credentials and an exit mean, and the public API. */
#define _GNU_SOURCE
#include "watcher/internal.h"
#include "closewait.h"

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
    if (!atomic_load(&running)) cw_watch_thread_start();
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

/* The watcher's word as it was when last found alive: while it reads the same, nothing to do
 * (one load and one compare at each socket birth). */
uint32_t cw_watcher_alive_seen;

void cw_watcher_check_slow(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL || thread_mode || !process_wanted || cw_in_watcher_process) return;
    if (atomic_load(&watcher_pending)) {
        cw_watcher_first_tcp();
        return;
    }
    uint32_t st = atomic_load_explicit(&sh->watcher_state, memory_order_relaxed);
    if (st == CW_WATCHER_NONE || atomic_load(&sh->quit)) return;
    if (cw_watcher_process_alive()) {
        if (st == CW_WATCHER_READY) cw_watcher_alive_seen = atomic_load(&sh->watcher_alive);
        return;
    }
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
    atomic_fetch_add(&sh->watcher_restarts, 1);
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
    process_wanted = !cw_cfg.watcher_thread;
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
        cw_watch_load_suppressions();
    }
    atomic_store(&watcher_pending, 1);
}

/* Asked before the fork, so that the child reads only the page it writes anyway: the region's
 * header, and the watcher's own variables, which the program never touches in process mode, are
 * pages a child would fault in (a fork copies no page tables of a shared mapping, and none of a
 * page never touched). */
void cw_watcher_before_fork(void)
{
    cw_private.fork_watcher_alive = cw_watcher_process_alive();
    cw_private.fork_thread_mode = thread_mode;
    cw_private.fork_watching_here = thread_mode || nprocs > 0;
}

CW_FORK_PATH void cw_watcher_after_fork_child(void)
{
    /* The child's findings are the watcher's business; a watcher thread did not come along. */
    /* Written only where it was set: each page of ours written here is a copy-on-write fault
     * in every forked child (a fork-per-connection server pays it per connection). */
    cw_metrics_after_fork_child();
    if (cw_private.fork_watching_here) {
        pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
        memcpy(&tick_lock, &fresh, sizeof fresh);
        atomic_store(&running, 0);
        for (size_t k = 0; k < nprocs; k++) cw_proc_free(&procs[k]);
        nprocs = 0;
        P = NULL;
    }
    if (cw_me == NULL) return;
    /* A process watcher serves the child already, through its area. */
    if (!cw_private.fork_thread_mode) {
        if (atomic_load(&watcher_pending) == 0 && !cw_private.fork_watcher_alive) atomic_store(&watcher_pending, 1);
        return;
    }
    if (!atomic_load(&cw_me->any_tcp)) {
        atomic_store(&watcher_pending, 1); /* as at start: with the first TCP socket */
        return;
    }
    cw_watch_thread_start();
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
        if (s == NULL || CW_SEQ_KIND(atomic_load(&s->seq)) != CW_KIND_TCP) continue;
        if (s->w_fin_ms != 0 || (atomic_load(&s->flags) & (CW_SF_EOF | CW_SF_SHUT_WR))) return 1;
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
        for (size_t k = 0; k < nprocs; k++) cw_proc_free(&procs[k]);
        nprocs = 0;
        cw_proc_add(cw_me, getpid());
    }
    cw_watch_load_suppressions();
    adopting = 1;
    cw_watch_tick(1);
    P = &procs[0];
    cw_set_current_area(NULL);
    cw_finding_summary(why);
    long open = cw_proc_open_now(P);
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
        cw_watch_thread_stop();
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
        if (nprocs == 0) cw_proc_add(me, getpid());
        cw_watch_tick(1);
        P = &procs[0];
        cw_finding_summary("on request");
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
    long open = nprocs > 0 ? cw_proc_open_now(&procs[0]) : 0;
    pthread_mutex_unlock(&tick_lock);
    return open;
}
