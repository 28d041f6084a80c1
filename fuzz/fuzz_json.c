/*
 * libFuzzer harness for the JSON string writer: any bytes (paths, function names) must come
 * out as one valid JSON string: quoted, no raw control character, escapes well formed, and
 * valid UTF-8 throughout, so that every log line parses.
 */
#include "report/buf.h"

#include <stdlib.h>
#include <string.h>

static size_t utf8_seq(const unsigned char *p, size_t left)
{
    if (p[0] < 0x80) return 1;
    size_t n = (p[0] & 0xe0) == 0xc0 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3 : (p[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (n == 0 || n > left || (n == 2 && p[0] < 0xc2) || (n == 4 && p[0] > 0xf4)) return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    return n;
}

static int valid_json_string(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    if (n < 2 || p[0] != '"' || p[n - 1] != '"') return 0;
    for (size_t i = 1; i < n - 1;) {
        if (p[i] < 0x20 || p[i] == '"') return 0;
        if (p[i] == '\\') {
            if (i + 1 >= n - 1) return 0;
            unsigned char e = p[i + 1];
            if (e == 'u') {
                if (i + 5 >= n - 1) return 0;
                for (int k = 2; k < 6; k++)
                    if (strchr("0123456789abcdefABCDEF", p[i + k]) == NULL) return 0;
                i += 6;
            } else if (strchr("\"\\/bfnrt", e) != NULL) {
                i += 2;
            } else {
                return 0;
            }
            continue;
        }
        size_t k = utf8_seq(p + i, n - 1 - i);
        if (k == 0) return 0;
        i += k;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    struct buf b = {0};
    buf_json_str(&b, s);
    if (b.p == NULL || !valid_json_string(b.p, b.n)) abort();
    buf_free(&b);
    free(s);
    return 0;
}
