/*
 * The watcher process: one for a program and every process it forks, started with the first
 * TCP socket, sharing nothing with them but the region (region.c).  It needs no permission over
 * the program: it reads the region, asks the kernel about sockets by netlink sock_diag (as ss
 * does, which any process may), and learns of the program's end from a pidfd (which any process
 * may open).  No pidfd_getfd, no process_vm_readv, no signal, no /proc/PID/fd (but, where it
 * may be read, to tell apart two held sockets with one key: scan.c): a container without
 * CAP_SYS_PTRACE, Yama, a non-dumpable worker or a seccomp profile changes nothing.
 *
 * How it is started, and why:
 * - clone(CLONE_VM | CLONE_VFORK) with no exit signal, then execve: the child only makes raw
 *   system calls before the exec (like posix_spawn), so no lock the program holds can trip it;
 *   an intermediate that exits at once makes the watcher nobody's child, so the program's
 *   wait(), waitpid(-1) and SIGCHLD never meet it (exec would give a direct child SIGCHLD).
 * - The image is any small executable (/bin/true) with this library preloaded and
 *   CLOSEWAIT_WATCHER_OF set: the constructor sees that and becomes the watcher; the executable's
 *   main never runs.  No second file to install.
 * - It has the program's credentials, capabilities included (an exec as root would give it every
 *   capability of the bounding set: it drops to the program's sets at once).  A process that
 *   changes its credentials later leaves the region and gets a watcher of its own
 *   (cw_watcher_credentials_changed).
 * - Every descriptor is closed at the exec but the region's memfd and, unless it is a network
 *   socket, the program's stderr, where reports go; the watcher lets go of that copy as soon as
 *   no process it watches has it as its stderr any more (a daemon that points its stdio at
 *   /dev/null must not keep its starter's pipe open).
 * - Its death, however it dies, is written into the region by the kernel: its robust futex list
 *   names a word there, which gets FUTEX_OWNER_DIED.  The program reads one word to know.
 */
#define _GNU_SOURCE
#include "shared/region.h"
#include "watcher/watcher.h"
#include "watcher/process.h"
#include "report/sink.h"
#include "sys/procfs.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
static char saved_preload[4096];

#define ENV_WATCHER_OF "CLOSEWAIT_WATCHER_OF"
/* ---- the program's side -------------------------------------------------- */

struct spawn_args {
    long (*sys)(long, ...);
    int (*clone_fn)(int (*)(void *), void *, int, void *, ...);
    const char *path;
    char **argv, **envp;
    void *stack2;
    int memfd;
    int errfd;    /* the program's stderr, handed to the watcher; -1: none */
    int logfd;    /* the log, opened before a drop of privileges; -1: none */
    int err;
    int pid;
};

/* System calls that never touch errno: a watcher that runs on before its exec shares the calling
 * thread's TLS, and the program's errno is the program's. */
#if defined(__x86_64__)
#define HAVE_RAW_SYSCALL 1
__attribute__((no_sanitize("address", "thread", "undefined"))) static inline long raw_syscall3(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define HAVE_RAW_SYSCALL 1
__attribute__((no_sanitize("address", "thread", "undefined"))) static inline long raw_syscall3(long n, long a, long b, long c)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}
#else
#define HAVE_RAW_SYSCALL 0
#endif

/* Both run in the program's memory (CLONE_VM), on stacks of their own, with nothing the
 * sanitizers instrument, while the calling thread waits: the intermediate, and the watcher until
 * its exec (the spawn memory is unmapped once both are done). */
__attribute__((no_sanitize("address", "thread", "undefined"))) static int watcher_exec(void *p)
{
    struct spawn_args *a = p;
#if HAVE_RAW_SYSCALL
    raw_syscall3(SYS_close_range, 0L, (long)UINT32_MAX, (long)CLOSE_RANGE_CLOEXEC);
    raw_syscall3(SYS_fcntl, (long)a->memfd, (long)F_SETFD, 0L);
    if (a->errfd >= 0) raw_syscall3(SYS_fcntl, (long)a->errfd, (long)F_SETFD, 0L);
    if (a->logfd >= 0) raw_syscall3(SYS_fcntl, (long)a->logfd, (long)F_SETFD, 0L);
    long r = raw_syscall3(SYS_execve, (long)a->path, (long)a->argv, (long)a->envp);
    a->err = (int)-r;
    raw_syscall3(SYS_exit, 127L, 0L, 0L);
#else
    a->sys(SYS_close_range, 0L, (long)UINT32_MAX, (long)CLOSE_RANGE_CLOEXEC);
    a->sys(SYS_fcntl, (long)a->memfd, (long)F_SETFD, 0L);
    if (a->errfd >= 0) a->sys(SYS_fcntl, (long)a->errfd, (long)F_SETFD, 0L);
    if (a->logfd >= 0) a->sys(SYS_fcntl, (long)a->logfd, (long)F_SETFD, 0L);
    a->sys(SYS_execve, (long)a->path, (long)a->argv, (long)a->envp);
    a->err = errno;
    a->sys(SYS_exit, 127L);
#endif
    return 127;
}

