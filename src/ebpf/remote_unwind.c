/*
 * A DWARF unwind of a stack we only have a copy of: the kernel side copied the top of the user
 * stack and the callee-saved registers at the system call; libdw's frame API walks it with the
 * CFI (.eh_frame, .debug_frame) of the process's modules, reading memory through us: from the
 * copy, nothing else (a frame whose CFA lies above the copy ends the walk).  For code built
 * without frame pointers, which bpf_get_stack cannot follow.
 *
 * The call-site cache, as the library's (unwind/stacks.c): a server's sockets are born at a few
 * places, each time through the same chain.  After an unwind, where each return address lies in
 * the copy is noted; the next event at the same pc and stack pointer whose copy holds the same
 * return addresses at the same places has the same chain, and costs a few compares.
 */
#define _GNU_SOURCE
#include "ebpf/remote_unwind.h"

#include <elfutils/libdwfl.h>
#include <stdbool.h>
#include <string.h>

static Dwfl *dwfl;
static pid_t unwound_pid;
static int attached;
static const struct cw_ev *current; /* the event being unwound */

#define SITES 256
#define SITE_DEPTH 64
static struct site {
    uint64_t ip, sp;
    int n;
    uint32_t slot[SITE_DEPTH]; /* offset in the copy of frame i's return address (i >= 1) */
    uintptr_t pc[SITE_DEPTH];
} sites[SITES];

static struct site *site_of(const struct cw_ev *e)
{
    uint64_t h = (e->regs.ip * 0x9e3779b97f4a7c15ull) ^ (e->regs.sp * 0xc2b2ae3d27d4eb4full);
    return &sites[(h >> 32) % SITES];
}

static int site_lookup(const struct cw_ev *e, uintptr_t *pcs, int max)
{
    const struct site *s = site_of(e);
    if (s->n == 0 || s->ip != e->regs.ip || s->sp != e->regs.sp || s->n > max) return 0;
    for (int i = 1; i < s->n; i++) {
        uint64_t w;
        if ((uint64_t)s->slot[i] + sizeof w > e->stack_bytes) return 0;
        memcpy(&w, e->stack + s->slot[i], sizeof w);
        if (w != s->pc[i]) return 0;
    }
    memcpy(pcs, s->pc, (size_t)s->n * sizeof *pcs);
    return s->n;
}

/* Remember the chain when each return address is found in the copy, higher than the last. */
static void site_keep(const struct cw_ev *e, const uintptr_t *pcs, int n)
{
    if (n < 2 || n > SITE_DEPTH) return;
    struct site *s = site_of(e);
    uint32_t at = 0;
    uint32_t slots[SITE_DEPTH] = {0};
    for (int i = 1; i < n; i++) {
        uint32_t off = at;
        for (; (uint64_t)off + 8 <= e->stack_bytes; off += 8) {
            uint64_t w;
            memcpy(&w, e->stack + off, sizeof w);
            if (w == pcs[i]) break;
        }
        if ((uint64_t)off + 8 > e->stack_bytes) return;
        slots[i] = off;
        at = off + 8;
    }
    s->n = 0;
    s->ip = e->regs.ip;
    s->sp = e->regs.sp;
    memcpy(s->slot, slots, sizeof slots);
    memcpy(s->pc, pcs, (size_t)n * sizeof *pcs);
    s->n = n;
}

struct collect {
    uintptr_t *pcs;
    int n, max;
};

static pid_t next_thread(Dwfl *d, void *arg, void **thread_argp)
{
    (void)d;
    (void)arg;
    if (*thread_argp != NULL || current == NULL) return 0;
    *thread_argp = (void *)1;
    return (pid_t)current->tid;
}

static bool memory_read(Dwfl *d, Dwarf_Addr addr, Dwarf_Word *result, void *arg)
{
    (void)d;
    (void)arg;
    const struct cw_ev *e = current;
    if (e == NULL || addr < e->regs.sp) return false;
    uint64_t off = addr - e->regs.sp;
    if (off + sizeof(uint64_t) > e->stack_bytes || e->stack_bytes > sizeof e->stack) return false;
    uint64_t w;
    memcpy(&w, e->stack + off, sizeof w);
    *result = w;
    return true;
}

/* x86_64 DWARF numbering: 3 rbx, 6 rbp, 7 rsp, 12-15 r12-r15, 16 the return address (rip). */
static bool set_initial_registers(Dwfl_Thread *thread, void *arg)
{
    (void)arg;
    const struct cw_ev *e = current;
    Dwarf_Word bx = e->regs.bx, bpsp[2] = {e->regs.bp, e->regs.sp}, r[4] = {e->regs.r12, e->regs.r13, e->regs.r14, e->regs.r15};
    if (!dwfl_thread_state_registers(thread, 3, 1, &bx) || !dwfl_thread_state_registers(thread, 6, 2, bpsp) ||
        !dwfl_thread_state_registers(thread, 12, 4, r))
        return false;
    dwfl_thread_state_register_pc(thread, e->regs.ip);
    return true;
}

static const Dwfl_Thread_Callbacks thread_callbacks = {
    .next_thread = next_thread,
    .memory_read = memory_read,
    .set_initial_registers = set_initial_registers,
};

static const Dwfl_Callbacks callbacks = {
    .find_elf = dwfl_linux_proc_find_elf,
    .find_debuginfo = dwfl_standard_find_debuginfo,
};

void cw_remote_unwind_reset(void)
{
    memset(sites, 0, sizeof sites);
    if (dwfl != NULL) dwfl_end(dwfl);
    dwfl = NULL;
    attached = 0;
}

static int frame_cb(Dwfl_Frame *state, void *arg)
{
    struct collect *c = arg;
    Dwarf_Addr pc;
    bool activation;
    if (!dwfl_frame_pc(state, &pc, &activation) || pc == 0) return DWARF_CB_ABORT;
    c->pcs[c->n++] = (uintptr_t)pc;
    return c->n < c->max ? DWARF_CB_OK : DWARF_CB_ABORT;
}

int cw_remote_unwind(pid_t pid, const struct cw_ev *e, uintptr_t *pcs, int max)
{
    if (e->stack_bytes == 0 || max <= 0 || (e->regs.sp & 7) != 0) return 0;
    int cached = site_lookup(e, pcs, max);
    if (cached > 0) return cached;
    if (dwfl != NULL && unwound_pid != pid) cw_remote_unwind_reset();
    if (dwfl == NULL) {
        dwfl = dwfl_begin(&callbacks);
        if (dwfl == NULL) return 0;
        unwound_pid = pid;
        if (dwfl_linux_proc_report(dwfl, pid) != 0 || dwfl_report_end(dwfl, NULL, NULL) != 0) {
            cw_remote_unwind_reset();
            return 0;
        }
    }
    if (!attached) {
        if (!dwfl_attach_state(dwfl, NULL, pid, &thread_callbacks, NULL)) return 0;
        attached = 1;
    }
    struct collect c = {pcs, 0, max};
    current = e;
    dwfl_getthread_frames(dwfl, (pid_t)e->tid, frame_cb, &c);
    current = NULL;
    site_keep(e, pcs, c.n);
    return c.n;
}
