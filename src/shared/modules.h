/* The program's loaded objects, published in its area for the watcher to name pcs with. */
#ifndef CLOSEWAIT_MODULES_H
#define CLOSEWAIT_MODULES_H
#include "base.h"

/* Publish the module list in this process's area (at start, and when a new stack runs through
 * code the list does not cover: a dlopen since). */
CW_HIDDEN void cw_modules_publish(void);
CW_HIDDEN void cw_modules_cover(const uintptr_t *pcs, int n);
/* A JVM (libjvm.so) was among the objects last published: hooks/jvm.c looks for it then only. */
CW_HIDDEN extern _Atomic int cw_modules_jvm;
#endif
