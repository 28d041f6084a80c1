/*
 * closewait-ebpf: the eBPF front-end.  `closewait-ebpf --attach PID` follows a running process,
 * `closewait-ebpf -- program args` starts one (stopped until the kernel side is in place, so
 * nothing is missed); neither needs the program to go through libc or to have been started with
 * the library.
 *
 * It is a producer of the region, like the libc hooks: it makes a region holding an area per
 * traced process (the one named, and the processes it forks, each from its first instruction;
 * at an attach, its children already running too), and writes there what the kernel side tells it (births with their stacks,
 * reads of EOF, closes, dups) in the same slots the hooks write.  The watcher's own code then
 * looks at it (cw_watch_tick: the sock_diag dump, the grace, the kernel's word, the verdict) and
 * reports through the same printers and sink; this file decides only when to look.  It runs as
 * the traced process's watcher (cw_in_watcher_process): reports go to its own stderr or to
 * CLOSEWAIT_LOG, and pcs are named from the module list it publishes from /proc/PID/maps.
 */
#define _GNU_SOURCE
#include "watcher/internal.h"
#include "sys/sockets.h"
#include "sys/procfs.h"
#include "ebpf/events.h"
#include "ebpf/remote_unwind.h"
#include "closewait.skel.h"

#include <bpf/libbpf.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif

static pid_t target;             /* the process named (or started) */
static int spawned;              /* we started it: its exit status is ours */
static int reaped;               /* and waited for it */
static int traced_is_go;
/* A process followed: its area in the region, and what this file keeps of it. */
#define MAX_EXEC_RANGES 512
struct followed {
    pid_t pid;
    struct cw_area *area;
    int listening;               /* a listener is held: look every interval (its backlog) */
    int exiting;                 /* it called exit_group */
    int nexec;
    struct {
        uintptr_t lo, hi;
    } exec[MAX_EXEC_RANGES];     /* its executable mappings, to notice a dlopen */
};
static struct followed *fl;
static size_t nfl, fl_cap;
static int areas_exhausted;
static struct closewait_bpf *skel;
static volatile sig_atomic_t stop_signal;

static int64_t fin_until;        /* a FIN was seen: look until this time */
static long counted[CW_EV_FORK + 1]; /* records of each kind, for CLOSEWAIT_EBPF_DEBUG */

static void say(const char *a, const char *b, const char *c)
{
    cw_warn(a, b, c);
}

static void usage(void)
{
    fprintf(stderr, "usage: closewait-ebpf --attach PID\n"
                    "       closewait-ebpf [--] program [args...]\n"
                    "       closewait-ebpf --check   (can eBPF tracing run here?  One line if not)\n"
                    "Options are the CLOSEWAIT_* variables (see closewait --help).\n");
}

/* ---- permission ------------------------------------------------------------ */

static int has_cap(const struct __user_cap_data_struct *d, int cap)
{
    return (d[cap / 32].effective >> (cap % 32)) & 1u;
}

/* One line naming what is missing and how to get it; 0 when everything is there. */
static int check_permission(void)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0) return 0; /* cannot tell: let the kernel say */
    int admin = has_cap(d, CAP_SYS_ADMIN);
    const char *missing = NULL;
    if (!admin && !has_cap(d, CAP_BPF) && !has_cap(d, CAP_PERFMON)) missing = "CAP_BPF and CAP_PERFMON";
    else if (!admin && !has_cap(d, CAP_BPF)) missing = "CAP_BPF";
    else if (!admin && !has_cap(d, CAP_PERFMON)) missing = "CAP_PERFMON";
    if (missing != NULL) {
        char why[200];
        snprintf(why, sizeof why, " (not root, and %s missing): run it as root (sudo closewait ...), ", missing);
        say("eBPF tracing needs root or CAP_BPF+CAP_PERFMON", why,
            "or give it them: sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep closewait-ebpf");
        return -1;
    }
    if (access("/sys/kernel/tracing/events/syscalls", F_OK) == 0) return 0;
    /* Not mounted: mount it if we may. */
    if (has_cap(d, CAP_SYS_ADMIN) && mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, NULL) == 0 &&
        access("/sys/kernel/tracing/events/syscalls", F_OK) == 0)
        return 0;
    if (access("/sys/kernel/tracing/events", F_OK) == 0) {
        say("the kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS): ", "eBPF tracing cannot follow system calls here", NULL);
        return -1;
    }
    say("tracefs is not mounted and could not be: ", "run sudo mount -t tracefs tracefs /sys/kernel/tracing", NULL);
    return -1;
}

static int quiet_libbpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_WARN && getenv("CLOSEWAIT_EBPF_DEBUG") != NULL) return vfprintf(stderr, fmt, ap);
    return 0;
}

/* ---- the traced program ------------------------------------------------------ */

