/* Options: CLOSEWAIT_* environment variables, read once, each bounded, one warning per bad value. */
#define _GNU_SOURCE
#include "base.h"
#include "options/options.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

CW_HIDDEN struct cw_config cw_cfg = {
    /* Ten seconds: a correct server closes within microseconds of reading EOF, a busy one within
     * a few hundred ms; a half-closing client's reply that is still being sent is not counted
     * (the watcher sees the data going out).  Ten seconds without close or send is a leak. */
    .grace_ms = 10000,
    .interval_ms = 0,
    .stack_depth = 32,
    .exitcode = -1,
    .symbolize = 1,
    .report_signal = 0,
    .format = CW_FORMAT_TEXT,
    .site_cache = 1,
    .go_ancestors = 1,
    .log_spec = "stderr",
    .suppress_path = "",
    .metrics_path = "",
};


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

/* CLOSEWAIT_REPORT_SIGNAL: only a signal that runs no part of a program's life may be taken
 * over (its handler is replaced).  Every other standard signal is refused by name and by
 * number, with the reason. */
struct sig_entry {
    const char *name; /* without "SIG" */
    int sig;
    const char *why;  /* NULL: accepted */
};

static const struct sig_entry sig_table[] = {
    {"USR1", SIGUSR1, NULL},
    {"USR2", SIGUSR2, NULL},
    {"WINCH", SIGWINCH, NULL},
    {"URG", SIGURG, NULL},
    {"TERM", SIGTERM, "stops the program"},
    {"INT", SIGINT, "stops the program (Ctrl-C)"},
    {"QUIT", SIGQUIT, "stops the program with a core dump"},
    {"HUP", SIGHUP, "stops the program or makes it reload"},
    {"KILL", SIGKILL, "cannot be caught"},
    {"STOP", SIGSTOP, "cannot be caught"},
    {"TSTP", SIGTSTP, "suspends the program (Ctrl-Z)"},
    {"TTIN", SIGTTIN, "suspends a background program that reads its terminal"},
    {"TTOU", SIGTTOU, "suspends a background program that writes to its terminal"},
    {"CONT", SIGCONT, "resumes a suspended program"},
    {"CHLD", SIGCHLD, "tells the program that a child process ended"},
    {"CLD", SIGCHLD, "tells the program that a child process ended"},
    {"PIPE", SIGPIPE, "tells the program that what it writes to has no reader"},
    {"ALRM", SIGALRM, "is the program's timer (alarm, setitimer)"},
    {"VTALRM", SIGVTALRM, "is the program's CPU-time timer"},
    {"PROF", SIGPROF, "is a profiler's timer"},
    {"SEGV", SIGSEGV, "reports a crash (invalid memory access)"},
    {"BUS", SIGBUS, "reports a crash (bus error)"},
    {"FPE", SIGFPE, "reports a crash (arithmetic error)"},
    {"ILL", SIGILL, "reports a crash (illegal instruction)"},
    {"ABRT", SIGABRT, "aborts the program (abort, assert)"},
    {"IOT", SIGABRT, "aborts the program (abort, assert)"},
    {"TRAP", SIGTRAP, "is a debugger's breakpoint"},
    {"SYS", SIGSYS, "reports a forbidden system call (seccomp)"},
    {"XCPU", SIGXCPU, "tells the program its CPU time limit is reached"},
    {"XFSZ", SIGXFSZ, "tells the program its file size limit is reached"},
    {"IO", SIGIO, "tells the program a descriptor is ready (O_ASYNC)"},
    {"POLL", SIGPOLL, "tells the program a descriptor is ready (O_ASYNC)"},
    {"PWR", SIGPWR, "tells the program the power is failing"},
#ifdef SIGSTKFLT
    {"STKFLT", SIGSTKFLT, "is not one of the signals a report may use"},
#endif
};

#define SIG_HINT " (use USR1, USR2, WINCH, URG or a realtime signal)"

/* Appends s to line[*n], at most cap - 1 bytes in all; control and non-ASCII bytes become '?'
 * (the warning is one line whatever the variable holds). */