/* The intermediate: starts the watcher and exits, so that the watcher is nobody's child here.
 * exec gives a process SIGCHLD as its exit signal whatever clone said, so a watcher that were the
 * program's child would show up in its wait(-1) and SIGCHLD; this one never exec's and has no
 * exit signal, and only the waitpid(__WCLONE) below ever sees it. */
__attribute__((no_sanitize("address", "thread", "undefined"))) static int watcher_launch(void *p)
{
    struct spawn_args *a = p;
    /* Always until its exec: the caller unmaps the spawn memory and stacks once it resumes. */
    int flags = CLONE_VM | CLONE_VFORK;
    a->pid = a->clone_fn(watcher_exec, a->stack2, flags, a);
    if (a->pid < 0) a->err = errno;
    a->sys(SYS_exit, 0L);
    return 0;
}

static const char *watcher_image(void)
{
    static const char *const candidates[] = {"/bin/true", "/usr/bin/true"};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        if (access(candidates[i], X_OK) == 0) return candidates[i];
    return NULL;
}

/* LD_PRELOAD as the program was started with it (it may unset it later, for its children);
 * this library alone if it came some other way. */
static void remember_preload(void)
{
    if (saved_preload[0] != '\0') return;
    const char *pre = getenv("LD_PRELOAD");
    if (pre != NULL && strstr(pre, "closewait") != NULL && strlen(pre) < sizeof saved_preload) {
        snprintf(saved_preload, sizeof saved_preload, "%s", pre);
        return;
    }
    Dl_info info;
    if (dladdr((void *)&remember_preload, &info) != 0 && info.dli_fname != NULL &&
        strlen(info.dli_fname) < sizeof saved_preload)
        snprintf(saved_preload, sizeof saved_preload, "%s", info.dli_fname);
}

/* Memory for the child's stack and its argument and environment arrays: mmap'ed, because a fork
 * (and so this) may happen in a signal handler, where malloc is out; and unmapped once the
 * watcher runs, because every mapping kept is one more that each fork() of the program copies. */
#define SPAWN_STACK ((size_t)32 << 10) /* two of them */
#define SPAWN_ENV ((size_t)64 << 10)
#define SPAWN_MEM (2 * SPAWN_STACK + SPAWN_ENV)
_Static_assert(sizeof(struct spawn_args) <= 256, "spawn_args fits its place");

/* The program's stderr for the watcher: not a network socket (an inetd-style server's stderr is
 * its client's connection, which the watcher must never hold open nor write to). */
