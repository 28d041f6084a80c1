/* The watcher's loop, in its process or in a thread: the processes watched, their requests,
 * the look every interval. */
#define _GNU_SOURCE
#include "watcher/internal.h"

struct proc *procs;
size_t nprocs, procs_cap;
struct proc *P;
int adopting, silent;
pthread_mutex_t tick_lock = PTHREAD_MUTEX_INITIALIZER;
_Atomic int running;
_Atomic int thread_done;
struct cw_dump dump, established;
int listeners_seen;
char hostname[256];
int thread_mode;
int ebpf_front_end;
int suppressions_loaded;
const char *const reason_names[] = {"eof_not_closed", "peer_closed_unread", "shutdown_not_closed", "inherited"};

void cw_proc_free(struct proc *p)
{
    free(p->sites);
    free(p->leaks);
    free(p->listeners);
    free(p->shown);
    if (p->pidfd >= 0) close(p->pidfd);
}

struct proc *cw_proc_add(struct cw_area *a, pid_t pid)
{
    if (cw_grow(&procs, &procs_cap, nprocs, sizeof *procs, 8) != 0) return NULL;
    struct proc *p = &procs[nprocs++];
    memset(p, 0, sizeof *p);
    p->area = a;
    p->pid = pid;
    p->pidfd = thread_mode ? -1 : (int)syscall(SYS_pidfd_open, pid, 0);
    p->creds_checked_ms = cw_now_ms();
    cw_proc_load_identity(p);
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
            /* A failed exec puts it back at once; still there a cw_watch_tick later, it went through. */
            if (p->exec_since == 0) p->exec_since = now;
            else if (now - p->exec_since >= cw_cfg.interval_ms) drop = 1;
        } else {
            p->exec_since = 0;
        }
        if (!drop && proc_gone(p)) drop = 1;
        /* Credentials: a process that lives a while is asked every few seconds (a
         * fork-per-connection server's short-lived children never are). */
        if (!drop && !p->untrusted && !thread_mode && now - p->creds_checked_ms >= 4000 &&
            (p->creds_checked_ms = now, !proc_same_credentials(p))) {
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
        cw_metrics_retire(p);
        cw_proc_free(p);
        procs[k] = procs[--nprocs];
    }
    if (thread_mode) {
        if (nprocs == 0 && cw_me != NULL) cw_proc_add(cw_me, getpid());
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
        struct proc *p = cw_proc_add(a, pid);
        if (p != NULL && p->pidfd < 0 && errno == ESRCH) {
            cw_area_release(a);
            cw_proc_free(p);
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
    cw_watch_tick(1);
    P = p;
    cw_set_current_area(p->area);
    cw_finding_summary(why);
    atomic_store(&p->area->open_now, cw_proc_open_now(p));
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
        if (answer(p, &p->area->exit_req, &p->area->exit_done, "exit")) {
            atomic_store(&p->area->state, AREA_EXITED);
            cw_metrics_at_exit_of(p);
        }
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
int64_t cw_watch_started_ms;

void cw_watch_loop(void)
{
    /* At once: the hooks time blocking calls from this word (shared/owners.h). */
    cw_watch_started_ms = cw_now_ms();
    atomic_store(&cw_sh->watcher_tick_ms, cw_watch_started_ms);
    int64_t next_tick = cw_now_ms() + (cw_watch_interval_ms > 0 ? cw_watch_interval_ms : cw_cfg.interval_ms);
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
            cw_watch_tick(0);
            cw_metrics_write(cw_now_ms(), 0);
            next_tick = cw_now_ms() + (cw_watch_interval_ms > 0 ? cw_watch_interval_ms : cw_cfg.interval_ms);
        }
        pthread_mutex_unlock(&tick_lock);
        if (!thread_mode) hold_stderr_if_needed();
    }
}

static void *watcher_main(void *arg)
{
    (void)arg;
    cw_in_lib = 1;
    cw_self_rec = CW_OWN_THREAD; /* none of its calls is the program's */
    cw_self_tid_cache = -1;
    cw_watcher_private_table();
    cw_watch_load_suppressions();
    cw_watch_loop();
    /* Stopped: the program is exiting.  The counts of the last look, written from this thread,
     * on its own descriptor table (the program's exit runs on after a bounded wait for it). */
    pthread_mutex_lock(&tick_lock);
    cw_metrics_write(cw_now_ms(), 1);
    pthread_mutex_unlock(&tick_lock);
    atomic_store(&thread_done, 1);
    cw_futex_wake((_Atomic uint32_t *)&thread_done);
    return NULL;
}

void cw_watch_thread_start(void)
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

void cw_watch_thread_stop(void)
{
    if (!atomic_exchange(&running, 0)) return;
    cw_doorbell();
    /* Bounded: a thread stuck in a write must not hold the program's exit. */
    for (int i = 0; i < 100 && !atomic_load(&thread_done); i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

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
    cw_watch_load_suppressions();
    /* A relative suppressions path is read: from now on no directory is held busy (an unmount
     * of the program's working directory must not find the watcher in it). */
    if (chdir("/") != 0) {
    }
    cw_sink_stderr_hold(1);
    cw_watcher_process_ready(NULL);
    cw_watch_loop();
}
