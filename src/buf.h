#ifndef CLOSEWAIT_BUF_H
#define CLOSEWAIT_BUF_H
#include "closewait.h"
/* A growable text buffer for the watcher thread (never used inside hooks). */
struct buf {
    char *p;
    size_t n, cap;
};
CW_HIDDEN void buf_put(struct buf *b, const char *s, size_t n);
CW_HIDDEN void buf_puts(struct buf *b, const char *s);
CW_HIDDEN void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a JSON string, quotes included; NULL becomes null. */
CW_HIDDEN void buf_json_str(struct buf *b, const char *s);
CW_HIDDEN void buf_free(struct buf *b);
/* Room for one more element at index `count` of a growing array (doubling from `first`); 0 on
 * success, -1 (array unchanged) when memory is short. */
CW_HIDDEN int cw_grow(void *array_ptr, size_t *cap, size_t count, size_t elem, size_t first);
#endif