/* Go binaries keep frame pointers, which bpf_get_stack follows: no stack copy for them. */
static int elf_is_go(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    elf_version(EV_CURRENT);
    Elf *elf = elf_begin(fd, ELF_C_READ, NULL);
    int go = 0;
    size_t shstrndx;
    if (elf != NULL && elf_getshdrstrndx(elf, &shstrndx) == 0) {
        for (Elf_Scn *scn = elf_nextscn(elf, NULL); scn != NULL && !go; scn = elf_nextscn(elf, scn)) {
            GElf_Shdr sh;
            if (gelf_getshdr(scn, &sh) == NULL) continue;
            const char *name = elf_strptr(elf, shstrndx, sh.sh_name);
            go = name != NULL && (strcmp(name, ".go.buildinfo") == 0 || strcmp(name, ".gopclntab") == 0 ||
                                  strcmp(name, ".note.go.buildid") == 0);
        }
    }
    if (elf != NULL) elf_end(elf);
    close(fd);
    return go;
}

/* Where runtime.g keeps `ancestors` and where runtime.ancestorInfo keeps `pcs`, from the Go
 * binary's DWARF; 0 when it does not say. */
static int member_offset(Dwarf_Die *type, const char *name, uint32_t *out)
{
    Dwarf_Die m;
    if (dwarf_child(type, &m) != 0) return 0;
    do {
        const char *n = dwarf_diename(&m);
        Dwarf_Attribute attr;
        Dwarf_Word off;
        if (dwarf_tag(&m) == DW_TAG_member && n != NULL && strcmp(n, name) == 0 &&
            dwarf_attr(&m, DW_AT_data_member_location, &attr) != NULL && dwarf_formudata(&attr, &off) == 0 &&
            off < 4096) {
            *out = (uint32_t)off;
            return 1;
        }
    } while (dwarf_siblingof(&m, &m) == 0);
    return 0;
}

static void go_ancestor_offsets(const char *path, uint32_t *ancestors, uint32_t *pcs)
{
    *ancestors = *pcs = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    Dwarf *dw = dwarf_begin(fd, DWARF_C_READ);
    int found_g = 0, found_info = 0;
    Dwarf_Off off = 0, next;
    size_t header;
    while (dw != NULL && !(found_g && found_info) && dwarf_nextcu(dw, off, &next, &header, NULL, NULL, NULL) == 0) {
        Dwarf_Die cu, d;
        if (dwarf_offdie(dw, off + header, &cu) != NULL && dwarf_child(&cu, &d) == 0) {
            do {
                if (dwarf_tag(&d) != DW_TAG_structure_type) continue;
                const char *n = dwarf_diename(&d);
                if (n == NULL) continue;
                if (!found_g && strcmp(n, "runtime.g") == 0) found_g = member_offset(&d, "ancestors", ancestors);
                else if (!found_info && strcmp(n, "runtime.ancestorInfo") == 0) found_info = member_offset(&d, "pcs", pcs) || 1;
            } while (!(found_g && found_info) && dwarf_siblingof(&d, &d) == 0);
        }
        off = next;
    }
    if (!found_g || !found_info) *ancestors = 0;
    if (dw != NULL) dwarf_end(dw);
    close(fd);
}

/* The program as execvp would find it. */
static int resolve_program(const char *name, char *out, size_t cap)
{
    if (strchr(name, '/') != NULL) {
        snprintf(out, cap, "%s", name);
        return access(out, X_OK);
    }
    const char *path = getenv("PATH");
    if (path == NULL) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path != '\0') {
        const char *colon = strchr(path, ':');
        size_t len = colon != NULL ? (size_t)(colon - path) : strlen(path);
        snprintf(out, cap, "%.*s/%s", (int)len, len ? path : ".", name);
        if (access(out, X_OK) == 0) return 0;
        path += len + (colon != NULL);
    }
    return -1;
}

