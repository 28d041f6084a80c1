/*
 * libFuzzer harness for the option parser: the input is lines "NAME=VALUE" for the CLOSEWAIT_*
 * variables; after cw_config_load() every option must be within its documented range and every
 * string NUL-terminated, whatever the values were.
 */
#include "options/options.h"

#include <stdlib.h>
#include <string.h>

static const char *const names[] = {
    "CLOSEWAIT_GRACE_MS", "CLOSEWAIT_INTERVAL_MS", "CLOSEWAIT_STACK_DEPTH", "CLOSEWAIT_EXITCODE",
    "CLOSEWAIT_SYMBOLIZE", "CLOSEWAIT_FORMAT", "CLOSEWAIT_LOG", "CLOSEWAIT_SUPPRESSIONS",
    "CLOSEWAIT_REPORT_SIGNAL",
};
#define NNAMES (sizeof names / sizeof names[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cw_config defaults;
    static int saved;
    if (!saved) {
        defaults = cw_cfg;
        saved = 1;
    }
    cw_cfg = defaults;
    for (size_t i = 0; i < NNAMES; i++) unsetenv(names[i]);

    char *text = malloc(size + 1);
    if (text == NULL) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    for (char *line = text, *next; line != NULL; line = next) {
        next = strchr(line, '\n');
        if (next != NULL) *next++ = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL) continue;
        *eq = '\0';
        /* "GRACE_MS=..." or an index "3=..." picks the variable */
        for (size_t i = 0; i < NNAMES; i++)
            if (strcmp(line, names[i] + 10) == 0 || (line[0] == (char)('0' + i) && line[1] == '\0'))
                setenv(names[i], eq + 1, 1);
    }
    free(text);

    cw_config_load();

    if (cw_cfg.grace_ms < 0 || cw_cfg.grace_ms > 86400000) abort();
    if (cw_cfg.interval_ms < 10 || cw_cfg.interval_ms > 60000) abort();
    if (cw_cfg.stack_depth < 1 || cw_cfg.stack_depth > CW_MAX_DEPTH) abort();
    if (cw_cfg.exitcode < -1 || cw_cfg.exitcode > 255) abort();
    if (cw_cfg.symbolize != 0 && cw_cfg.symbolize != 1) abort();
    if (cw_cfg.format != CW_FORMAT_TEXT && cw_cfg.format != CW_FORMAT_JSON) abort();
    if (memchr(cw_cfg.log_spec, '\0', sizeof cw_cfg.log_spec) == NULL || cw_cfg.log_spec[0] == '\0') abort();
    if (memchr(cw_cfg.suppress_path, '\0', sizeof cw_cfg.suppress_path) == NULL) abort();
    if (cw_cfg.report_signal < 0 || cw_cfg.report_signal > 64) abort();
    return 0;
}
