/*
 * tsuppress: the suppressions reader and matcher (src/watcher/suppress.c) on their own, without the
 * library, for tests/run.py.  src/watcher/suppress.c is compiled into this program (run.py builds it
 * fresh with the library's warning flags; `make -C tests` builds it too).
 *
 *   tsuppress load PATH     cw_suppressions_load(PATH); prints "rc=R count=N warnings=W"
 *   tsuppress cases FILE    one case per line: "HEX FRAMES", HEX the bytes of a suppressions
 *                           file, FRAMES frames separated by ';', each "FUNC,FILE,MODULE" in hex,
 *                           "-" for NULL (nothing for an empty string); prints per case
 *                           "rc count warnings match"
 *   tsuppress self          the API's edge cases; prints "OK" or what failed
 *
 * Warnings (cw_warn) go to stderr as the library writes them, and are counted.
 */
#include "../../src/watcher/suppress.c"

#include <stdio.h>

static int warnings;

void cw_warn(const char *a, const char *b, const char *c)
{
    warnings++;
    fprintf(stderr, "closewait: %s%s%s\n", a ? a : "", b ? b : "", c ? c : "");
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes hex s[0..n) into a fresh NUL-terminated buffer (*len bytes); NULL on bad input. */
static char *unhex(const char *s, size_t n, size_t *len)
{
    if (n % 2 != 0) return NULL;
    char *out = malloc(n / 2 + 1);
    if (out == NULL) return NULL;
    for (size_t i = 0; i < n; i += 2) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        out[i / 2] = (char)(hi << 4 | lo);
    }
    out[n / 2] = '\0';
    if (len != NULL) *len = n / 2;
    return out;
}

#define MAXF 16

/* "FUNC,FILE,MODULE;..." into frames (strings allocated); returns the count, -1 on bad input. */
static int parse_frames(const char *spec, struct cw_frame *f, char **owned, int *nowned)
{
    int n = 0;
    const char *p = spec;
    while (*p != '\0' && n < MAXF) {
        memset(&f[n], 0, sizeof f[n]);
        const char **fields[3] = {&f[n].function, &f[n].file, &f[n].module};
        for (int k = 0; k < 3; k++) {
            size_t len = strcspn(p, ",;");
            if (len == 1 && p[0] == '-') {
                *fields[k] = NULL;
            } else {
                char *s = unhex(p, len, NULL);
                if (s == NULL) return -1;
                owned[(*nowned)++] = s;
                *fields[k] = s;
            }
            p += len;
            if (k < 2) {
                if (*p != ',') return -1;
                p++;
            }
        }
        n++;
        if (*p == ';') p++;
        else if (*p != '\0') return -1;
    }
    return n;
}

static int cases(const char *path)
{
    FILE *in = fopen(path, "r");
    if (in == NULL) {
        perror(path);
        return 2;
    }
    char tmpl[] = "/tmp/tsuppress-XXXXXX";
    int tfd = mkstemp(tmpl);
    if (tfd < 0) {
        perror("mkstemp");
        fclose(in);
        return 2;
    }
    close(tfd);
    static char line[1 << 21];
    int status = 0;
    while (fgets(line, sizeof line, in) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *sp = strchr(line, ' ');
        if (sp == NULL) {
            status = 2;
            break;
        }
        size_t clen;
        char *content = unhex(line, (size_t)(sp - line), &clen);
        if (content == NULL) {
            status = 2;
            break;
        }
        FILE *t = fopen(tmpl, "w");
        if (t == NULL || fwrite(content, 1, clen, t) != clen || fclose(t) != 0) {
            free(content);
            status = 2;
            break;
        }
        free(content);
        struct cw_frame f[MAXF];
        char *owned[MAXF * 3];
        int nowned = 0;
        int nf = parse_frames(sp + 1, f, owned, &nowned);
        if (nf < 0) {
            for (int i = 0; i < nowned; i++) free(owned[i]);
            status = 2;
            break;
        }
        warnings = 0;
        int rc = cw_suppressions_load(tmpl);
        int m = cw_suppressions_match(f, nf);
        printf("%d %d %d %d\n", rc, cw_suppressions_count(), warnings, m);
        for (int i = 0; i < nowned; i++) free(owned[i]);
    }
    cw_suppressions_free();
    unlink(tmpl);
    fclose(in);
    return status;
}

static int failures;

static void expect(int cond, const char *what)
{
    if (!cond) {
        printf("FAILED: %s\n", what);
        failures++;
    }
}

static int self_test(void)
{
    struct cw_frame f[2];
    memset(f, 0, sizeof f);
    f[0].function = "handle_client";
    f[0].file = "/src/app/server.c";
    f[0].module = "/usr/bin/app";
    f[1].function = "main";

    expect(cw_suppressions_load(NULL) == 0 && cw_suppressions_count() == 0, "load(NULL)");
    expect(cw_suppressions_load("") == 0 && cw_suppressions_count() == 0, "load(\"\")");
    expect(cw_suppressions_match(NULL, 3) == 0, "match(NULL)");
    expect(cw_suppressions_match(f, 0) == 0, "match(n=0)");
    expect(cw_suppressions_match(f, -1) == 0, "match(n<0)");

    char tmpl[] = "/tmp/tsuppress-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) {
        perror("mkstemp");
        return 2;
    }
    const char *text = "src:server.c\nfun:main\n";
    if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) return 2;
    close(fd);
    expect(cw_suppressions_load(tmpl) == 0 && cw_suppressions_count() == 2, "load two patterns");
    expect(cw_suppressions_match(f, 1) == 1, "src: base name");
    expect(cw_suppressions_match(f + 1, 1) == 1, "fun:main");
    expect(cw_suppressions_load(tmpl) == 0 && cw_suppressions_count() == 2, "a second load replaces");
    warnings = 0;
    expect(cw_suppressions_load("/nonexistent/closewait.supp") == -1, "missing file refused");
    expect(warnings == 1, "missing file: one warning");
    expect(cw_suppressions_count() == 0 && cw_suppressions_match(f, 2) == 0, "refusal forgets the old patterns");
    cw_suppressions_free();
    cw_suppressions_free();
    expect(cw_suppressions_count() == 0 && cw_suppressions_match(f, 2) == 0, "free twice");
    unlink(tmpl);
    if (failures == 0) printf("OK\n");
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "load") == 0) {
        warnings = 0;
        int rc = cw_suppressions_load(argv[2]);
        printf("rc=%d count=%d warnings=%d\n", rc, cw_suppressions_count(), warnings);
        cw_suppressions_free();
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "cases") == 0) return cases(argv[2]);
    if (argc == 2 && strcmp(argv[1], "self") == 0) return self_test();
    fprintf(stderr, "usage: tsuppress load PATH | cases FILE | self\n");
    return 2;
}
