/* The CLOSEWAIT_* options, declared once in options.def, read once at start. */
#ifndef CLOSEWAIT_OPTIONS_H
#define CLOSEWAIT_OPTIONS_H
#include "base.h"

enum cw_format { CW_FORMAT_TEXT, CW_FORMAT_JSON };

/* The options' values (options.def declares them); a field is kept as it is when its variable
 * is unset or bad. */
struct cw_config {
    int64_t grace_ms;
    int64_t interval_ms;    /* 0 until set: then grace/4 in [10, 500] */
    int64_t stack_depth;
    int64_t exitcode;       /* -1: unset */
    int symbolize;
    int format;             /* enum cw_format */
    int watcher_thread;     /* CLOSEWAIT_WATCHER=thread */
    int watch;              /* CLOSEWAIT_WATCH: sock_diag only */
    int site_cache;
    int report_signal;      /* 0: none */
    int go_ancestors;       /* closewait-ebpf, a Go program it starts: its goroutines' creators' stacks */
    char log_spec[512];     /* "stderr", "syslog", "off" or a path with %p */
    char suppress_path[512];
    char metrics_path[512];  /* "": none; an absolute path ending in .prom, with %p */
};

CW_HIDDEN extern struct cw_config cw_cfg;
CW_HIDDEN void cw_config_load(void);
#endif
