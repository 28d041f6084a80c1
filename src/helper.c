/*
 * The watcher process.  The program's side starts it once (and once in each forked child) and
 * only ever touches it through the region: words to ask for a summary or for the exit report,
 * and SIGURG to wake it.  The helper's side borrows the program's sockets with pidfd_getfd()
 * exactly as the watcher thread does on its private table, and maps the region at the
 * program's address.
 *
 * How it is started, and why:
 * - clone(CLONE_VM | CLONE_VFORK) with no exit signal, then execve: the child only makes raw
 *   system calls before the exec (like posix_spawn), so no lock the program holds can trip it;
 *   and a child without an exit signal is invisible to the program's wait(), waitpid(-1) and
 *   SIGCHLD handling (only __WALL/__WCLONE see it): a server that reaps "all its children" or
 *   counts them never meets it.
 * - The image is any small executable (/bin/true) with this library preloaded and
 *   CLOSEWAIT_HELPER set: the constructor sees that and becomes the watcher; the executable's
 *   main never runs.  No second file to install.
 * - Every descriptor is closed at the exec but the region's memfd: a copy of a socket kept by
 *   the helper would keep the connection open after the program closed it.
 * - Yama ptrace_scope 1 lets a process reach only its descendants: the program names the
 *   helper with PR_SET_PTRACER so that pidfd_getfd and process_vm_readv work on it.
 */
#define _GNU_SOURCE
#include "region.h"
#include "sink.h"

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
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif

CW_HIDDEN int cw_is_helper;
static pid_t watched_pid;        /* in the helper */
static uintptr_t watched_region; /* the region's address in the program */
static char saved_preload[4096];

#define ENV_HELPER "CLOSEWAIT_HELPER"

pid_t cw_program_pid(void)
{
    return cw_is_helper ? watched_pid : getpid();
}

/* A small file of /proc or /sys, as a string: its length, -1 if it cannot be read. */
static ssize_t read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    return n;
}

/* From /proc/pid/stat: state, parent and start time (clock ticks since boot).  -1 if there is no
 * such process. */
static int proc_stat(pid_t pid, char *state, long *ppid, unsigned long long *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    if (read_small(path, buf, sizeof buf) < 0) return -1;
    /* pid (comm) state ppid ...: comm may hold spaces and parentheses, the last ')' ends it */
    const char *p = strrchr(buf, ')');
    if (p == NULL ||
        sscanf(p + 1, " %c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", state, ppid,
               start) != 3)
        return -1;
    return 0;
}

pid_t cw_program_ppid(void)
{
    if (!cw_is_helper) return getppid();
    char state = 0;
    long ppid = 0;
    unsigned long long start = 0;
    return proc_stat(watched_pid, &state, &ppid, &start) == 0 ? (pid_t)ppid : 0;
}

/* ---- the program's side -------------------------------------------------- */

struct spawn_args {
    long (*sys)(long, ...);
    int (*clone_fn)(int (*)(void *), void *, int, void *, ...);
    const char *path;
    char **argv, **envp;
    void *stack2;
    int memfd;
    int detach;   /* the helper runs on alone before its exec: the caller does not wait */
    int err;
    int pid;
};

/* System calls that never touch errno: a helper that runs on before its exec shares the calling
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
 * sanitizers instrument: the intermediate while the calling thread waits, the helper until its
 * exec (waited for at start-up, where its failure must be known; in a forked child, which often
 * execs at once, not). */
__attribute__((no_sanitize("address", "thread", "undefined"))) static int helper_exec(void *p)
{
    struct spawn_args *a = p;
#if HAVE_RAW_SYSCALL
    raw_syscall3(SYS_close_range, 0L, (long)UINT32_MAX, (long)CLOSE_RANGE_CLOEXEC);
    raw_syscall3(SYS_fcntl, (long)a->memfd, (long)F_SETFD, 0L);
    long r = raw_syscall3(SYS_execve, (long)a->path, (long)a->argv, (long)a->envp);
    a->err = (int)-r;
    raw_syscall3(SYS_exit, 127L, 0L, 0L);
#else
    a->sys(SYS_close_range, 0L, (long)UINT32_MAX, (long)CLOSE_RANGE_CLOEXEC);
    a->sys(SYS_fcntl, (long)a->memfd, (long)F_SETFD, 0L);
    a->sys(SYS_execve, (long)a->path, (long)a->argv, (long)a->envp);
    a->err = errno;
    a->sys(SYS_exit, 127L);
#endif
    return 127;
}