/* Fork the program, stopped before its exec until `go` is written. */
static int go_pipe[2] = {-1, -1}, exec_pipe[2] = {-1, -1};
static pid_t spawn_stopped(char **argv)
{
    if (pipe2(go_pipe, O_CLOEXEC) != 0 || pipe2(exec_pipe, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid != 0) {
        close(go_pipe[0]);
        close(exec_pipe[1]);
        return pid;
    }
    close(go_pipe[1]);
    close(exec_pipe[0]);
    char c;
    if (read(go_pipe[0], &c, 1) != 1) _exit(127);
    if (traced_is_go && cw_cfg.go_ancestors) {
        /* The runtime keeps each goroutine's creator's stack: what started a dial in a
         * goroutine of net/http's own. */
        const char *old = getenv("GODEBUG");
        char godebug[1024];
        snprintf(godebug, sizeof godebug, "%s%stracebackancestors=1", old != NULL ? old : "",
                 old != NULL && old[0] != '\0' ? "," : "");
        setenv("GODEBUG", godebug, 1);
    }
    close(go_pipe[0]);
    execvp(argv[0], argv);
    int err = errno;
    if (write(exec_pipe[1], &err, sizeof err) < 0) {
    }
    _exit(127);
}

/* Let it run; 0 once its exec went through. */
static int release_spawned(void)
{
    if (write(go_pipe[1], "g", 1) != 1) return -1;
    close(go_pipe[1]);
    int err = 0;
    ssize_t n = read(exec_pipe[0], &err, sizeof err);
    close(exec_pipe[0]);
    if (n == (ssize_t)sizeof err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* ---- its modules ------------------------------------------------------------- */

/* /proc/PID/maps lines of its file-backed mappings, published in its area, as the hooks publish
 * the program's own (modules.c): the watcher's symbolizer reads them there. */
static void publish_modules(struct followed *f)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%ld/maps", (long)f->pid);
    FILE *maps = fopen(path, "re");
    if (maps == NULL) return;
    struct cw_area *a = f->area;
    uint32_t gen = atomic_load(&a->modules_gen);
    atomic_store(&a->modules_gen, gen | 1u);
    size_t n = 0, cap = sizeof a->modules;
    f->nexec = 0;
    while (fgets(line, sizeof line, maps) != NULL) {
        unsigned long lo, hi;
        char perms[8];
        int name_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms, &name_at) < 3 || name_at == 0) continue;
        if (line[name_at] != '/' || strstr(line, " (deleted)") != NULL) continue;
        size_t len = strlen(line);
        if (n + len < cap) {
            memcpy(a->modules + n, line, len);
            n += len;
        }
        if (perms[2] == 'x' && f->nexec < MAX_EXEC_RANGES) {
            f->exec[f->nexec].lo = lo;
            f->exec[f->nexec].hi = hi;
            f->nexec++;
        }
    }
    fclose(maps);
    a->modules[n < cap ? n : cap - 1] = '\0';
    atomic_store(&a->modules_len, (uint32_t)n);
    atomic_store(&a->modules_gen, (gen | 1u) + 1u);
    char exe_link[64];
    snprintf(exe_link, sizeof exe_link, "/proc/%ld/exe", (long)f->pid);
    ssize_t len = readlink(exe_link, a->exe, sizeof a->exe - 1);
    a->exe[len > 0 ? len : 0] = '\0';
    /* The unwinder reads the named process's modules; its forks have the same (an exec in one
     * of them is unwound by its frame pointers). */
    if (f->pid == target) cw_remote_unwind_reset();
}

/* A pc in no known module: something was mapped since (a dlopen). */
static void cover(struct followed *f, const uintptr_t *pcs, int n)
{
    for (int i = 0; i < n; i++) {
        int known = 0;
        for (int k = 0; k < f->nexec && !known; k++) known = pcs[i] >= f->exec[k].lo && pcs[i] < f->exec[k].hi;
        if (!known) {
            publish_modules(f);
            return;
        }
    }
}

/* ---- the processes followed ------------------------------------------------------- */

static struct followed *followed_of(pid_t pid)
{
    for (size_t i = 0; i < nfl; i++)
        if (fl[i].pid == pid) return &fl[i];
    return NULL;
}

static struct proc *proc_of(pid_t pid)
{
    for (size_t k = 0; k < nprocs; k++)
        if (procs[k].pid == pid) return &procs[k];
    return NULL;
}

/* The descriptor table that the slot functions (fdtable.c) write: this process's. */
static void table_of(struct followed *f)
{
    struct cw_area *old = cw_me;
    if (old == f->area) return;
    /* cw_table_repoint() sets the chunks of the new table only (it is made for a process that
     * had no other): the old one's go first. */
    int high = old != NULL ? atomic_load(&old->fd_high) : 0;
    unsigned chunks = high <= 0 ? 0 : (unsigned)(high - 1) / CW_CHUNK_SLOTS + 1;
    for (unsigned c = 0; c < chunks && c < CW_MAX_CHUNKS; c++) atomic_store(&cw_chunks[c], NULL);
    cw_me = f->area;
    cw_table_repoint();
}

static struct followed *follow(pid_t pid, struct cw_area *a)
{
    if (cw_grow(&fl, &fl_cap, nfl, sizeof *fl, 8) != 0) return NULL;
    struct followed *f = &fl[nfl++];
    memset(f, 0, sizeof *f);
    f->pid = pid;
    f->area = a;
    atomic_store(&a->any_tcp, 1);
    /* Reports about it go where the first one's go (our stderr, as published there). */
    if (nfl > 1 && a != fl[0].area) memcpy(&a->err, &fl[0].area->err, sizeof a->err);
    return f;
}