static int stderr_for_watcher(void)
{
    struct stat st;
    if (fstat(2, &st) != 0) return -1;
    if (S_ISSOCK(st.st_mode)) {
        int domain = 0;
        socklen_t len = sizeof domain;
        if (getsockopt(2, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) return -1;
    }
    return 2;
}

int cw_watcher_process_start(int wait, int logfd)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL) return -1;
    const char *image = watcher_image();
    if (image == NULL) {
        snprintf(sh->watcher_error, sizeof sh->watcher_error, "no /bin/true to run it from");
        return -1;
    }
    remember_preload();
    if (saved_preload[0] == '\0') {
        snprintf(sh->watcher_error, sizeof sh->watcher_error, "cannot tell where this library is");
        return -1;
    }
    void *m = mmap(NULL, SPAWN_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    unsigned char *spawn_mem = m;
    /* A region of our own to hand over (the old one stays with whoever else was in it). */
    int memfd = cw_region_fd();
    if (memfd < 0) {
        if (cw_sh != NULL) snprintf(cw_sh->watcher_error, sizeof cw_sh->watcher_error, "no shared memory for it");
        munmap(spawn_mem, SPAWN_MEM);
        return -1;
    }
    sh = cw_sh;
    /* The capabilities the program has now: the watcher drops to them. */
    struct __user_cap_header_struct caph = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct capd[2];
    memset(capd, 0, sizeof capd);
    int have_caps = syscall(SYS_capget, &caph, capd) == 0;
    /* After the two stacks: [spawn_args][strings][argv, envp]; the environment is the program's,
     * with our LD_PRELOAD and CLOSEWAIT_WATCHER_OF. */
    struct spawn_args *argp = (struct spawn_args *)(void *)(spawn_mem + 2 * SPAWN_STACK);
    char *text = (char *)spawn_mem + 2 * SPAWN_STACK + 256;
    size_t cap = SPAWN_ENV / 2 - 256, used = 0;
    char **vec = (char **)(void *)(text + cap);
    size_t nvec = 0, maxvec = (SPAWN_ENV / 2) / sizeof(char *) - 8;
    int errfd = stderr_for_watcher();
    char head[200];
    int hl = snprintf(head, sizeof head, ENV_WATCHER_OF "=%d:%d:%ld:%d:%d:%x:%x:%x:%x:%x:%x", memfd, errfd, (long)getpid(), logfd,
                      have_caps, capd[0].effective, capd[1].effective, capd[0].permitted, capd[1].permitted,
                      capd[0].inheritable, capd[1].inheritable);
    char *argv0 = text;
    memcpy(text, "closewait-watcher", 18);
    used = 18;
    vec[nvec++] = argv0;
    vec[nvec++] = NULL;
    char **envp = &vec[nvec];
    char *mine = text + used;
    memcpy(mine, head, (size_t)hl + 1);
    used += (size_t)hl + 1;
    vec[nvec++] = mine;
    char *pre = text + used;
    int pl = snprintf(pre, cap - used, "LD_PRELOAD=%s", saved_preload);
    used += (size_t)pl + 1;
    vec[nvec++] = pre;
    for (char **e = environ; e != NULL && *e != NULL && nvec < maxvec; e++) {
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0 || strncmp(*e, ENV_WATCHER_OF "=", sizeof ENV_WATCHER_OF) == 0) continue;
        size_t len = strlen(*e) + 1;
        if (used + len > cap) continue;
        memcpy(text + used, *e, len);
        vec[nvec++] = text + used;
        used += len;
    }
    vec[nvec] = NULL;

    CW_REAL(syscall);
    /* In the spawn memory, not on this stack, which the clone's stacks share nothing with. */
    *argp = (struct spawn_args){.sys = real_syscall, .clone_fn = clone, .path = image, .argv = vec, .envp = envp,
                                .stack2 = spawn_mem + 2 * SPAWN_STACK, .memfd = memfd, .errfd = errfd, .logfd = logfd,
                                .err = 0, .pid = -1};
    struct spawn_args args_copy;
    atomic_store(&sh->watcher_pid, 0);
    atomic_store(&sh->watcher_alive, 0);
    atomic_store(&sh->watcher_state, CW_WATCHER_STARTING);
    sh->watcher_error[0] = '\0';
    int saved = errno;
    int mid = clone(watcher_launch, spawn_mem + SPAWN_STACK, CLONE_VM | CLONE_VFORK, argp);
    int clone_errno = errno;
    if (mid > 0) waitpid(mid, NULL, __WCLONE);
    errno = saved;
    syscall(SYS_close, memfd);
    memcpy(&args_copy, argp, sizeof args_copy);
    munmap(spawn_mem, SPAWN_MEM); /* CLONE_VFORK: the clone has exec'd or gone */
    struct spawn_args *a = &args_copy;
    if (mid < 0 || a->err != 0) {
        snprintf(sh->watcher_error, sizeof sh->watcher_error, "cannot start %s: %s", image,
                 strerror(mid < 0 ? clone_errno : a->err));
        atomic_store(&sh->watcher_state, CW_WATCHER_NONE);
        return -1;
    }
    if (!wait) return 0;
    /* Its first word; a few milliseconds, bounded. */
    for (int i = 0; i < 100; i++) {
        uint32_t st = atomic_load(&sh->watcher_state);
        if (st == CW_WATCHER_READY || st == CW_WATCHER_FAILED) break;
        cw_futex_wait(&sh->watcher_state, st, 20);
    }
    uint32_t st = atomic_load(&sh->watcher_state);
    /* Still starting after two seconds (a loaded machine): it will come. */
    if (st == CW_WATCHER_READY || st == CW_WATCHER_STARTING) return 0;
    return -1;
}