static void put_clean(char *line, size_t cap, size_t *n, const char *s)
{
    for (; *s != '\0' && *n + 1 < cap; s++) line[(*n)++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    line[*n] = '\0';
}

/* "RTMIN", "RTMIN+n", "RTMAX", "RTMAX-n" (without SIG): the signal, or -1. */
static int realtime_by_name(const char *s)
{
    int from_min = strncmp(s, "RTMIN", 5) == 0;
    if (!from_min && strncmp(s, "RTMAX", 5) != 0) return -1;
    s += 5;
    if (*s == '\0') return from_min ? SIGRTMIN : SIGRTMAX;
    if (*s != (from_min ? '+' : '-')) return -1;
    int64_t v;
    if (parse_int(s + 1, 0, SIGRTMAX - SIGRTMIN, &v) != 0) return -1;
    return from_min ? SIGRTMIN + (int)v : SIGRTMAX - (int)v;
}

/* 0 and *out set: a signal that may be used.  -1: refused or invalid, warned. */
static int signal_by_name(const char *s, int *out)
{
    const char *name = strncmp(s, "SIG", 3) == 0 ? s + 3 : s;
    const struct sig_entry *e = NULL;
    int sig = -1;
    int64_t v;
    if (parse_int(s, 1, 64, &v) == 0) {
        sig = (int)v;
        for (size_t i = 0; i < sizeof sig_table / sizeof sig_table[0] && e == NULL; i++)
            if (sig_table[i].sig == sig) e = &sig_table[i];
    } else {
        for (size_t i = 0; i < sizeof sig_table / sizeof sig_table[0] && e == NULL; i++)
            if (strcmp(name, sig_table[i].name) == 0) e = &sig_table[i];
        if (e != NULL) sig = e->sig;
        else sig = realtime_by_name(name);
    }
    if (e != NULL && e->why == NULL) {
        *out = e->sig;
        return 0;
    }
    if (e == NULL && sig >= SIGRTMIN && sig <= SIGRTMAX) {
        *out = sig;
        return 0;
    }

    char line[256];
    size_t n = 0;
    put_clean(line, sizeof line, &n, "CLOSEWAIT_REPORT_SIGNAL=");
    char value[40]; /* what was given, cut */
    size_t vlen = strnlen(s, 33);
    if (vlen > 32) {
        memcpy(value, s, 29);
        memcpy(value + 29, "...", 4);
    } else {
        memcpy(value, s, vlen + 1);
    }
    put_clean(line, sizeof line, &n, value);
    if (e != NULL) {
        put_clean(line, sizeof line, &n, ": SIG");
        put_clean(line, sizeof line, &n, e->name);
        put_clean(line, sizeof line, &n, " ");
        put_clean(line, sizeof line, &n, e->why);
        cw_warn(line, "; refused, no report signal used", SIG_HINT);
    } else if (sig > 0 && sig < SIGRTMIN) {
        /* between the standard signals and SIGRTMIN: the C library's own (threads, timers) */
        put_clean(line, sizeof line, &n, ": signal is reserved by the C library");
        cw_warn(line, "; refused, no report signal used", SIG_HINT);
    } else {
        put_clean(line, sizeof line, &n, ": not a signal name or number");
        cw_warn(line, "; no report signal used", SIG_HINT);
    }
    return -1;
}

/* A value among choices "a|b|c": its index, or -1. */
static int choice_index(const char *s, const char *choices)
{
    size_t len = strlen(s);
    int index = 0;
    for (const char *c = choices;; index++) {
        const char *bar = strchr(c, '|');
        size_t clen = bar != NULL ? (size_t)(bar - c) : strlen(c);
        if (clen == len && strncmp(c, s, len) == 0) return index;
        if (bar == NULL) return -1;
        c = bar + 1;
    }
}

static void choice_option(const char *name, int *dst, const char *choices, const char *fallback)
{
    const char *s = getenv(name);
    if (s == NULL) return;
    int i = choice_index(s, choices);
    if (i >= 0) *dst = i;
    else cw_warn(name, ": invalid value, expected ", fallback);
}

static void signal_option(const char *name, int *dst)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') return;
    int sig;
    *dst = signal_by_name(s, &sig) == 0 ? sig : 0;
}

void cw_config_load(void)
{
#define CW_INT(var, field, lo, hi, fallback) int_option(#var, lo, hi, &cw_cfg.field, fallback);
#define CW_CHOICE(var, field, choices, fallback) choice_option(#var, &cw_cfg.field, choices, fallback);
#define CW_PATH(var, field, fallback) path_option(#var, cw_cfg.field, sizeof cw_cfg.field, fallback);
#define CW_SIGNAL(var, field) signal_option(#var, &cw_cfg.field);
#include "options/options.def"
#undef CW_INT
#undef CW_CHOICE
#undef CW_PATH
#undef CW_SIGNAL
    if (cw_cfg.interval_ms == 0) {
        int64_t iv = cw_cfg.grace_ms / 4;
        cw_cfg.interval_ms = iv < 10 ? 10 : iv > 500 ? 500 : iv;
    }
}

