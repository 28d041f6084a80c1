/* What the kernel side (closewait.bpf.c) tells the loader (main.c) through the ring buffer: one
 * record per socket birth, read of EOF, close, dup, close_range, peer's FIN, exit.  Shared by the
 * BPF program and the loader, so only fixed-width types. */
#ifndef CLOSEWAIT_EBPF_EVENTS_H
#define CLOSEWAIT_EBPF_EVENTS_H

enum cw_ev_kind {
    CW_EV_BIRTH = 1,   /* fd: a new TCP socket (socket, accept, accept4); fd2: the listener */
    CW_EV_CONNECT,     /* fd: connect() called on it */
    CW_EV_LISTEN,      /* fd: listen() succeeded; fd2: its backlog */
    CW_EV_EOF,         /* fd: a read returned 0 */
    CW_EV_CLOSE,       /* fd: closed */
    CW_EV_DUP,         /* fd2 copied into fd */
    CW_EV_CLOSE_RANGE, /* fds [fd, fd2] closed */
    CW_EV_FIN,         /* the socket of inode `inode` went to CLOSE_WAIT (the peer's FIN) */
    CW_EV_EXIT,        /* the process is ending (exit_group) */
    CW_EV_FORK,        /* process fd2 forked process fd, which is followed from now on */
};

/* The frame-pointer walk bpf_get_stack makes, and what the loader needs to unwind with DWARF
 * itself (perf's --call-graph dwarf): the user registers at the system call and the top of the
 * user stack. */
#define CW_EV_FP_FRAMES 64
#define CW_EV_STACK_BYTES 8192
/* Go: the stack of the goroutine that started this one, as the runtime saved it at the `go`
 * statement (GODEBUG=tracebackancestors): a dial made in a goroutine of net/http's own still
 * leads back to the program's function that asked for the connection. */
#define CW_EV_ANCESTOR_FRAMES 32

struct cw_ev_regs {
    __u64 ip, sp, bp, bx, r12, r13, r14, r15;
};

struct cw_ev {
    __u32 kind;
    __u32 op;           /* enum cw_op of the call (fdtable.h) */
    __s32 fd, fd2;
    __u32 tid;
    __u32 tgid;         /* the process */
    __u32 family;       /* AF_INET / AF_INET6 of a birth */
    __u32 pad0;
    __u64 inode;        /* the socket's inode (births, FIN) */
    __u64 ts_ns;        /* CLOCK_MONOTONIC */
    __s32 fp_bytes;     /* bytes of fp_frames filled, <= 0: none */
    __u32 stack_bytes;  /* bytes of stack filled (from regs.sp up) */
    struct cw_ev_regs regs;
    __u64 fp_frames[CW_EV_FP_FRAMES];
    __u32 ancestor_n;   /* frames in ancestor_pcs */
    __u32 pad;
    __u64 ancestor_pcs[CW_EV_ANCESTOR_FRAMES];
    __u8 stack[CW_EV_STACK_BYTES];
};

/* A record with frames but no stack copy (Go's). */
#define CW_EV_NO_STACK_BYTES ((unsigned long)&((struct cw_ev *)0)->stack)
/* The head of a record without a stack (closes, dups, FINs): the ring buffer carries only that. */
#define CW_EV_HEAD_BYTES ((unsigned long)&((struct cw_ev *)0)->regs)
#endif
