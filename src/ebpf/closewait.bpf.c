// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel side of closewait's eBPF front-end: the system calls of one process (its tgid,
 * compared first in every program, so that other processes pay one comparison), as the libc
 * hooks see them, for programs that do not go through libc (Go, static binaries) or that were
 * started without the library.
 *
 * Only TCP sockets are followed: a birth is kept when the new descriptor is an AF_INET/AF_INET6
 * stream socket of protocol TCP or MPTCP, as the kernel says (not as the call's arguments say),
 * and its descriptor goes into `fds`; every other event looks its descriptor up there first, so
 * that reads of files, pipes and UDP sockets cost one lookup and send nothing.  A read that
 * returns data costs two comparisons.
 *
 * The peer's FIN comes from sock:inet_sock_set_state, which runs in the softirq of whatever task
 * the packet interrupted: the socket is tied to the traced process by its inode (`inodes`),
 * never by the current task.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "events.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define IPPROTO_MPTCP 262
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define TCP_CLOSE_WAIT_STATE 8
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#define F_DUPFD 0
#define F_DUPFD_CLOEXEC 1030

/* enum cw_op of fdtable.h */
#define OP_SOCKET 1
#define OP_ACCEPT 2
#define OP_ACCEPT4 3
#define OP_DUP 5
#define OP_READ 7
#define OP_READV 8
#define OP_RECVFROM 10
#define OP_RECVMSG 11

const volatile __u32 target_tgid = 0;
/* Copy the top of the user stack for a DWARF unwind in user space (not for Go: frame pointers). */
const volatile __u32 copy_stack = 1;
/* Go: offset of runtime.g's `ancestors` (0: not followed), and runtime.ancestorInfo's size and
 * its `pcs` slice's offset, from the binary's DWARF.  The g is in r14 at a system call. */
const volatile __u32 go_ancestors_off = 0;
const volatile __u32 go_ancestor_pcs_off = 0;

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} events SEC(".maps");

/* The traced processes' TCP descriptors: (tgid, fd) -> socket inode. */
struct fd_key {
    __u32 tgid;
    __u32 fd;
};
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 1 << 20);
    __type(key, struct fd_key);
    __type(value, __u64);
} fds SEC(".maps");

/* Processes followed besides target_tgid: the ones it forks (and the loader's, found at an
 * attach).  Looked at only while `nfollowed` says there are some: a process not traced pays a
 * comparison, not a lookup, until then. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, __u8);
} followed SEC(".maps");
__u32 nfollowed = 0;

/* Sockets the traced process has held, by inode, for the FIN. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, __u64);
    __type(value, __u8);
} inodes SEC(".maps");

/* Records the ring buffer had no room for. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} lost SEC(".maps");

char LICENSE[] SEC("license") = "GPL";

/* The current process's tgid when it is traced, else 0. */
static __always_inline __u32 traced(void)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == target_tgid) return tgid;
    if (nfollowed == 0 || bpf_map_lookup_elem(&followed, &tgid) == NULL) return 0;
    return tgid;
}

static __always_inline struct pt_regs *user_regs(void)
{
    return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* No wakeup per record: the loader drains the buffer every few milliseconds by itself (a
 * report waits for the grace period anyway); a buffer a quarter full wakes it at once. */
static __always_inline __u64 submit_flags(void)
{
    return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > (4 << 20) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void count_lost(void)
{
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(&lost, &zero);
    if (n) __sync_fetch_and_add(n, 1);
}

static __always_inline struct file *file_of(int fd)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
    if (fdt == NULL || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds)) return NULL;
    struct file **arr = BPF_CORE_READ(fdt, fd);
    struct file *f = NULL;
    bpf_probe_read_kernel(&f, sizeof f, &arr[fd]);
    return f;
}

/* The inode of fd when it is a TCP socket of an internet family, else 0. */
static __always_inline __u64 tcp_inode(int fd, __u32 *family)
{
    struct file *f = file_of(fd);
    if (f == NULL) return 0;
    struct inode *ino = BPF_CORE_READ(f, f_inode);
    if ((BPF_CORE_READ(ino, i_mode) & S_IFMT) != S_IFSOCK) return 0;
    struct socket *sock = BPF_CORE_READ(f, private_data);
    if (sock == NULL || BPF_CORE_READ(sock, type) != SOCK_STREAM) return 0;
    struct sock *sk = BPF_CORE_READ(sock, sk);
    if (sk == NULL) return 0;
    __u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
    __u16 proto = BPF_CORE_READ(sk, sk_protocol);
    if ((fam != AF_INET && fam != AF_INET6) || (proto != IPPROTO_TCP && proto != IPPROTO_MPTCP)) return 0;
    *family = fam;
    return BPF_CORE_READ(ino, i_ino);
}

