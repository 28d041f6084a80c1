/* Options: CLOSEWAIT_* environment variables, read once, each bounded, one warning per bad value. */
#include "closewait.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

CW_HIDDEN struct cw_config cw_cfg = {
    /* Ten seconds: a correct server closes within microseconds of reading EOF, a busy one within
     * a few hundred ms; a half-closing client's reply that is still being sent is not counted
     * (the watcher sees the data going out).  Ten seconds without close or send is a leak. */
    .grace_ms = 10000,
    .interval_ms = 500,
    .stack_depth = 32,
    .exitcode = -1,
    .symbolize = 1,
    .report_signal = 0,
    .format = CW_FORMAT_TEXT,
    .log_spec = "stderr",
    .suppress_path = "",
};

void cw_warn(const char *a, const char *b, const char *c)
{
    char line[768];
    size_t n = 0;
    const char *parts[] = {"closewait: ", a, b, c, "\n"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        const char *p = parts[i];
        if (p == NULL) continue;
        size_t len = strnlen(p, 256);
        if (n + len >= sizeof line - 1) len = sizeof line - 1 - n;
        memcpy(line + n, p, len);
        n += len;
    }
    ssize_t w = write(2, line, n);
    (void)w;
}

/* Decimal integer within [lo, hi]; 0 on success. */
static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (s == NULL || *s == '\0') return -1;
    int64_t v = 0;
    size_t i = 0;
    for (; s[i] != '\0'; i++) {
        /* every option fits in 12 digits; more could only overflow */
        if (i >= 12 || s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static void int_option(const char *name, int64_t lo, int64_t hi, int64_t *dst, const char *dflt)
{
    const char *s = getenv(name);
    if (s == NULL) return;
    int64_t v;
    if (parse_int(s, lo, hi, &v) == 0) {
        *dst = v;
        return;
    }
    cw_warn(name, ": invalid value, expected ", dflt);
}

/* A path-like option copied into dst, or one warning and dst left as it was. */
static void path_option(const char *name, char *dst, size_t cap, const char *fallback)
{
    const char *s = getenv(name);
    if (s == NULL) return;
    size_t len = strnlen(s, cap);
    if (len == 0 || len >= cap) cw_warn(name, ": empty or longer than 511 bytes; ", fallback);
    else memcpy(dst, s, len + 1);
}

static int signal_by_name(const char *s, int *out)
{
    static const struct { const char *name; int sig; } names[] = {
        {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"SIGUSR1", SIGUSR1}, {"SIGUSR2", SIGUSR2},
        {"WINCH", SIGWINCH}, {"SIGWINCH", SIGWINCH}, {"URG", SIGURG}, {"SIGURG", SIGURG},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) { *out = names[i].sig; return 0; }
    int64_t v;
    if (parse_int(s, 1, 64, &v) == 0 && v != SIGKILL && v != SIGSTOP) { *out = (int)v; return 0; }
    return -1;
}

void cw_config_load(void)
{
    int64_t v;
    int interval_set = 0;

    v = cw_cfg.grace_ms;
    int_option("CLOSEWAIT_GRACE_MS", 0, 86400000, &v, "milliseconds 0..86400000; using 10000");
    cw_cfg.grace_ms = v;

    v = -1;
    int_option("CLOSEWAIT_INTERVAL_MS", 10, 60000, &v, "milliseconds 10..60000; using grace/4");
    if (v > 0) { cw_cfg.interval_ms = v; interval_set = 1; }
    if (!interval_set) {
        int64_t iv = cw_cfg.grace_ms / 4;
        cw_cfg.interval_ms = iv < 10 ? 10 : iv > 500 ? 500 : iv;
    }

    v = cw_cfg.stack_depth;
    int_option("CLOSEWAIT_STACK_DEPTH", 1, CW_MAX_DEPTH, &v, "frames 1..64; using 32");
    cw_cfg.stack_depth = (int)v;

    v = -1;
    int_option("CLOSEWAIT_EXITCODE", 0, 255, &v, "an exit code 0..255; not used");
    cw_cfg.exitcode = (int)v;

    const char *s = getenv("CLOSEWAIT_SYMBOLIZE");
    if (s != NULL) {
        if (strcmp(s, "0") == 0) cw_cfg.symbolize = 0;
        else if (strcmp(s, "1") == 0) cw_cfg.symbolize = 1;
        else cw_warn("CLOSEWAIT_SYMBOLIZE", ": invalid value, expected 0 or 1; using ", "1");
    }

    s = getenv("CLOSEWAIT_FORMAT");
    if (s != NULL) {
        if (strcmp(s, "json") == 0) cw_cfg.format = CW_FORMAT_JSON;
        else if (strcmp(s, "text") == 0) cw_cfg.format = CW_FORMAT_TEXT;
        else cw_warn("CLOSEWAIT_FORMAT", ": invalid value, expected text or json; using ", "text");
    }

    path_option("CLOSEWAIT_LOG", cw_cfg.log_spec, sizeof cw_cfg.log_spec, "using stderr");
    path_option("CLOSEWAIT_SUPPRESSIONS", cw_cfg.suppress_path, sizeof cw_cfg.suppress_path, "ignored");

    s = getenv("CLOSEWAIT_REPORT_SIGNAL");
    if (s != NULL && *s != '\0') {
        int sig;
        if (signal_by_name(s, &sig) == 0) cw_cfg.report_signal = sig;
        else cw_warn("CLOSEWAIT_REPORT_SIGNAL", ": invalid value, expected USR1, USR2 or a number; ",
                     "no signal used");
    }
}

int64_t cw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cw_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