/* The intermediate: starts the helper and exits, so that the helper is nobody's child here.
 * exec gives a process SIGCHLD as its exit signal whatever clone said, so a helper that were the
 * program's child would show up in its wait(-1) and SIGCHLD; this one never exec's and has no
 * exit signal, and only the waitpid(__WCLONE) below ever sees it. */
__attribute__((no_sanitize("address", "thread", "undefined"))) static int helper_launch(void *p)
{
    struct spawn_args *a = p;
    int flags = a->detach ? CLONE_VM : CLONE_VM | CLONE_VFORK;
    a->pid = a->clone_fn(helper_exec, a->stack2, flags, a);
    if (a->pid < 0) a->err = errno;
    a->sys(SYS_exit, 0L);
    return 0;
}

/* The start time of a live process, 0 if there is none or it is a zombie: with the start time the
 * helper wrote, a reused pid is told from the helper. */
static unsigned long long start_time_of(pid_t pid)
{
    char state = 0;
    long ppid = 0;
    unsigned long long start = 0;
    if (proc_stat(pid, &state, &ppid, &start) != 0) return 0;
    return state == 'Z' || state == 'X' ? 0 : start;
}

static int helper_gone(pid_t pid)
{
    unsigned long long want = atomic_load(&cw_sh->helper_start);
    unsigned long long now = start_time_of(pid);
    return now == 0 || (want != 0 && now != want);
}

static const char *helper_image(void)
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

static int yama_scope(void)
{
    char buf[8];
    return read_small("/proc/sys/kernel/yama/ptrace_scope", buf, sizeof buf) > 0 ? buf[0] - '0' : 0;
}

/* Memory for the child's stack and its argument and environment arrays: mmap'ed once, because
 * a fork (and so this) may happen in a signal handler, where malloc is out. */
#define SPAWN_STACK ((size_t)32 << 10) /* two of them */
#define SPAWN_ENV ((size_t)64 << 10)
_Static_assert(sizeof(struct spawn_args) <= 256, "spawn_args fits its place");
static unsigned char *spawn_mem;

