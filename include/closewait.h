/*
 * closewait: find TCP sockets a program leaves in CLOSE_WAIT.
 *
 * The library works without any change to the program (LD_PRELOAD=libclosewait.so).  These
 * few functions are for programs and test harnesses that want to talk to it; look them up
 * with dlsym(RTLD_DEFAULT, "closewait_dump") so that the program runs without the library too.
 */
#ifndef CLOSEWAIT_H
#define CLOSEWAIT_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version, "MAJOR.MINOR.PATCH". */
const char *closewait_version(void);

/* Check now (ignoring nothing: the grace period still applies) and write the current findings,
 * grouped by open site, to the report log.  Thread-safe; not async-signal-safe. */
void closewait_dump(void);

/* Number of reported leaks still held open by this process. */
long closewait_leaks_open(void);

/* A runtime's own stack for descriptor fd, for the reports: kind 0 where it was opened, 1 where
 * its EOF reached the program; text as docs/CONTRACT.md ("Language stacks") says, at most 4096
 * bytes.  0 if noted, -1 if not (fd is not a TCP socket the library tracks, bad arguments). */
int closewait_note_stack(int fd, int kind, const char *text, size_t len);

#ifdef __cplusplus
}
#endif
#endif
