/* Java stacks, read through JVMTI by the socket hooks (jvm.c). */
#ifndef CLOSEWAIT_JVM_H
#define CLOSEWAIT_JVM_H
#include "base.h"

/* The current thread's Java stack in the language store (shared/langstack.h), when it is a Java
 * thread inside the JDK's socket natives; 0 otherwise (and in any program without a JVM, after
 * at most one lookup a second). */
CW_HIDDEN uint32_t cw_jvm_stack(void);
#endif
