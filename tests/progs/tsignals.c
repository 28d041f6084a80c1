/*
 * tsignals: CLOSEWAIT_REPORT_SIGNAL as src/options/options.c reads it, without the library, for
 * tests/run.py (which builds it fresh with the library's warning flags; `make -C tests` builds
 * it too).
 *
 *   tsignals VALUE...   for each VALUE: "VALUE <value>" on stderr, then cw_config_load() with
 *                       only CLOSEWAIT_REPORT_SIGNAL=VALUE set (its warnings follow on stderr),
 *                       then "<value> <signal taken, 0 for none>" on stdout
 *   tsignals --rt       "<SIGRTMIN> <SIGRTMAX>" as the C library says
 */
#include "../../src/options/options.c"
#include "../../src/base.c"

#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--rt") == 0) {
        printf("%d %d\n", SIGRTMIN, SIGRTMAX);
        return 0;
    }
    static const char *const others[] = {
        "CLOSEWAIT_GRACE_MS", "CLOSEWAIT_INTERVAL_MS", "CLOSEWAIT_STACK_DEPTH", "CLOSEWAIT_EXITCODE",
        "CLOSEWAIT_SYMBOLIZE", "CLOSEWAIT_FORMAT", "CLOSEWAIT_LOG", "CLOSEWAIT_SUPPRESSIONS",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) unsetenv(others[i]);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        dprintf(2, "VALUE %s\n", argv[i]);
        setenv("CLOSEWAIT_REPORT_SIGNAL", argv[i], 1);
        cw_cfg.report_signal = -1; /* must be set by the load, to a signal or to 0 */
        cw_config_load();
        printf("%s %d\n", argv[i], cw_cfg.report_signal);
    }
    return 0;
}