/* ---- the pids budget -------------------------------------------------------- */

static long read_number(const char *path, int *unlimited)
{
    char buf[32];
    if (cw_read_small(path, buf, sizeof buf) < 0) return -1;
    if (strncmp(buf, "max", 3) == 0) {
        *unlimited = 1;
        return -1;
    }
    return strtol(buf, NULL, 10);
}

/* Pids left in the pids cgroup of this process and its ancestors (the fewest), or -1 if none is
 * limited. */
static long pids_left(void)
{
    char buf[4096];
    if (cw_read_small("/proc/self/cgroup", buf, sizeof buf) < 0) return -1;
    char dir[512] = "";
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        char *c1 = strchr(line, ':'), *c2 = c1 != NULL ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL) continue;
        *c2 = '\0';
        const char *controllers = c1 + 1, *path = c2 + 1;
        if (strcmp(line, "0") == 0 && controllers[0] == '\0' && dir[0] == '\0') {
            /* cgroup v2: the unified hierarchy, on its own or beside v1 */
            snprintf(dir, sizeof dir, "%s%s",
                     access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/unified",
                     path);
        } else if (strstr(controllers, "pids") != NULL) {
            snprintf(dir, sizeof dir, "/sys/fs/cgroup/pids%s", path);
        }
    }
    long least = -1;
    /* the limit of every ancestor applies too */
    while (dir[0] != '\0') {
        char file[600];
        snprintf(file, sizeof file, "%s/pids.max", dir);
        int unlimited = 0;
        long max = read_number(file, &unlimited);
        if (max >= 0) {
            snprintf(file, sizeof file, "%s/pids.current", dir);
            long cur = read_number(file, &unlimited);
            if (cur >= 0 && (least < 0 || max - cur < least)) least = max - cur;
        } else if (!unlimited) {
            break; /* no such file: above the hierarchy's root */
        }
        char *slash = strrchr(dir, '/');
        if (slash == NULL || slash == dir) break;
        *slash = '\0';
    }
    return least;
}

int cw_pids_all_but_spent(void)
{
    long left = pids_left();
    /* The watcher takes one pid from the program's budget (one for the whole tree); where the
     * budget is all but spent, it waits.  A fork that fails for want of a pid makes it leave
     * (cw_watcher_process_give_way). */
    return left >= 0 && left < 4;
}

#ifndef FUTEX_OWNER_DIED
#define FUTEX_OWNER_DIED 0x40000000
#endif
#define FUTEX_TID_BITS 0x3fffffff

int cw_watcher_process_alive(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL || cw_in_watcher_process) return 0;
    uint32_t st = atomic_load_explicit(&sh->watcher_state, memory_order_acquire);
    if (st == CW_WATCHER_STARTING) return 1; /* not proven dead: it will come, or its word will say */
    if (st != CW_WATCHER_READY) return 0;
    uint32_t word = atomic_load_explicit(&sh->watcher_alive, memory_order_acquire);
    return !(word & FUTEX_OWNER_DIED) && (word & FUTEX_TID_BITS) != 0 &&
           (int32_t)(word & FUTEX_TID_BITS) == atomic_load(&sh->watcher_pid);
}

int cw_watcher_request(_Atomic uint32_t *req, _Atomic uint32_t *done, int timeout_ms)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL || !cw_watcher_process_alive()) return -1;
    int saved = errno;
    uint32_t want = atomic_fetch_add(req, 1) + 1;
    cw_doorbell();
    int64_t deadline = cw_now_ms() + timeout_ms;
    int rc = -1;
    for (;;) {
        uint32_t d = atomic_load(done);
        if ((int32_t)(d - want) >= 0) {
            rc = 0;
            break;
        }
        int64_t left = deadline - cw_now_ms();
        if (left <= 0 || !cw_watcher_process_alive()) break;
        cw_futex_wait(done, d, left < 50 ? (int)left : 50);
    }
    errno = saved;
    return rc;
}

int cw_watcher_process_give_way(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL || !cw_watcher_process_alive()) return -1;
    atomic_store(&sh->quit, 1);
    cw_doorbell();
    for (int i = 0; i < 40 && cw_watcher_process_alive(); i++) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return cw_watcher_process_alive() ? -1 : 0;
}