int cw_helper_spawn(int memfd, int wait)
{
    if (memfd < 0 || cw_sh == NULL) return -1;
    const char *image = helper_image();
    if (image == NULL) {
        snprintf(cw_sh->helper_error, sizeof cw_sh->helper_error, "no /bin/true to run it from");
        return -1;
    }
    remember_preload();
    if (saved_preload[0] == '\0') {
        snprintf(cw_sh->helper_error, sizeof cw_sh->helper_error, "cannot tell where this library is");
        return -1;
    }
    if (spawn_mem == NULL) {
        void *m = mmap(NULL, 2 * SPAWN_STACK + SPAWN_ENV, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return -1;
        spawn_mem = m;
    }
    /* After the two stacks: [spawn_args][strings][argv, envp]; the environment is the program's,
     * with our LD_PRELOAD and CLOSEWAIT_HELPER. */
    struct spawn_args *argp = (struct spawn_args *)(void *)(spawn_mem + 2 * SPAWN_STACK);
    char *text = (char *)spawn_mem + 2 * SPAWN_STACK + 256;
    size_t cap = SPAWN_ENV / 2 - 256, used = 0;
    char **vec = (char **)(void *)(text + cap);
    size_t nvec = 0, maxvec = (SPAWN_ENV / 2) / sizeof(char *) - 8;
    char head[160];
    int hl = snprintf(head, sizeof head, ENV_HELPER "=%d:%lx:%zx:%ld", memfd, (unsigned long)(uintptr_t)cw_sh,
                      cw_sh->size, (long)getpid());
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
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0 || strncmp(*e, ENV_HELPER "=", sizeof ENV_HELPER) == 0) continue;
        size_t len = strlen(*e) + 1;
        if (used + len > cap) continue;
        memcpy(text + used, *e, len);
        vec[nvec++] = text + used;
        used += len;
    }
    vec[nvec] = NULL;

    CW_REAL(syscall);
    /* In the spawn memory, not on this stack: a detached helper may still read it (and write its
     * exec error) after we return. */
    *argp = (struct spawn_args){.sys = real_syscall, .clone_fn = clone, .path = image, .argv = vec, .envp = envp,
                                .stack2 = spawn_mem + 2 * SPAWN_STACK, .memfd = memfd,
                                .detach = !wait && HAVE_RAW_SYSCALL, .err = 0, .pid = -1};
    struct spawn_args args_copy;
    atomic_store(&cw_sh->helper_pid, 0);
    atomic_store(&cw_sh->helper_state, CW_HELPER_STARTING);
    cw_sh->helper_error[0] = '\0';
    int saved = errno;
    int mid = clone(helper_launch, spawn_mem + SPAWN_STACK, CLONE_VM | CLONE_VFORK, argp);
    int clone_errno = errno;
    if (mid > 0) waitpid(mid, NULL, __WCLONE);
    errno = saved;
    memcpy(&args_copy, argp, sizeof args_copy);
    struct spawn_args *a = &args_copy;
    if (mid < 0 || a->err != 0) {
        snprintf(cw_sh->helper_error, sizeof cw_sh->helper_error, "cannot start %s: %s", image,
                 strerror(mid < 0 ? clone_errno : a->err));
        atomic_store(&cw_sh->helper_state, CW_HELPER_NONE);
        return -1;
    }
    /* a->pid stays -1 where clone(CLONE_VM) is emulated by a fork (valgrind): the helper writes
     * its pid into the region itself. */
    if (a->pid > 0) {
        int32_t none = 0;
        atomic_compare_exchange_strong(&cw_sh->helper_pid, &none, a->pid);
        if (yama_scope() == 1) prctl(PR_SET_PTRACER, (unsigned long)a->pid, 0, 0, 0);
    }
    if (!wait) return 0;
    /* Its first word: can it reach our descriptors?  A few milliseconds, bounded. */
    for (int i = 0; i < 100; i++) {
        uint32_t st = atomic_load(&cw_sh->helper_state);
        if (st == CW_HELPER_READY) return 0;
        if (st == CW_HELPER_FAILED) break;
        pid_t known = atomic_load(&cw_sh->helper_pid);
        if (i >= 5 && known > 0 && helper_gone(known)) {
            if (cw_sh->helper_error[0] == '\0')
                snprintf(cw_sh->helper_error, sizeof cw_sh->helper_error, "it exited at once");
            break;
        }
        cw_futex_wait(&cw_sh->helper_state, st, 20);
    }
    uint32_t st = atomic_load(&cw_sh->helper_state);
    /* Still starting after two seconds (a loaded machine): it will come. */
    if (st == CW_HELPER_READY || (st == CW_HELPER_STARTING && atomic_load(&cw_sh->helper_pid) > 0)) return 0;
    atomic_store(&cw_sh->helper_pid, 0);
    return -1;
}

/* ---- the pids budget -------------------------------------------------------- */

