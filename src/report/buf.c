#include "report/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(struct buf *b, size_t more)
{
    if (b->n + more + 1 <= b->cap) return 0;
    size_t ncap = b->cap ? b->cap : 1024;
    while (ncap < b->n + more + 1) ncap *= 2;
    char *np = realloc(b->p, ncap);
    if (np == NULL) {
        b->failed = 1;
        return -1;
    }
    b->p = np;
    b->cap = ncap;
    return 0;
}

void buf_put(struct buf *b, const char *s, size_t n)
{
    if (grow(b, n) != 0) return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void buf_puts(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int len = vsnprintf(small, sizeof small, fmt, ap); /* NOLINT(clang-analyzer-valist.Uninitialized): started above */
    va_end(ap);
    if (len < 0) return;
    if ((size_t)len < sizeof small) {
        buf_put(b, small, (size_t)len);
        return;
    }
    if (grow(b, (size_t)len) != 0) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)len + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)len;
}

/* Length of the valid UTF-8 sequence at p, 0 if it is not one. */
static size_t utf8_len(const unsigned char *p)
{
    if (p[0] < 0x80) return 1;
    size_t n = (p[0] & 0xe0) == 0xc0 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3 : (p[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (n == 0 || (n == 2 && p[0] < 0xc2) || (n == 4 && p[0] > 0xf4)) return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    return n;
}

void buf_json_str(struct buf *b, const char *s)
{
    if (s == NULL) {
        buf_puts(b, "null");
        return;
    }
    buf_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            buf_put(b, e, 2);
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            buf_printf(b, "\\u%04x", *p);
            p++;
        } else {
            /* Paths are bytes, JSON is UTF-8: a byte that is not part of valid UTF-8 becomes
             * U+FFFD so that every line still parses. */
            size_t n = utf8_len(p);
            if (n == 0) {
                buf_puts(b, "\\ufffd");
                p++;
            } else {
                buf_put(b, (const char *)p, n);
                p += n;
            }
        }
    }
    buf_put(b, "\"", 1);
}

void buf_prom_label(struct buf *b, const char *s, size_t max)
{
    if (s == NULL) return;
    const unsigned char *p = (const unsigned char *)s, *end = p + strnlen(s, max);
    while (p < end) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            buf_put(b, e, 2);
            p++;
        } else if (*p == '\n') {
            buf_put(b, "\\n", 2);
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            buf_put(b, "?", 1);
            p++;
        } else {
            size_t n = utf8_len(p);
            if (n == 0 || n > (size_t)(end - p)) {
                buf_put(b, "\xef\xbf\xbd", 3);
                p++;
            } else {
                buf_put(b, (const char *)p, n);
                p += n;
            }
        }
    }
}

void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    b->failed = 0;
}