/* The kernel side follows pid too (it follows the named process and what it forks by itself). */
static void kernel_follows(pid_t pid, int yes)
{
    if (pid == target) return;
    uint32_t key = (uint32_t)pid;
    uint8_t one = 1;
    if (yes) {
        if (bpf_map_update_elem(bpf_map__fd(skel->maps.followed), &key, &one, BPF_NOEXIST) == 0)
            __atomic_fetch_add(&skel->bss->nfollowed, 1, __ATOMIC_RELAXED);
    } else if (bpf_map_delete_elem(bpf_map__fd(skel->maps.followed), &key) == 0) {
        __atomic_fetch_sub(&skel->bss->nfollowed, 1, __ATOMIC_RELAXED);
    }
}

/* The kernel side's (tgid, fd) entries of every tracked descriptor of f: added (a fork's
 * inheritance) or removed (f is gone). */
static void kernel_fds(struct followed *f, int add)
{
    table_of(f);
    int map = bpf_map__fd(skel->maps.fds);
    for (int fd = cw_table_next(0); fd >= 0; fd = cw_table_next(fd + 1)) {
        struct cw_slot *s = cw_slot_peek(fd);
        uint32_t kind = s != NULL ? CW_SEQ_KIND(atomic_load(&s->seq)) : CW_KIND_FREE;
        if (kind != CW_KIND_TCP && kind != CW_KIND_LISTEN) continue;
        struct {
            uint32_t tgid, fd;
        } key = {(uint32_t)f->pid, (uint32_t)fd};
        uint64_t inode = atomic_load(&s->id);
        if (add) bpf_map_update_elem(map, &key, &inode, BPF_NOEXIST);
        else bpf_map_delete_elem(map, &key);
    }
}

/* parent forked child: the child gets an area made as the library makes one at a fork (a copy of
 * the parent's table: what it inherited is reported as inherited, where the parent no longer
 * holds it). */
static void on_fork(pid_t child, pid_t parent)
{
    struct followed *p = followed_of(parent);
    if (p == NULL || followed_of(child) != NULL) return;
    table_of(p);
    cw_region_fork_prepare();
    struct cw_area *a = cw_private.fork_area;
    cw_region_fork_result(child, 0);
    struct followed *f = a != NULL ? follow(child, a) : NULL;
    if (f == NULL) {
        if (a != NULL) cw_area_release(a);
        kernel_follows(child, 0);
        if (!areas_exhausted) {
            areas_exhausted = 1;
            say("too many processes to follow: the ones forked from now on are not", NULL, NULL);
        }
        return;
    }
    p = followed_of(parent); /* fl may have moved */
    atomic_store(&a->fork_parent_pid, (int32_t)parent);
    f->listening = p->listening;
    f->nexec = p->nexec;
    memcpy(f->exec, p->exec, sizeof f->exec);
    cw_proc_add(a, child);
    kernel_fds(f, 1);
}

/* f is gone: its summary (only if something was reported, as at the library's exit), then it
 * is forgotten, by the kernel side too. */
static void unfollow(struct followed *f, const char *why)
{
    struct proc *p = proc_of(f->pid);
    if (p != NULL) {
        P = p;
        cw_set_current_area(f->area);
        cw_finding_summary(why);
        cw_set_current_area(NULL);
        P = NULL;
    }
    kernel_fds(f, 0);
    kernel_follows(f->pid, 0);
    if (p != NULL) {
        cw_proc_free(p);
        *p = procs[--nprocs];
    }
    if (cw_me == f->area) {
        cw_me = NULL;
        cw_table_repoint();
    }
    cw_area_release(f->area);
    *f = fl[--nfl];
}

/* ---- events ---------------------------------------------------------------------- */

static int64_t ts_ms(const struct cw_ev *e)
{
    return (int64_t)(e->ts_ns / 1000000u);
}

/* The frame-pointer chain through the stack copy, for code with no CFI the unwinder knows. */
static int frame_pointer_walk(const struct cw_ev *e, uintptr_t *pcs, int max)
{
    int n = 0;
    pcs[n++] = (uintptr_t)e->regs.ip;
    uint64_t bp = e->regs.bp, lo = e->regs.sp, hi = e->regs.sp + e->stack_bytes;
    while (n < max && bp >= lo && bp + 16 <= hi && bp % 8 == 0) {
        uint64_t frame[2];
        memcpy(frame, e->stack + (bp - lo), sizeof frame);
        if (frame[1] == 0) break;
        pcs[n++] = (uintptr_t)frame[1];
        if (frame[0] <= bp) break;
        bp = frame[0];
    }
    return n;
}

/* The event's stack in the store: DWARF from the stack copy, else the frame pointers.  A stack of
 * one frame (the system call's own) says nothing of where the socket came from: none. */