static long read_number(const char *path, int *unlimited)
{
    char buf[32];
    if (read_small(path, buf, sizeof buf) < 0) return -1;
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
    if (read_small("/proc/self/cgroup", buf, sizeof buf) < 0) return -1;
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

int cw_helper_pids_tight(void)
{
    long left = pids_left();
    /* A watcher process takes one pid from the program's budget: where few are left, the program's
     * own forks come first. */
    return left >= 0 && left < 64;
}

int cw_helper_running(void)
{
    struct cw_shared *sh = cw_sh;
    return sh != NULL && !cw_is_helper && atomic_load(&sh->helper_pid) > 0;
}

void cw_helper_poke(void)
{
    struct cw_shared *sh = cw_sh;
    if (sh == NULL) return;
    pid_t pid = atomic_load(&sh->helper_pid);
    /* SIGURG: ignored by default, so should the helper be gone and its pid taken by another
     * process, that one is not hurt. */
    if (pid > 0) syscall(SYS_kill, pid, SIGURG);
}

void cw_helper_request(_Atomic uint32_t *req, _Atomic uint32_t *done)
{
    struct cw_shared *sh = cw_sh;
    pid_t pid = sh != NULL ? atomic_load(&sh->helper_pid) : 0;
    if (pid <= 0) return;
    int saved = errno;
    uint32_t want = atomic_fetch_add(req, 1) + 1;
    cw_helper_poke();
    /* Bounded: a minute, and not a moment longer than the helper lives. */
    for (int i = 0; i < 600; i++) {
        uint32_t d = atomic_load(done);
        if ((int32_t)(d - want) >= 0) break;
        if (helper_gone(pid)) break;
        if (i > 0 && i % 10 == 0) cw_helper_poke(); /* a wake lost in a race with its sleep */
        cw_futex_wait(done, d, 100);
    }
    errno = saved;
}

/* ---- the helper's side ------------------------------------------------------ */

static void helper_fail(const char *what, int err)
{
    if (cw_sh != NULL) {
        snprintf(cw_sh->helper_error, sizeof cw_sh->helper_error, "%s: %s", what, strerror(err));
        atomic_store(&cw_sh->helper_state, CW_HELPER_FAILED);
        cw_futex_wake(&cw_sh->helper_state);
    }
    _exit(1);
}

void cw_helper_main_if_asked(void)
{
    const char *spec = getenv(ENV_HELPER);
    if (spec == NULL) return;
    cw_is_helper = 1;
    /* Every call this process makes is its own: the hooks must pass them straight through. */
    cw_in_lib = 1;
    cw_on_private_table = 1;
    int memfd = -1;
    unsigned long addr = 0;
    size_t size = 0;
    long pid = 0;
    if (sscanf(spec, "%d:%lx:%zx:%ld", &memfd, &addr, &size, &pid) != 4 || memfd < 0 || pid <= 0) _exit(2);
    watched_pid = (pid_t)pid;
    watched_region = (uintptr_t)addr;
    if (cw_region_attach(memfd, size) != 0) {
        int err = errno;
        /* Not mapped: report through a mapping anywhere, just for the error word. */
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (p != MAP_FAILED) {
            struct cw_shared *sh = p;
            snprintf(sh->helper_error, sizeof sh->helper_error, "cannot map the shared table: %s", strerror(err));
            atomic_store(&sh->helper_state, CW_HELPER_FAILED);
            cw_futex_wake(&sh->helper_state);
        }
        _exit(1);
    }
    close(memfd);
    /* 0, 1 and 2 were closed at the exec: fill them, so that no descriptor of ours (a copy of the
     * log) ever takes one of those numbers and gets written to as "stderr". */
    for (int i = 0; i < 3; i++)
        if (fcntl(i, F_GETFD) < 0) open("/dev/null", O_RDWR);
    unsetenv(ENV_HELPER);
    memcpy(&cw_cfg, &cw_sh->cfg, sizeof cw_cfg);
    prctl(PR_SET_NAME, (unsigned long)"closewait", 0, 0, 0);

    atomic_store(&cw_sh->helper_start, start_time_of(getpid()));
    atomic_store(&cw_sh->helper_pid, getpid());
    int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pidfd < 0) helper_fail("pidfd_open", errno);
    /* pidfd_getfd checks access before the number: EBADF means allowed, EPERM means not.  Under
     * Yama the program names us its ptracer just after we start: give it a moment. */
    for (int i = 0;; i++) {
        int probe = (int)syscall(SYS_pidfd_getfd, pidfd, 0x7ffffff0, 0);
        if (probe >= 0) close(probe);
        if (probe >= 0 || errno == EBADF) break;
        if (i >= 50 || (errno != EPERM && errno != EACCES))
            helper_fail("cannot reach the program's descriptors (pidfd_getfd)", errno);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    uint64_t cookie = 0;
    struct iovec local = {&cookie, sizeof cookie};
    struct iovec remote = {(void *)(watched_region + offsetof(struct cw_shared, cookie)), /* NOLINT(performance-no-int-to-ptr) */
                           sizeof cookie};
    if (process_vm_readv((pid_t)pid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof cookie)
        helper_fail("cannot read the program's memory (process_vm_readv)", errno);
    if (cookie != cw_sh->cookie) helper_fail("the program is not the one that started us", ESRCH);

    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    cw_watcher_helper_run(pidfd);
    _exit(0);
}

/* Has the program exec'd another image (ours is then gone from its memory)?  A read refused
 * (the program made itself non-dumpable) says nothing either way: its pidfd still tells its end. */
int cw_helper_program_changed(void)
{
    uint64_t cookie = 0;
    struct iovec local = {&cookie, sizeof cookie};
    struct iovec remote = {(void *)(watched_region + offsetof(struct cw_shared, cookie)), /* NOLINT(performance-no-int-to-ptr) */
                           sizeof cookie};
    ssize_t n = process_vm_readv(watched_pid, &local, 1, &remote, 1, 0);
    if (n == (ssize_t)sizeof cookie) return cookie != cw_sh->cookie;
    return n < 0 && (errno == EFAULT || errno == ENOMEM);
}
