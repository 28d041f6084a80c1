/*
 * Suppressions: CLOSEWAIT_SUPPRESSIONS read once, safely (only a regular file, at most 1 MiB,
 * 4096 patterns, 512-byte lines), and matched against a symbolized stack.
 *
 * The syntax and the matching are those of tools/closewait-report --suppressions (its class
 * Suppressions), so that one file serves both (docs/CONTRACT.md, "Suppressions"):
 *   - the file is UTF-8 (a bad sequence is U+FFFD) split into lines as Python's splitlines()
 *     does; each line is trimmed of the blanks Python's str.strip() trims; empty lines and lines
 *     starting with '#' are skipped;
 *   - "fun:GLOB", "mod:GLOB", "src:GLOB" (GLOB trimmed again; an empty GLOB skips the line), or a
 *     bare GLOB, which is a function pattern;
 *   - GLOB is fnmatch.fnmatchcase(): '*' any run of characters ('/' included), '?' one character,
 *     "[...]" / "[!...]" a set with ranges, no escape character, case-sensitive, compared by
 *     code point;
 *   - fun: matches a frame's function; mod: its module path or the path's base name; src: its
 *     source file path or the base name; a pattern matches a stack when it matches any frame.
 * Where the library is stricter: a line starting with a word and one colon ("foo:bar") names a
 * prefix nobody knows; it is warned about and skipped, where the report tool would read it as
 * a function glob (no C or C++ function name has a single colon, so it matched nothing there).
 */
#include "watcher/suppress.h"
#include "unwind/symbolize.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { KIND_FUN, KIND_MOD, KIND_SRC };

struct pattern {
    uint32_t off;  /* first code point in glob_cps */
    uint16_t len;  /* code points */
    uint8_t kind;
};

static struct pattern *patterns;
static int npatterns;
static size_t patterns_cap;
static uint32_t *glob_cps; /* every pattern's GLOB, decoded, one after the other */
static size_t glob_used, glob_cap;

void cw_suppressions_free(void)
{
    free(patterns);
    free(glob_cps);
    patterns = NULL;
    glob_cps = NULL;
    npatterns = 0;
    patterns_cap = glob_used = glob_cap = 0;
}

int cw_suppressions_count(void)
{
    return npatterns;
}

/* ---- UTF-8 and Python's idea of blanks and line ends ---------------------------------------- */

/* The character at p (p < end) and, in *len, how many bytes it takes.  A byte that does not
 * start a valid sequence is U+FFFD: with `maximal`, the U+FFFD takes the longest valid start of
 * a sequence, as Python's decode("utf-8", "replace") does with the suppressions file; without,
 * it takes one byte, as the library's JSON writer turns each such byte of a name into U+FFFD
 * (what the report tool then sees). */
static uint32_t utf8_next(const unsigned char *p, const unsigned char *end, int maximal, size_t *len)
{
    unsigned c = p[0];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    size_t need;
    uint32_t cp;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1;
        cp = c & 0x1fu;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2;
        cp = c & 0x0fu;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3;
        cp = c & 0x07u;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f; /* nothing above U+10FFFF */
    } else {
        *len = 1;
        return 0xfffd;
    }
    size_t i = 1;
    for (; i <= need; i++) {
        if (p + i >= end || p[i] < lo || p[i] > hi) break;
        cp = cp << 6 | (p[i] & 0x3fu);
        lo = 0x80;
        hi = 0xbf;
    }
    if (i > need) {
        *len = need + 1;
        return cp;
    }
    *len = maximal ? i : 1;
    return 0xfffd;
}