static uint32_t stack_of(struct followed *f, const struct cw_ev *e)
{
    uintptr_t pcs[CW_MAX_DEPTH];
    int depth = (int)cw_cfg.stack_depth, n = 0;
    if (depth > CW_MAX_DEPTH) depth = CW_MAX_DEPTH;
    if (!traced_is_go && e->stack_bytes > 0) {
        uintptr_t ip = (uintptr_t)e->regs.ip;
        cover(f, &ip, 1);
        n = cw_remote_unwind(target, e, pcs, depth);
    }
    if (n < 2 && e->stack_bytes > 0) n = frame_pointer_walk(e, pcs, depth);
    if (n < 2 && e->fp_bytes > 0) {
        n = e->fp_bytes / (int)sizeof(uint64_t);
        if (n > depth) n = depth;
        for (int i = 0; i < n; i++) pcs[i] = (uintptr_t)e->fp_frames[i];
    }
    if (n < 2) return 0;
    /* Go: then the stack of the goroutine that started this one, from its `go` statement. */
    for (uint32_t i = 0; i < e->ancestor_n && i < CW_EV_ANCESTOR_FRAMES && n < CW_MAX_DEPTH; i++) {
        uintptr_t pc = (uintptr_t)e->ancestor_pcs[i];
        /* The runtime writes an inlined call's pc and the same pc + 1 for the function it is
         * in; the symbolizer expands inlined calls itself. */
        if (pc == 0 || (i > 0 && (pc == pcs[n - 1] || pc == pcs[n - 1] + 1))) continue;
        pcs[n++] = pc;
    }
    cover(f, pcs, n);
    return cw_stack_store(pcs, n);
}

static struct cw_slot *tcp_slot(int fd)
{
    struct cw_slot *s = cw_slot_peek(fd);
    if (s == NULL) return NULL;
    uint32_t kind = CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire));
    return kind == CW_KIND_TCP || kind == CW_KIND_LISTEN ? s : NULL;
}

static void on_birth(struct followed *f, const struct cw_ev *e)
{
    struct cw_slot *s = cw_slot_get(e->fd);
    if (s == NULL) return;
    cw_slot_birth(s, CW_KIND_TCP, (int)e->op, stack_of(f, e), e->inode);
    atomic_store_explicit(&s->open_ms, ts_ms(e), memory_order_relaxed);
    if (e->fd2 >= 0 && tcp_slot(e->fd2) != NULL) atomic_store_explicit(&s->origin_fd, e->fd2, memory_order_relaxed);
    if (e->family == AF_INET6) atomic_store_explicit(&f->area->any_inet6, 1, memory_order_relaxed);
}

static void on_listen(struct followed *f, const struct cw_ev *e)
{
    struct cw_slot *s = tcp_slot(e->fd);
    if (s == NULL) return;
    uint64_t inode = atomic_load_explicit(&s->id, memory_order_relaxed);
    cw_slot_birth(s, CW_KIND_LISTEN, CW_OP_SOCKET, stack_of(f, e), inode);
    atomic_store_explicit(&s->backlog, e->fd2, memory_order_relaxed);
    f->listening = 1;
}

static void on_eof(struct followed *f, const struct cw_ev *e)
{
    struct cw_slot *s = tcp_slot(e->fd);
    if (s == NULL || (atomic_load_explicit(&s->flags, memory_order_relaxed) & CW_SF_EOF)) return;
    atomic_store_explicit(&s->eof_stack, stack_of(f, e), memory_order_relaxed);
    atomic_store_explicit(&s->eof_by, (uint8_t)e->op, memory_order_relaxed);
    atomic_store_explicit(&s->eof_ms, ts_ms(e), memory_order_relaxed);
    atomic_fetch_or_explicit(&s->flags, CW_SF_EOF, memory_order_release);
    int64_t until = ts_ms(e) + cw_cfg.grace_ms + 4 * cw_cfg.interval_ms;
    if (until > fin_until) fin_until = until;
}

