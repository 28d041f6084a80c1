#ifndef CLOSEWAIT_SYMBOLIZE_H
#define CLOSEWAIT_SYMBOLIZE_H
#include "base.h"

/* One source-level frame.  A pc inside inlined code expands into several, innermost first;
 * all but the last of them have `inlined` set. */
struct cw_frame {
    uintptr_t pc;
    uintptr_t offset;        /* ELF virtual address within the module (what addr2line wants) */
    const char *module;      /* path, or NULL (JIT code, anonymous memory) */
    const char *build_id;    /* hex, or NULL */
    const char *function;    /* or NULL */
    const char *file;        /* or NULL */
    int line;                /* 0 if unknown */
    int inlined;
    int tail_call;           /* recovered: this function jumped to the next one, leaving no frame */
    uintptr_t sym_off;       /* pc's offset in its function (0: the function's entry) */
};

/* Expands pc (a return address unless innermost) into up to max frames; returns how many.
 * Watcher thread only: it allocates and caches. */
CW_HIDDEN int cw_symbolize(uintptr_t pc, int innermost, struct cw_frame *out, int max);
/* A call that was compiled to a jump (`return accept(...)` at -O2) leaves no frame: the stack
 * goes from the hooked function straight to the caller of the function that jumped.  The
 * instruction before that caller's return address still names it.  Fills *out and returns 1
 * when ret_addr follows a direct call to a function other than a PLT stub. */
CW_HIDDEN int cw_tail_call_frame(uintptr_t ret_addr, struct cw_frame *out);
/* Forget modules (a dlopen may have mapped new ones); called when a pc has no module. */
CW_HIDDEN void cw_symbolize_refresh(void);
/* Close what libdw holds open (files of the program's modules), keeping the cache. */
CW_HIDDEN void cw_symbolize_release(void);
#endif
