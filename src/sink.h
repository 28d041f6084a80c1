#ifndef CLOSEWAIT_SINK_H
#define CLOSEWAIT_SINK_H
#include "closewait.h"
CW_HIDDEN void cw_sink_open(void);
CW_HIDDEN void cw_sink_after_fork(void);
CW_HIDDEN void cw_sink_write(const char *text, size_t len);
/* The log's descriptor, -1 for syslog or none. */
CW_HIDDEN int cw_sink_fd(void);
/* In the watcher process: write to this copy of the program's log descriptor. */
CW_HIDDEN void cw_sink_use(int fd);
/* Move a descriptor of ours above the range the program uses; returns the new number. */
CW_HIDDEN int cw_fd_move_high(int fd);
#endif
