#ifndef CLOSEWAIT_BUF_H
#define CLOSEWAIT_BUF_H
#include "base.h"
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
#endif