static __always_inline void send_small(__u32 kind, int fd, int fd2, __u64 inode)
{
    struct cw_ev *e = bpf_ringbuf_reserve(&events, CW_EV_HEAD_BYTES, 0);
    if (e == NULL) {
        count_lost();
        return;
    }
    e->kind = kind;
    e->op = 0;
    e->fd = fd;
    e->fd2 = fd2;
    e->tid = (__u32)bpf_get_current_pid_tgid();
    e->tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
    e->pad0 = 0;
    e->family = 0;
    e->inode = inode;
    e->ts_ns = bpf_ktime_get_ns();
    e->fp_bytes = 0;
    e->stack_bytes = 0;
    bpf_ringbuf_submit(e, submit_flags());
}

#define KIND_OP(kind, op, family) ((kind) | (op) << 8 | (family) << 16)

/* A record with the stack of the call (a BPF call takes five arguments: kind, op and family
 * travel in one, KIND_OP). */
static __noinline void send_with_stack(void *ctx, __u32 kind_op, int fd, int fd2, __u64 inode)
{
    __u32 kind = kind_op & 0xff, op = (kind_op >> 8) & 0xff, family = kind_op >> 16;
    /* Go's records carry no stack copy: 8 KiB less of the buffer each. */
    struct cw_ev *e = copy_stack ? bpf_ringbuf_reserve(&events, sizeof(struct cw_ev), 0)
                                 : bpf_ringbuf_reserve(&events, CW_EV_NO_STACK_BYTES, 0);
    if (e == NULL) {
        count_lost();
        return;
    }
    e->kind = kind;
    e->op = op;
    e->fd = fd;
    e->fd2 = fd2;
    e->tid = (__u32)bpf_get_current_pid_tgid();
    e->tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
    e->pad0 = 0;
    e->family = family;
    e->inode = inode;
    e->ts_ns = bpf_ktime_get_ns();
    /* Frame pointers: Go's; code without them would have the kernel follow garbage, so there the
     * stack is copied and unwound with DWARF in user space instead (which walks frame pointers
     * itself where DWARF says nothing). */
    e->fp_bytes = copy_stack ? 0 : bpf_get_stack(ctx, e->fp_frames, sizeof e->fp_frames, BPF_F_USER_STACK);
    struct pt_regs *r = user_regs();
    if (r == NULL) {
        bpf_ringbuf_discard(e, 0);
        return;
    }
    e->regs.ip = r->ip;
    e->regs.sp = r->sp;
    e->regs.bp = r->bp;
    e->regs.bx = r->bx;
    e->regs.r12 = r->r12;
    e->regs.r13 = r->r13;
    e->regs.r14 = r->r14;
    e->regs.r15 = r->r15;
    e->ancestor_n = 0;
    e->pad = 0;
    if (go_ancestors_off != 0) {
        /* g.ancestors: *[]ancestorInfo; its first: the goroutine that started this one. */
        void *anc = NULL;
        struct {
            __u64 ptr, len;
        } slice = {0, 0}, pcs = {0, 0};
        if (bpf_probe_read_user(&anc, sizeof anc, (void *)(r->r14 + go_ancestors_off)) == 0 && anc != NULL &&
            bpf_probe_read_user(&slice, sizeof slice, anc) == 0 && slice.ptr != 0 && slice.len > 0 &&
            bpf_probe_read_user(&pcs, sizeof pcs, (void *)(slice.ptr + go_ancestor_pcs_off)) == 0 && pcs.ptr != 0) {
            __u64 n = pcs.len < CW_EV_ANCESTOR_FRAMES ? pcs.len : CW_EV_ANCESTOR_FRAMES;
            if (n > 0 && bpf_probe_read_user(e->ancestor_pcs, n * sizeof(__u64), (void *)pcs.ptr) == 0)
                e->ancestor_n = (__u32)n;
        }
    }
    e->stack_bytes = 0;
    if (copy_stack) { /* the branch the verifier sees the full record in */
        __u64 sp = e->regs.sp;
        if (bpf_probe_read_user(e->stack, sizeof e->stack, (void *)sp) == 0) {
            e->stack_bytes = sizeof e->stack;
        } else {
            /* The pages above may not be there (a thread's stack near its top): the first one. */
            __u32 n = 4096 - (__u32)(sp & 4095);
            if (n > 0 && n <= sizeof e->stack && bpf_probe_read_user(e->stack, n, (void *)sp) == 0) e->stack_bytes = n;
        }
    }
    bpf_ringbuf_submit(e, submit_flags());
}

