#ifndef CLOSEWAIT_BUF_H
#define CLOSEWAIT_BUF_H
#include "base.h"
/* A growable text buffer for the watcher thread (never used inside hooks). */
struct buf {
    char *p;
    size_t n, cap;
    int failed; /* memory ran short: something was left out */
};
CW_HIDDEN void buf_put(struct buf *b, const char *s, size_t n);
CW_HIDDEN void buf_puts(struct buf *b, const char *s);
CW_HIDDEN void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a JSON string, quotes included; NULL becomes null. */
CW_HIDDEN void buf_json_str(struct buf *b, const char *s);
/* s as a Prometheus label value, without the quotes: backslash, double quote and newline
 * escaped, other control bytes as '?', bytes that are not UTF-8 as U+FFFD; at most max bytes of
 * s are used. */
CW_HIDDEN void buf_prom_label(struct buf *b, const char *s, size_t max);
CW_HIDDEN void buf_free(struct buf *b);
#endif