/* ---- the watcher's side ------------------------------------------------------ */

static void watcher_fail(const char *what, int err)
{
    if (cw_sh != NULL) {
        snprintf(cw_sh->watcher_error, sizeof cw_sh->watcher_error, "%s: %s", what, strerror(err));
        atomic_store(&cw_sh->watcher_state, CW_WATCHER_FAILED);
        cw_futex_wake(&cw_sh->watcher_state);
    }
    _exit(1);
}

/* The kernel's robust futex list of this process names one word of the region: whatever ends
 * this process, the kernel then sets FUTEX_OWNER_DIED there and wakes its waiters. */
struct robust_entry {
    struct robust_entry *next;
};
static struct {
    struct robust_entry *list;
    long futex_offset;
    struct robust_entry *pending;
} robust_head;
static struct robust_entry robust_self;

static void announce_life(void)
{
    struct cw_shared *sh = cw_sh;
    pid_t self = (pid_t)syscall(SYS_gettid);
    atomic_store(&sh->watcher_pid, (int32_t)self);
    atomic_store(&sh->watcher_alive, (uint32_t)self);
    robust_self.next = (struct robust_entry *)(void *)&robust_head;
    robust_head.list = &robust_self;
    robust_head.futex_offset = (long)((char *)&sh->watcher_alive - (char *)&robust_self);
    robust_head.pending = NULL;
    syscall(SYS_set_robust_list, &robust_head, sizeof robust_head);
}

void cw_watcher_process_main_if_asked(void)
{
    const char *spec = getenv(ENV_WATCHER_OF);
    if (spec == NULL) return;
    cw_in_watcher_process = 1;
    /* Every call this process makes is its own: the hooks must pass them straight through. */
    cw_in_lib = 1;
    cw_on_private_table = 1;
    int memfd = -1, errfd = -1, logfd = -1, have_caps = 0;
    long pid = 0;
    unsigned e0 = 0, e1 = 0, p0 = 0, p1 = 0, i0 = 0, i1 = 0;
    if (sscanf(spec, "%d:%d:%ld:%d:%d:%x:%x:%x:%x:%x:%x", &memfd, &errfd, &pid, &logfd, &have_caps, &e0, &e1, &p0,
               &p1, &i0, &i1) != 11 ||
        memfd < 0 || pid <= 0)
        _exit(2);
    /* First of all, no more privilege than the program. */
    if (have_caps) {
        struct __user_cap_header_struct caph = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct capd[2] = {{e0, p0, i0}, {e1, p1, i1}};
        if (syscall(SYS_capset, &caph, capd) != 0) _exit(3);
    }
    if (cw_region_attach(memfd) != 0) {
        int err = errno;
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (p != MAP_FAILED) {
            struct cw_shared *sh = p;
            snprintf(sh->watcher_error, sizeof sh->watcher_error, "cannot map the shared table: %s", strerror(err));
            atomic_store(&sh->watcher_state, CW_WATCHER_FAILED);
            cw_futex_wake(&sh->watcher_state);
        }
        _exit(1);
    }
    close(memfd);
    if (logfd > 2) cw_sink_adopt_log(logfd, (pid_t)pid);
    cw_metrics_set_owner((pid_t)pid);
    /* 0, 1 (and 2 if no stderr was handed over) were closed at the exec: fill them, so that no
     * descriptor of ours ever takes one of those numbers. */
    for (int i = 0; i < 3; i++)
        if (fcntl(i, F_GETFD) < 0) open("/dev/null", O_RDWR);
    if (errfd != 2) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            dup2(null, 2);
            close(null);
        }
    }
    unsetenv(ENV_WATCHER_OF);
    memcpy(&cw_cfg, &cw_sh->cfg, sizeof cw_cfg);
    prctl(PR_SET_NAME, (unsigned long)"closewait", 0, 0, 0);
    /* A pidfd per watched process. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    announce_life();
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    /* A relative suppressions path is read by the loop first; then no directory is held busy. */
    cw_watcher_run_process();
    _exit(0);
}

void cw_watcher_process_ready(const char *error)
{
    struct cw_shared *sh = cw_sh;
    if (error != NULL) watcher_fail(error, errno);
    atomic_store(&sh->watcher_state, CW_WATCHER_READY);
    cw_futex_wake(&sh->watcher_state);
}
