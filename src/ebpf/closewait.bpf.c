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
 * returns data costs one comparison.  The registers of the call are read from the task's saved
 * user registers (bpf_task_pt_regs), so no sys_enter program is needed to remember arguments.
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

/* The traced process's TCP descriptors: fd -> socket inode. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 1 << 20);
    __type(key, __u32);
    __type(value, __u64);
} fds SEC(".maps");

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

static __always_inline int traced(void)
{
    return (bpf_get_current_pid_tgid() >> 32) == target_tgid;
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
    e->family = 0;
    e->inode = inode;
    e->ts_ns = bpf_ktime_get_ns();
    e->fp_bytes = 0;
    e->stack_bytes = 0;
    bpf_ringbuf_submit(e, submit_flags());
}

/* A record with the stack of the call. */
static __always_inline void send_with_stack(void *ctx, __u32 kind, __u32 op, int fd, int fd2, __u64 inode, __u32 family)
{
    struct cw_ev *e = bpf_ringbuf_reserve(&events, sizeof(struct cw_ev), 0);
    if (e == NULL) {
        count_lost();
        return;
    }
    e->kind = kind;
    e->op = op;
    e->fd = fd;
    e->fd2 = fd2;
    e->tid = (__u32)bpf_get_current_pid_tgid();
    e->family = family;
    e->inode = inode;
    e->ts_ns = bpf_ktime_get_ns();
    /* Frame pointers: Go's; code without them would have the kernel follow garbage, so there the
     * stack is copied and unwound with DWARF in user space instead (which walks frame pointers
     * itself where DWARF says nothing). */
    e->fp_bytes = copy_stack ? 0 : bpf_get_stack(ctx, e->fp_frames, sizeof e->fp_frames, BPF_F_USER_STACK);
    struct pt_regs *r = user_regs();
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
    if (copy_stack) {
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

static __always_inline void birth(void *ctx, long ret, __u32 op, int listener)
{
    if (ret < 0 || !traced()) return;
    int fd = (int)ret;
    __u32 family = 0;
    __u64 ino = tcp_inode(fd, &family);
    if (ino == 0) {
        /* Not TCP: a tracked number that is something else now (closed behind our back). */
        __u32 key = (__u32)fd;
        if (bpf_map_delete_elem(&fds, &key) == 0) send_small(CW_EV_CLOSE, fd, -1, 0);
        return;
    }
    __u32 key = (__u32)fd;
    bpf_map_update_elem(&fds, &key, &ino, BPF_ANY);
    __u8 one = 1;
    bpf_map_update_elem(&inodes, &ino, &one, BPF_ANY);
    send_with_stack(ctx, CW_EV_BIRTH, op, fd, listener, ino, family);
}

SEC("tracepoint/syscalls/sys_exit_socket")
int exit_socket(struct trace_event_raw_sys_exit *ctx)
{
    birth(ctx, ctx->ret, OP_SOCKET, -1);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct trace_event_raw_sys_exit *ctx)
{
    if (ctx->ret < 0 || !traced()) return 0;
    birth(ctx, ctx->ret, OP_ACCEPT, (int)user_regs()->di);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
    if (ctx->ret < 0 || !traced()) return 0;
    birth(ctx, ctx->ret, OP_ACCEPT4, (int)user_regs()->di);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct trace_event_raw_sys_enter *ctx)
{
    if (!traced()) return 0;
    __u32 key = (__u32)ctx->args[0];
    if (bpf_map_lookup_elem(&fds, &key)) send_small(CW_EV_CONNECT, (int)key, -1, 0);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_listen")
int exit_listen(struct trace_event_raw_sys_exit *ctx)
{
    if (ctx->ret != 0 || !traced()) return 0;
    struct pt_regs *r = user_regs();
    __u32 key = (__u32)r->di;
    if (bpf_map_lookup_elem(&fds, &key)) send_with_stack(ctx, CW_EV_LISTEN, OP_SOCKET, (int)key, (int)r->si, 0, 0);
    return 0;
}

/* A read that returned 0 for a non-empty buffer (len_arg: the register holding the length, or
 * -1 when it is not one number). */
static __always_inline void eof(void *ctx, long ret, __u32 op, int has_len)
{
    if (ret != 0 || !traced()) return;
    struct pt_regs *r = user_regs();
    if (has_len && r->dx == 0) return;
    __u32 key = (__u32)r->di;
    __u64 *ino = bpf_map_lookup_elem(&fds, &key);
    if (ino == NULL) return;
    send_with_stack(ctx, CW_EV_EOF, op, (int)key, -1, *ino, 0);
}

SEC("tracepoint/syscalls/sys_exit_read")
int exit_read(struct trace_event_raw_sys_exit *ctx)
{
    eof(ctx, ctx->ret, OP_READ, 1);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_readv")
int exit_readv(struct trace_event_raw_sys_exit *ctx)
{
    eof(ctx, ctx->ret, OP_READV, 1); /* dx: the iovec count */
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
    eof(ctx, ctx->ret, OP_RECVFROM, 1);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
    eof(ctx, ctx->ret, OP_RECVMSG, 0);
    return 0;
}

/* Before the descriptor is released, so that its number cannot be reused ahead of the record. */
SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct trace_event_raw_sys_enter *ctx)
{
    if (!traced()) return 0;
    __u32 key = (__u32)ctx->args[0];
    if (bpf_map_delete_elem(&fds, &key) == 0) send_small(CW_EV_CLOSE, (int)key, -1, 0);
    return 0;
}

struct range_ctx {
    __u32 first;
};

static long forget_one(__u64 i, void *data)
{
    struct range_ctx *c = data;
    __u32 key = c->first + (__u32)i;
    bpf_map_delete_elem(&fds, &key);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_close_range")
int enter_close_range(struct trace_event_raw_sys_enter *ctx)
{
    if (!traced()) return 0;
    __u32 first = (__u32)ctx->args[0], last = (__u32)ctx->args[1];
    if ((__u32)ctx->args[2] & CLOSE_RANGE_CLOEXEC) return 0;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    __u32 max = BPF_CORE_READ(t, files, fdt, max_fds);
    if (max == 0 || first >= max) return 0;
    if (last >= max) last = max - 1;
    if (last < first) return 0;
    struct range_ctx c = {first};
    bpf_loop(last - first + 1, forget_one, &c, 0);
    send_small(CW_EV_CLOSE_RANGE, (int)first, (int)last, 0);
    return 0;
}

/* dup, dup2, dup3, fcntl(F_DUPFD*): the copy is what the original is; a tracked number that is
 * replaced by something untracked ends its life. */
static __always_inline void dup_done(long ret, int old)
{
    if (ret < 0 || !traced()) return;
    __u32 from = (__u32)old, to = (__u32)ret;
    if (from == to) return;
    __u64 *ino = bpf_map_lookup_elem(&fds, &from);
    if (ino != NULL) {
        __u64 v = *ino;
        bpf_map_update_elem(&fds, &to, &v, BPF_ANY);
        send_small(CW_EV_DUP, (int)to, (int)from, v);
    } else if (bpf_map_delete_elem(&fds, &to) == 0) {
        send_small(CW_EV_CLOSE, (int)to, -1, 0);
    }
}

SEC("tracepoint/syscalls/sys_exit_dup")
int exit_dup(struct trace_event_raw_sys_exit *ctx)
{
    if (ctx->ret < 0 || !traced()) return 0;
    dup_done(ctx->ret, (int)user_regs()->di);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_dup2")
int exit_dup2(struct trace_event_raw_sys_exit *ctx)
{
    if (ctx->ret < 0 || !traced()) return 0;
    dup_done(ctx->ret, (int)user_regs()->di);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_dup3")
int exit_dup3(struct trace_event_raw_sys_exit *ctx)
{
    if (ctx->ret < 0 || !traced()) return 0;
    dup_done(ctx->ret, (int)user_regs()->di);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_fcntl")
int exit_fcntl(struct trace_event_raw_sys_exit *ctx)
{
    if (ctx->ret < 0 || !traced()) return 0;
    struct pt_regs *r = user_regs();
    if (r->si != F_DUPFD && r->si != F_DUPFD_CLOEXEC) return 0;
    dup_done(ctx->ret, (int)r->di);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_exit_group")
int enter_exit_group(struct trace_event_raw_sys_enter *ctx)
{
    if (!traced()) return 0;
    send_small(CW_EV_EXIT, -1, -1, 0);
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