static int on_event(void *ctx, void *data, size_t size)
{
    (void)ctx;
    const struct cw_ev *e = data;
    if (size < CW_EV_HEAD_BYTES) return 0;
    if (e->kind <= CW_EV_FORK) counted[e->kind]++;
    if ((e->kind == CW_EV_BIRTH || e->kind == CW_EV_LISTEN || e->kind == CW_EV_EOF) &&
        (size < CW_EV_NO_STACK_BYTES || e->stack_bytes > size - CW_EV_NO_STACK_BYTES))
        return 0;
    if (e->kind == CW_EV_FORK) {
        on_fork((pid_t)e->fd, (pid_t)e->fd2);
        return 0;
    }
    if (e->kind == CW_EV_FIN) {
        int64_t until = ts_ms(e) + cw_cfg.grace_ms + 4 * cw_cfg.interval_ms;
        if (until > fin_until) fin_until = until;
        return 0;
    }
    struct followed *f = followed_of((pid_t)e->tgid);
    if (f == NULL) return 0;
    table_of(f);
    switch (e->kind) {
    case CW_EV_BIRTH:
        on_birth(f, e);
        break;
    case CW_EV_CONNECT: {
        struct cw_slot *s = tcp_slot(e->fd);
        if (s != NULL) atomic_fetch_or_explicit(&s->flags, CW_SF_CLIENT, memory_order_relaxed);
        break;
    }
    case CW_EV_LISTEN:
        on_listen(f, e);
        break;
    case CW_EV_EOF:
        on_eof(f, e);
        break;
    case CW_EV_CLOSE:
        cw_slot_forget(e->fd);
        break;
    case CW_EV_DUP:
        cw_slot_copy(e->fd2, e->fd);
        break;
    case CW_EV_CLOSE_RANGE:
        if (e->fd >= 0 && e->fd2 >= e->fd) cw_slot_forget_range((unsigned)e->fd, (unsigned)e->fd2);
        break;
    case CW_EV_EXIT:
        /* Its descriptors are closed by its exit from now on, not by it: no more looks at it
         * (unfollowed when its pidfd says it is gone). */
        f->exiting = 1;
        break;
    default:
        break;
    }
    return 0;
}

/* ---- what it held before the attach --------------------------------------------- */

/* Its TCP sockets now, from /proc/PID/fd and the kernel's list of every TCP socket: tracked from
 * now on (no stack: their birth is not known), and those already in CLOSE_WAIT listed at the
 * first look. */
static int adopt_existing(struct followed *f, const struct cw_dump *all)
{
    table_of(f);
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/fd", (long)f->pid);
    DIR *d = opendir(dir);
    if (d == NULL) return -1;
    int fds_map = bpf_map__fd(skel->maps.fds), inodes_map = bpf_map__fd(skel->maps.inodes), held = 0;
    int64_t now = cw_now_ms();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(de->d_name, &end, 10);
        if (*end != '\0' || fd < 0 || fd > INT32_MAX) continue;
        char link[128], path[64 + 256];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0) continue;
        link[n] = '\0';
        unsigned long long inode = 0;
        if (sscanf(link, "socket:[%llu]", &inode) != 1) continue;
        const struct cw_sock *k = cw_dump_find(all, inode);
        if (k == NULL) continue;
        struct cw_slot *s = cw_slot_get((int)fd);
        if (s == NULL) continue;
        enum cw_kind kind = k->state == TCPS_LISTEN ? CW_KIND_LISTEN : CW_KIND_TCP;
        cw_slot_birth(s, kind, CW_OP_BEFORE_ATTACH, 0, inode);
        atomic_store_explicit(&s->open_ms, now, memory_order_relaxed);
        atomic_fetch_or_explicit(&s->flags, CW_SF_BEFORE_ATTACH, memory_order_relaxed);
        if (k->family == AF_INET6) atomic_store_explicit(&f->area->any_inet6, 1, memory_order_relaxed);
        if (kind == CW_KIND_LISTEN) f->listening = 1;
        if (k->state == TCPS_CLOSE_WAIT) {
            atomic_fetch_or_explicit(&s->flags, CW_SF_HELD_AT_ATTACH, memory_order_relaxed);
            held++;
        }
        struct {
            uint32_t tgid, fd;
        } key = {(uint32_t)f->pid, (uint32_t)fd};
        uint64_t value = inode;
        uint8_t one = 1;
        bpf_map_update_elem(fds_map, &key, &value, BPF_ANY);
        bpf_map_update_elem(inodes_map, &value, &one, BPF_ANY);
    }
    closedir(d);
    return held;
}

/* The processes pid's threads started and that run now, and theirs: followed too (an nginx
 * master's workers, a prefork server's children). */
static void follow_children(pid_t pid, const struct cw_dump *all, int *held, int depth)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/task", (long)pid);
    DIR *d = opendir(dir);
    if (d == NULL || depth > 8) {
        if (d != NULL) closedir(d);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[64 + 256 + 16], buf[4096];
        snprintf(path, sizeof path, "%s/%s/children", dir, de->d_name);
        if (cw_read_small(path, buf, sizeof buf) < 0) continue;
        for (char *p = buf, *end; *p != '\0'; p = end) {
            long child = strtol(p, &end, 10);
            if (end == p) break;
            if (child <= 0 || followed_of((pid_t)child) != NULL) continue;
            struct cw_area *a = cw_area_new_live((pid_t)child);
            struct followed *f = a != NULL ? follow((pid_t)child, a) : NULL;
            if (f == NULL) {
                if (a != NULL) cw_area_release(a);
                break;
            }
            kernel_follows((pid_t)child, 1);
            publish_modules(f);
            int h = adopt_existing(f, all);
            if (h > 0) *held += h;
            cw_proc_add(a, (pid_t)child);
            follow_children((pid_t)child, all, held, depth + 1);
        }
    }
    closedir(d);
}

