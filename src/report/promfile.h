#ifndef CLOSEWAIT_PROMFILE_H
#define CLOSEWAIT_PROMFILE_H
#include "base.h"
/* CLOSEWAIT_METRICS: the file node_exporter's textfile collector reads, replaced whole (a
 * temporary file in the same directory, then rename) so that a reader never sees half of it.
 * Nothing stays open after a write.  spec is the variable's value (`%p` becomes pid); returns 0
 * when the file was replaced.  A refused or failed write says why once, on stderr. */
CW_HIDDEN int cw_promfile_write(const char *spec, pid_t pid, const char *text, size_t len);
/* Does the path name the pid (`%p`)?  Then every series carries a pid label: node_exporter
 * refuses two files that hold the same series. */
CW_HIDDEN int cw_promfile_names_pid(const char *spec);
#endif