/* str.isspace() */
static int is_blank(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* A line boundary for str.splitlines() ("\r\n" is one, handled by the caller). */
static int is_line_end(uint32_t c)
{
    return (c >= 0x0a && c <= 0x0d) || (c >= 0x1c && c <= 0x1e) || c == 0x85 || c == 0x2028 ||
           c == 0x2029;
}

/* ---- matching: fnmatch.fnmatchcase() ------------------------------------------------------- */

/* pat[p] is '[': the index of the ']' that closes the set, or 0 if none does (then the '[' is
 * an ordinary character).  A ']' right after "[" or "[!" is a member. */
static size_t set_end(const uint32_t *pat, size_t p, size_t plen)
{
    size_t j = p + 1;
    if (j < plen && pat[j] == '!') j++;
    if (j < plen && pat[j] == ']') j++;
    while (j < plen && pat[j] != ']') j++;
    return j < plen ? j : 0;
}

/* Is c in the set whose members are pat[i..j)?  A leading '!' negates; "a-z" is a range (a '-'
 * first, last, or right after a range is itself a member); a range whose ends are in the wrong
 * order matches nothing.  (One difference with Python's translation to a regular expression,
 * where removing such a range can leave a '!' first and so negate the set, as in "[z-a!]":
 * here the '!' stays a member.) */
static int set_has(const uint32_t *pat, size_t i, size_t j, uint32_t c)
{
    int neg = 0, hit = 0;
    if (i < j && pat[i] == '!') {
        neg = 1;
        i++;
    }
    for (size_t k = i; k < j;) {
        if (k + 2 < j && pat[k + 1] == '-') {
            if (pat[k] <= c && c <= pat[k + 2]) hit = 1;
            k += 3;
        } else {
            if (pat[k] == c) hit = 1;
            k++;
        }
    }
    return hit != neg;
}

static int glob_match(const uint32_t *pat, size_t plen, const char *subject)
{
    const unsigned char *s = (const unsigned char *)subject;
    const unsigned char *end = s + strlen(subject);
    const unsigned char *star_s = NULL; /* where the last '*' started eating */
    size_t p = 0, star_p = 0;
    while (s < end) {
        size_t clen;
        uint32_t c = utf8_next(s, end, 0, &clen);
        if (p < plen && pat[p] == '*') {
            while (p < plen && pat[p] == '*') p++;
            if (p == plen) return 1;
            star_p = p;
            star_s = s;
            continue;
        }
        int ok = 0;
        size_t next = p + 1;
        if (p < plen) {
            size_t close = pat[p] == '[' ? set_end(pat, p, plen) : 0;
            if (close != 0) {
                ok = set_has(pat, p + 1, close, c);
                next = close + 1;
            } else {
                ok = pat[p] == '?' || pat[p] == c;
            }
        }
        if (ok) {
            p = next;
            s += clen;
            continue;
        }
        if (star_s == NULL) return 0;
        /* one more character for the last '*', then try again after it */
        (void)utf8_next(star_s, end, 0, &clen);
        star_s += clen;
        s = star_s;
        p = star_p;
    }
    while (p < plen && pat[p] == '*') p++;
    return p == plen;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash != NULL ? slash + 1 : path;
}

/* A path or its base name (os.path.basename: after the last '/'); empty strings never match. */
static int path_match(const uint32_t *pat, size_t plen, const char *path)
{
    if (path == NULL || path[0] == '\0') return 0;
    if (glob_match(pat, plen, path)) return 1;
    const char *b = base_name(path);
    return b != path && b[0] != '\0' && glob_match(pat, plen, b);
}

int cw_suppressions_match(const struct cw_frame *frames, int n)
{
    if (frames == NULL || n <= 0) return 0;
    for (int k = 0; k < npatterns; k++) {
        const struct pattern *pt = &patterns[k];
        const uint32_t *pat = glob_cps + pt->off;
        for (int i = 0; i < n; i++) {
            const struct cw_frame *f = &frames[i];
            int hit;
            if (pt->kind == KIND_MOD) hit = path_match(pat, pt->len, f->module);
            else if (pt->kind == KIND_SRC) hit = path_match(pat, pt->len, f->file);
            else hit = f->function != NULL && f->function[0] != '\0' && glob_match(pat, pt->len, f->function);
            if (hit) return 1;
        }
    }
    return 0;
}

/* ---- reading -------------------------------------------------------------------------------- */

/* One warning line: "CLOSEWAIT_SUPPRESSIONS=<path>: <what>", built in a bounded buffer; bytes
 * that could break the line are shown as '?'. */
struct msg {
    char s[256];
    size_t n;
};

static void msg_put(struct msg *m, const char *s)
{
    for (; *s != '\0' && m->n + 1 < sizeof m->s; s++)
        m->s[m->n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    m->s[m->n] = '\0';
}

static void msg_num(struct msg *m, unsigned long v)
{
    char d[24];
    size_t i = sizeof d - 1;
    d[i] = '\0';
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && i > 0);
    msg_put(m, d + i);
}

static const char *supp_path; /* the file being read, for warnings */

static void warn_file(const struct msg *what, const char *tail)
{
    struct msg head = {.n = 0};
    msg_put(&head, "CLOSEWAIT_SUPPRESSIONS=");
    msg_put(&head, supp_path);
    cw_warn(head.s, what->s, tail);
}

static const char *errno_text(int e)
{
    switch (e) {
    case ENOENT: return "no such file";
    case EACCES: case EPERM: return "permission denied";
    case ENOTDIR: return "a component of the path is not a directory";
    case ELOOP: return "too many symbolic links";
    case ENAMETOOLONG: return "path too long";
    case EISDIR: return "a directory";
    case EIO: return "I/O error";
    case ENOMEM: return "out of memory";
    case EMFILE: case ENFILE: return "too many open files";
    default: return "system error";
    }
}

static void warn_errno(const char *what, int e)
{
    struct msg m = {.n = 0};
    msg_put(&m, ": ");
    msg_put(&m, what);
    msg_put(&m, " (");
    msg_put(&m, errno_text(e));
    if (e != ENOENT && e != EACCES && e != EPERM) {
        msg_put(&m, ", errno ");
        msg_num(&m, (unsigned long)e);
    }
    msg_put(&m, ")");
    warn_file(&m, "; nothing suppressed");
}

/* Lines that cannot be used: the first few are named, the rest counted. */
#define NAMED_BAD_LINES 3
static unsigned long bad_lines;

static void warn_line(unsigned long lineno, const char *what, const char *quoted)
{
    if (++bad_lines > NAMED_BAD_LINES) return;
    struct msg m = {.n = 0};
    msg_put(&m, ": line ");
    msg_num(&m, lineno);
    msg_put(&m, ": ");
    msg_put(&m, what);
    if (quoted != NULL) {
        msg_put(&m, " \"");
        msg_put(&m, quoted);
        msg_put(&m, "\"");
    }
    warn_file(&m, "; line ignored");
}

/* The whole file, at most CW_SUPP_MAX_FILE bytes (*truncated: it has more); NULL: warned. */
static char *read_file(int fd, const struct stat *st, size_t *len, int *truncated)
{
    size_t limit = CW_SUPP_MAX_FILE + 1; /* one byte more tells a bigger file */
    /* st_size is a hint (a file in /proc says 0, a file may grow): reading goes on to EOF */
    size_t cap = st->st_size >= (off_t)limit ? limit : (size_t)st->st_size + 1;
    if (cap < 4096) cap = 4096;
    char *buf = malloc(cap);
    if (buf == NULL) {
        warn_errno("cannot read", ENOMEM);
        return NULL;
    }
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            if (cap == limit) break;
            size_t ncap = cap * 2 < limit ? cap * 2 : limit;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                warn_errno("cannot read", ENOMEM);
                return NULL;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            warn_errno("cannot read", e);
            return NULL;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    *truncated = n > CW_SUPP_MAX_FILE;
    if (*truncated) {
        /* the first 1 MiB, up to its last line feed: a line cut in two is not a pattern */
        n = CW_SUPP_MAX_FILE;
        while (n > 0 && buf[n - 1] != '\n') n--;
    }
    *len = n;
    return buf;
}

/* Keeps one pattern; -1: out of memory. */
static int too_many; /* a pattern came after the 4096th */

static int add_pattern(int kind, const uint32_t *cps, size_t ncps)
{
    if (npatterns == CW_SUPP_MAX_PATTERNS) {
        too_many = 1;
        return 0;
    }
    if ((size_t)npatterns == patterns_cap) {
        size_t ncap = patterns_cap != 0 ? patterns_cap * 2 : 16;
        if (ncap > CW_SUPP_MAX_PATTERNS) ncap = CW_SUPP_MAX_PATTERNS;
        struct pattern *np = realloc(patterns, ncap * sizeof *np);
        if (np == NULL) return -1;
        patterns = np;
        patterns_cap = ncap;
    }
    if (glob_cap - glob_used < ncps) {
        size_t ncap = glob_cap != 0 ? glob_cap : 1024;
        while (ncap - glob_used < ncps) ncap *= 2;
        uint32_t *ng = realloc(glob_cps, ncap * sizeof *ng);
        if (ng == NULL) return -1;
        glob_cps = ng;
        glob_cap = ncap;
    }
    memcpy(glob_cps + glob_used, cps, ncps * sizeof *cps);
    patterns[npatterns].off = (uint32_t)glob_used;
    patterns[npatterns].len = (uint16_t)ncps;
    patterns[npatterns].kind = (uint8_t)kind;
    npatterns++;
    glob_used += ncps;
    return 0;
}

static int is_word_char(uint32_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* One trimmed, non-empty line of at most CW_SUPP_MAX_LINE bytes: cps[0..n).  0: used or
 * skipped; -1: out of memory. */
static int parse_line(unsigned long lineno, const uint32_t *cps, size_t n)
{
    static const char prefixes[][5] = {"fun:", "mod:", "src:"};
    static const int kinds[] = {KIND_FUN, KIND_MOD, KIND_SRC};
    if (cps[0] == '#') return 0;
    int kind = KIND_FUN;
    size_t start = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        if (n >= 4 && cps[0] == (uint32_t)prefixes[k][0] && cps[1] == (uint32_t)prefixes[k][1] &&
            cps[2] == (uint32_t)prefixes[k][2] && cps[3] == ':') {
            kind = kinds[k];
            start = 4;
            break;
        }
    }
    if (start == 0 && ((cps[0] >= 'a' && cps[0] <= 'z') || (cps[0] >= 'A' && cps[0] <= 'Z'))) {
        size_t w = 1;
        while (w < n && is_word_char(cps[w])) w++;
        if (w < n && cps[w] == ':' && (w + 1 == n || cps[w + 1] != ':')) {
            char word[40];
            size_t i = 0;
            for (; i <= w && i < sizeof word - 4; i++) word[i] = (char)cps[i];
            if (i <= w) word[i++] = '.', word[i++] = '.', word[i++] = '.';
            word[i] = '\0';
            warn_line(lineno, "unknown prefix (fun:, mod: or src:)", word);
            return 0;
        }
    }
    size_t end = n;
    while (start < end && is_blank(cps[start])) start++;
    while (end > start && is_blank(cps[end - 1])) end--;
    if (start == end) return 0; /* "fun:" alone: nothing to match, as in the report tool */
    return add_pattern(kind, cps + start, end - start);
}

/* Splits, trims and decodes the lines of buf[0..len).  0, or -1 (out of memory). */
static int parse(const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    unsigned long lineno = 0;
    uint32_t cps[CW_SUPP_MAX_LINE];
    while (p < end) {
        /* one line: the bytes from its first to its last non-blank character */
        lineno++;
        const unsigned char *first = NULL, *last_end = NULL;
        int has_nul = 0;
        while (p < end) {
            size_t clen;
            uint32_t c = utf8_next(p, end, 1, &clen);
            const unsigned char *at = p;
            p += clen;
            if (is_line_end(c)) {
                if (c == '\r' && p < end && *p == '\n') p++;
                break;
            }
            if (c == 0) has_nul = 1;
            if (!is_blank(c)) {
                if (first == NULL) first = at;
                last_end = p;
            }
        }
        if (first == NULL) continue;
        size_t bytes = (size_t)(last_end - first);
        if (*first == '#') continue;
        if (bytes > CW_SUPP_MAX_LINE) {
            warn_line(lineno, "longer than 512 bytes", NULL);
            continue;
        }
        if (has_nul) {
            warn_line(lineno, "holds a NUL byte", NULL);
            continue;
        }
        size_t n = 0;
        for (const unsigned char *q = first; q < last_end && n < CW_SUPP_MAX_LINE;) {
            size_t clen;
            cps[n++] = utf8_next(q, last_end, 1, &clen);
            q += clen;
        }
        if (parse_line(lineno, cps, n) != 0) return -1;
    }
    if (too_many) {
        struct msg m = {.n = 0};
        msg_put(&m, ": more than 4096 patterns");
        warn_file(&m, "; the rest are ignored");
    }
    return 0;
}

int cw_suppressions_load(const char *path)
{
    cw_suppressions_free();
    if (path == NULL || path[0] == '\0') return 0;
    supp_path = path;
    bad_lines = 0;
    too_many = 0;

    int fd;
    do fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        warn_errno("cannot open", errno);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        warn_errno("cannot read", e);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        struct msg m = {.n = 0};
        msg_put(&m, ": not a regular file (");
        msg_put(&m, S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
                    : S_ISCHR(st.st_mode) ? "a character device" : S_ISBLK(st.st_mode) ? "a block device"
                    : S_ISSOCK(st.st_mode) ? "a socket" : "not a file");
        msg_put(&m, ")");
        warn_file(&m, "; nothing suppressed");
        return -1;
    }
    size_t len = 0;
    int truncated = 0;
    char *buf = read_file(fd, &st, &len, &truncated);
    close(fd);
    if (buf == NULL) return -1;
    if (truncated) {
        struct msg m = {.n = 0};
        msg_put(&m, ": larger than 1 MiB");
        warn_file(&m, "; only the lines within its first 1 MiB are used");
    }
    int rc = parse(buf, len);
    free(buf);
    if (rc != 0) {
        cw_suppressions_free();
        warn_errno("cannot read", ENOMEM);
        return -1;
    }
    if (bad_lines > NAMED_BAD_LINES) {
        struct msg m = {.n = 0};
        msg_put(&m, ": ");
        msg_num(&m, bad_lines - NAMED_BAD_LINES);
        msg_put(&m, " more unusable lines");
        warn_file(&m, "; ignored");
    }
    return 0;
}