static __noinline void birth(void *ctx, __u32 tgid, long ret, __u32 op, int listener)
{
    if (ret < 0) return;
    int fd = (int)ret;
    __u32 family = 0;
    __u64 ino = tcp_inode(fd, &family);
    struct fd_key key = {tgid, (__u32)fd};
    if (ino == 0) {
        /* Not TCP: a tracked number that is something else now (closed behind our back). */
        if (bpf_map_delete_elem(&fds, &key) == 0) send_small(CW_EV_CLOSE, fd, -1, 0);
        return;
    }
    bpf_map_update_elem(&fds, &key, &ino, BPF_ANY);
    __u8 one = 1;
    bpf_map_update_elem(&inodes, &ino, &one, BPF_ANY);
    send_with_stack(ctx, KIND_OP(CW_EV_BIRTH, op, family), fd, listener, ino);
}

/* A read that returned 0 for a non-empty buffer (len: the third argument, the length or the
 * iovec count; 1 where there is no such number). */
static __noinline void eof(void *ctx, __u32 tgid, int fd, __u64 len, __u32 op)
{
    if (len == 0) return;
    struct fd_key key = {tgid, (__u32)fd};
    __u64 *ino = bpf_map_lookup_elem(&fds, &key);
    if (ino == NULL) return;
    send_with_stack(ctx, KIND_OP(CW_EV_EOF, op, 0), fd, -1, *ino);
}

struct range_ctx {
    __u32 tgid, first;
};

static long forget_one(__u64 i, void *data)
{
    struct range_ctx *c = data;
    struct fd_key key = {c->tgid, c->first + (__u32)i};
    bpf_map_delete_elem(&fds, &key);
    return 0;
}

static __noinline void close_range_of(__u32 tgid, __u32 first, __u32 last, __u32 flags)
{
    if (flags & CLOSE_RANGE_CLOEXEC) return;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    __u32 max = BPF_CORE_READ(t, files, fdt, max_fds);
    if (max == 0 || first >= max) return;
    if (last >= max) last = max - 1;
    if (last < first) return;
    struct range_ctx c = {tgid, first};
    bpf_loop(last - first + 1, forget_one, &c, 0);
    send_small(CW_EV_CLOSE_RANGE, (int)first, (int)last, 0);
}

/* dup, dup2, dup3, fcntl(F_DUPFD*): the copy is what the original is; a tracked number that is
 * replaced by something untracked ends its life. */
static __noinline void dup_done(__u32 tgid, long ret, int old)
{
    if (ret < 0 || old == (int)ret) return;
    struct fd_key from = {tgid, (__u32)old}, to = {tgid, (__u32)ret};
    __u64 *ino = bpf_map_lookup_elem(&fds, &from);
    if (ino != NULL) {
        __u64 v = *ino;
        bpf_map_update_elem(&fds, &to, &v, BPF_ANY);
        send_small(CW_EV_DUP, (int)ret, old, v);
    } else if (bpf_map_delete_elem(&fds, &to) == 0) {
        send_small(CW_EV_CLOSE, (int)ret, -1, 0);
    }
}

/* x86_64 system call numbers */
#define NR_read 0
#define NR_close 3
#define NR_readv 19
#define NR_dup 32
#define NR_dup2 33
#define NR_socket 41
#define NR_connect 42
#define NR_accept 43
#define NR_recvfrom 45
#define NR_recvmsg 47
#define NR_listen 50
#define NR_fcntl 72
#define NR_exit_group 231
#define NR_accept4 288
#define NR_dup3 292
#define NR_close_range 436

