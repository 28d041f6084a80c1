/* Suppressions (CLOSEWAIT_SUPPRESSIONS): reading the file and matching a symbolized stack.
 * The syntax and its meaning are those of tools/closewait-report --suppressions; both are
 * described in docs/CONTRACT.md, section "Suppressions". */
#ifndef CLOSEWAIT_SUPPRESS_H
#define CLOSEWAIT_SUPPRESS_H
#include "base.h"

struct cw_frame; /* symbolize.h */

/* Bounds: what is read of the file, how many patterns are kept, how long a line may be. */
#define CW_SUPP_MAX_FILE (1u << 20)
#define CW_SUPP_MAX_PATTERNS 4096
#define CW_SUPP_MAX_LINE 512

/* Reads the patterns of the file at path, replacing any loaded before.  Anything but a regular
 * file (a FIFO, a device such as /dev/zero, a directory) is refused.  0: loaded (possibly zero
 * patterns; lines that could not be used were warned about and skipped); -1: refused, one
 * warning line written, no pattern loaded.  A NULL or empty path loads nothing and returns 0. */
CW_HIDDEN int cw_suppressions_load(const char *path);
/* How many patterns are loaded. */
CW_HIDDEN int cw_suppressions_count(void);
/* 1 if any pattern matches any of the n frames, else 0. */
CW_HIDDEN int cw_suppressions_match(const struct cw_frame *frames, int n);
/* Forgets every pattern and frees their memory (cw_suppressions_count() is then 0). */
CW_HIDDEN void cw_suppressions_free(void);

#endif