/* ---- the loop ---------------------------------------------------------------------- */

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void look(void)
{
    cw_watch_tick(0);
}

/* f's process is gone (the one we started: its status in *status). */
static int gone(struct followed *f, int *status)
{
    if (spawned && f->pid == target) {
        int st = 0;
        pid_t r = waitpid(target, &st, WNOHANG);
        if (r == target) {
            *status = st;
            reaped = 1;
            return 1;
        }
        return r < 0 && errno == ECHILD;
    }
    struct proc *p = proc_of(f->pid);
    if (p != NULL && p->pidfd >= 0) {
        struct pollfd pfd = {p->pidfd, POLLIN, 0};
        return poll(&pfd, 1, 0) > 0;
    }
    return kill(f->pid, 0) != 0 && errno == ESRCH;
}

static int any_listening(void)
{
    for (size_t i = 0; i < nfl; i++)
        if (fl[i].listening && !fl[i].exiting) return 1;
    return 0;
}

static int any_leak_held(void)
{
    for (size_t k = 0; k < nprocs; k++)
        if (procs[k].nleaks > 0) return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int argi = 1;
    long attach_pid = 0;
    if (argi < argc && strcmp(argv[argi], "--check") == 0) {
        cw_config_load();
        if (check_permission() != 0) return 2;
        libbpf_set_print(quiet_libbpf);
        skel = closewait_bpf__open_and_load();
        int err = skel == NULL ? -errno : closewait_bpf__attach(skel);
        if (err != 0) say("cannot load the eBPF programs: ", strerror(-err), NULL);
        if (skel != NULL) closewait_bpf__destroy(skel);
        return err != 0 ? 2 : 0;
    }
    if (argi < argc && strcmp(argv[argi], "--attach") == 0) {
        if (argi + 1 >= argc) {
            usage();
            return 2;
        }
        char *end;
        attach_pid = strtol(argv[argi + 1], &end, 10);
        if (*end != '\0' || attach_pid <= 0 || attach_pid > INT32_MAX) {
            say("--attach needs a process id, not ", argv[argi + 1], NULL);
            return 2;
        }
        argi += 2;
    } else {
        if (argi < argc && strcmp(argv[argi], "--") == 0) argi++;
        if (argi >= argc) {
            usage();
            return 2;
        }
    }
    cw_config_load();
    /* Not the library in a program: this process is the watcher, and may say so. */
    cw_in_lib = 1;
    if (check_permission() != 0) return 2;

    char exe[PATH_MAX];
    if (attach_pid != 0) {
        target = (pid_t)attach_pid;
        char link[64];
        snprintf(link, sizeof link, "/proc/%ld/exe", attach_pid);
        ssize_t n = readlink(link, exe, sizeof exe - 1);
        if (n <= 0) {
            say("cannot attach to process ", argv[argi - 1], errno == ENOENT ? ": no such process" : ": cannot read its /proc/PID/exe");
            return 2;
        }
        exe[n] = '\0';
    } else {
        if (resolve_program(argv[argi], exe, sizeof exe) != 0) {
            say("cannot run ", argv[argi], ": not found or not executable");
            return 127;
        }
        traced_is_go = elf_is_go(exe);
        target = spawn_stopped(&argv[argi]);
        if (target < 0) {
            say("cannot start ", argv[argi], NULL);
            return 127;
        }
        spawned = 1;
    }
    traced_is_go = elf_is_go(exe);
    uint32_t ancestors_off = 0, ancestor_pcs_off = 0;
    if (traced_is_go) go_ancestor_offsets(exe, &ancestors_off, &ancestor_pcs_off);

    libbpf_set_print(quiet_libbpf);
    skel = closewait_bpf__open();
    int err = skel == NULL ? -errno : 0;
    if (err == 0) {
        skel->rodata->target_tgid = (uint32_t)target;
        skel->rodata->copy_stack = traced_is_go ? 0 : 1;
        skel->rodata->go_ancestors_off = ancestors_off;
        skel->rodata->go_ancestor_pcs_off = ancestor_pcs_off;
        err = closewait_bpf__load(skel);
    }
    if (err == 0) err = closewait_bpf__attach(skel);
    if (err != 0) {
        char why[200];
        snprintf(why, sizeof why, "%s (set CLOSEWAIT_EBPF_DEBUG=1 for the kernel's words)", strerror(-err));
        say("cannot load the eBPF programs: ", why, NULL);
        if (spawned) kill(target, SIGKILL);
        return 2;
    }
    if (cw_region_create() != 0) {
        say("cannot make the shared table", NULL, NULL);
        if (spawned) kill(target, SIGKILL);
        return 2;
    }
    struct followed *root = follow(target, cw_me);
    if (root == NULL) return 2;
    atomic_store(&root->area->pid, (int32_t)target);
    /* Reports go to our stderr: published as the area's, and held, as a watcher process does. */
    cw_sink_publish_stderr();
    cw_in_watcher_process = 1;
    ebpf_front_end = 1;
    cw_sink_stderr_hold(1);

    struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_event, NULL, NULL);
    if (rb == NULL) {
        say("cannot read the eBPF ring buffer", NULL, NULL);
        if (spawned) kill(target, SIGKILL);
        return 2;
    }
    if (spawned && release_spawned() != 0) {
        int e = errno;
        waitpid(target, NULL, 0);
        say("cannot run ", argv[argi], e == ENOENT ? ": not found" : ": exec failed");
        return 127;
    }
    publish_modules(&fl[0]);
    if (cw_proc_add(fl[0].area, target) == NULL) return 2;
    cw_watch_load_suppressions();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (attach_pid != 0) {
        char line[160];
        snprintf(line, sizeof line, "attached to process %ld (%s); Ctrl-C to detach", attach_pid,
                 traced_is_go ? "Go: frame-pointer stacks" : "DWARF stacks");
        say(line, NULL, NULL);
    }
    if (!spawned) {
        struct cw_dump all;
        memset(&all, 0, sizeof all);
        int held_before = cw_dump_take(&all, 0xfffu, 1) == 0 ? adopt_existing(&fl[0], &all) : -1;
        if (held_before < 0) say("cannot list the sockets it holds already (/proc/PID/fd)", NULL, NULL);
        else follow_children(target, &all, &held_before, 0);
        free(all.socks);
        free(all.index);
        free(all.peers);
        if (held_before > 0) look(); /* at once: what it held in CLOSE_WAIT before the attach */
    }

    int status = 0, detached = 0;
    int64_t next_look = cw_now_ms() + cw_cfg.interval_ms;
    long open = 0;
    while (nfl > 0) {
        int64_t now = cw_now_ms();
        int wait = next_look > now ? (int)(next_look - now) : 0;
        /* Records come without a wakeup (submit_flags): drain every 20 ms, or at once when the
         * kernel side says the buffer is filling. */
        int rc = ring_buffer__poll(rb, wait > 20 ? 20 : wait);
        if (rc >= 0) rc = ring_buffer__consume(rb);
        if (rc < 0 && rc != -EINTR) break;
        if (stop_signal != 0) {
            if (!spawned) {
                detached = 1;
                break;
            }
            kill(target, stop_signal);
            stop_signal = 0;
        }
        /* Gone, or going (exit_group): its descriptors are closed by its exit, not by it; its
         * summary says what it held at the end, as the library's at exit does. */
        for (size_t i = 0; i < nfl;) {
            if (!fl[i].exiting && !gone(&fl[i], &status)) {
                i++;
                continue;
            }
            if (fl[i].pid == target) {
                struct proc *p = proc_of(target);
                open += p != NULL ? cw_proc_open_now(p) : 0;
            }
            unfollow(&fl[i], "exit");
        }
        now = cw_now_ms();
        if (now < next_look || nfl == 0) continue;
        /* Only when something can be found: a FIN or an EOF within the grace period, a leak held
         * (its close is reported), a listener (its backlog).  A client that never meets a FIN
         * costs the kernel no dump. */
        if (any_listening() || any_leak_held() || now < fin_until) look();
        next_look = cw_now_ms() + (cw_watch_interval_ms > 0 ? cw_watch_interval_ms : cw_cfg.interval_ms);
    }
    ring_buffer__consume(rb);
    if (detached) {
        for (size_t k = 0; k < nprocs; k++) open += cw_proc_open_now(&procs[k]);
        while (nfl > 0) unfollow(&fl[nfl - 1], "detach");
    }
    if (getenv("CLOSEWAIT_EBPF_DEBUG") != NULL) {
        uint32_t zero = 0;
        uint64_t lost = 0;
        bpf_map_lookup_elem(bpf_map__fd(skel->maps.lost), &zero, &lost);
        fprintf(stderr, "closewait-ebpf: births %ld, listens %ld, eofs %ld, closes %ld, dups %ld, fins %ld, lost %llu\n",
                counted[CW_EV_BIRTH], counted[CW_EV_LISTEN], counted[CW_EV_EOF], counted[CW_EV_CLOSE] + counted[CW_EV_CLOSE_RANGE],
                counted[CW_EV_DUP], counted[CW_EV_FIN], (unsigned long long)lost);
    }
    ring_buffer__free(rb);
    closewait_bpf__destroy(skel);
    if (spawned) {
        if (!reaped) waitpid(target, &status, 0);
        if (open > 0 && cw_cfg.exitcode >= 0) return (int)cw_cfg.exitcode;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return open > 0 && cw_cfg.exitcode >= 0 ? (int)cw_cfg.exitcode : 0;
}