/*
 * One program at the entry of every system call and one at its exit (the raw sys_enter and
 * sys_exit tracepoints, BTF-typed: the saved user registers and the number or the result, with
 * no record built for perf), rather than one per system call through the syscalls: events, each
 * of which has the kernel build a perf record of the call before any program can look at it:
 * that made every read of every process on the machine pay ~200 ns.  Here a call of another
 * process costs the comparison of its tgid.
 */
SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
    __u32 tgid = traced();
    if (tgid == 0) return 0;
    switch (id) {
    case NR_close: {
        /* Before the descriptor is released: its number cannot be reused ahead of the record. */
        struct fd_key key = {tgid, (__u32)regs->di};
        if (bpf_map_delete_elem(&fds, &key) == 0) send_small(CW_EV_CLOSE, (int)key.fd, -1, 0);
        break;
    }
    case NR_connect: {
        struct fd_key key = {tgid, (__u32)regs->di};
        if (bpf_map_lookup_elem(&fds, &key)) send_small(CW_EV_CONNECT, (int)key.fd, -1, 0);
        break;
    }
    case NR_close_range:
        close_range_of(tgid, (__u32)regs->di, (__u32)regs->si, (__u32)regs->dx);
        break;
    case NR_exit_group:
        send_small(CW_EV_EXIT, -1, -1, 0);
        break;
    default:
        break;
    }
    return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
    /* A read that returned data: two comparisons and out. */
    if (ret > 0 && regs->orig_ax <= NR_readv) return 0;
    __u32 tgid = traced();
    if (tgid == 0) return 0;
    switch (regs->orig_ax) {
    case NR_socket:
        birth(ctx, tgid, ret, OP_SOCKET, -1);
        break;
    case NR_accept:
        birth(ctx, tgid, ret, OP_ACCEPT, (int)regs->di);
        break;
    case NR_accept4:
        birth(ctx, tgid, ret, OP_ACCEPT4, (int)regs->di);
        break;
    case NR_read:
        if (ret == 0) eof(ctx, tgid, (int)regs->di, regs->dx, OP_READ);
        break;
    case NR_readv:
        if (ret == 0) eof(ctx, tgid, (int)regs->di, regs->dx, OP_READV);
        break;
    case NR_recvfrom:
        if (ret == 0) eof(ctx, tgid, (int)regs->di, regs->dx, OP_RECVFROM);
        break;
    case NR_recvmsg:
        if (ret == 0) eof(ctx, tgid, (int)regs->di, 1, OP_RECVMSG);
        break;
    case NR_listen:
        if (ret == 0) {
            struct fd_key key = {tgid, (__u32)regs->di};
            if (bpf_map_lookup_elem(&fds, &key))
                send_with_stack(ctx, KIND_OP(CW_EV_LISTEN, OP_SOCKET, 0), (int)key.fd, (int)regs->si, 0);
        }
        break;
    case NR_dup:
    case NR_dup2:
    case NR_dup3:
        dup_done(tgid, ret, (int)regs->di);
        break;
    case NR_fcntl:
        if (regs->si == F_DUPFD || regs->si == F_DUPFD_CLOEXEC) dup_done(tgid, ret, (int)regs->di);
        break;
    default:
        break;
    }
    return 0;
}

/* A traced process forks: the child is followed from its first instruction (this runs in the
 * parent, before the child can run, so its record comes before any of the child's).  Its
 * inherited descriptors are copied by the loader, which knows them. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(process_fork, struct task_struct *parent, struct task_struct *child)
{
    __u32 ptgid = parent->tgid, ctgid = child->tgid;
    if (child->pid != ctgid) return 0; /* a thread */
    if (ptgid != target_tgid && (nfollowed == 0 || bpf_map_lookup_elem(&followed, &ptgid) == NULL)) return 0;
    __u8 one = 1;
    if (bpf_map_update_elem(&followed, &ctgid, &one, BPF_NOEXIST) == 0) __sync_fetch_and_add(&nfollowed, 1);
    send_small(CW_EV_FORK, (int)ctgid, (int)ptgid, 0);
    return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
    if (ctx->newstate != TCP_CLOSE_WAIT_STATE) return 0;
    struct sock *sk = (struct sock *)ctx->skaddr;
    __u64 ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
    if (ino == 0 || bpf_map_lookup_elem(&inodes, &ino) == NULL) return 0;
    send_small(CW_EV_FIN, -1, -1, ino);
    return 0;
}
