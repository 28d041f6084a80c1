/* The unwinder's fast path (cfi.c): x86-64 frames walked by rules read once from .eh_frame. */
#ifndef CLOSEWAIT_CFI_H
#define CLOSEWAIT_CFI_H
#include "base.h"

#include <stdint.h>

/* How far above the first frame a frame may be: a thread's stack (8 MiB by default). */
#define CW_CFI_MAX_SPAN ((uintptr_t)8 << 20)

/* Walk from a return address `pc` into the program, the stack pointer `sp` just after it
 * returns and the program's RBP there: each frame's return address into pcs and the stack
 * address it was read from into slots (slot[i] + 8 is frame i's stack pointer).  Returns the
 * frames walked, or -1 when a frame needs what this walker does not follow (unwind the stack
 * with libgcc then). */
CW_HIDDEN int cw_cfi_walk(uintptr_t pc, uintptr_t sp, uintptr_t rbp, uintptr_t *pcs, uintptr_t *slots, int max);
#endif
