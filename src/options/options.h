/* The CLOSEWAIT_* options, declared once in options.def, read once at start. */
#ifndef CLOSEWAIT_OPTIONS_H
#define CLOSEWAIT_OPTIONS_H
#include "base.h"

enum cw_format { CW_FORMAT_TEXT, CW_FORMAT_JSON };

struct cw_config {
    int64_t grace_ms;
    int64_t interval_ms;
    int stack_depth;
    int exitcode;           /* -1: unset */
    int symbolize;
    int report_signal;      /* 0: none */
    enum cw_format format;
    char log_spec[512];     /* "stderr", "syslog" or a path with %p */
    char suppress_path[512];
};

CW_HIDDEN extern struct cw_config cw_cfg;
CW_HIDDEN void cw_config_load(void);
#endif
