/* What the interposed functions share with the rest of the library. */
#ifndef CLOSEWAIT_HOOKS_H
#define CLOSEWAIT_HOOKS_H
#include "base.h"

CW_HIDDEN void cw_init(void);
#endif
