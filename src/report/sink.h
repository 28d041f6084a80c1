#ifndef CLOSEWAIT_SINK_H
#define CLOSEWAIT_SINK_H
#include "base.h"
/* Where reports go (CLOSEWAIT_LOG), for the process whose report it is (cw_program_pid()).
 * Nothing here keeps a descriptor of the program's open, and no write waits long: a full pipe, a
 * FIFO nobody reads, a full disk cost the report, counted, never the program's time. */
CW_HIDDEN void cw_sink_write(const char *text, size_t len);
/* Reports that could not be written so far. */
CW_HIDDEN long cw_sink_dropped(void);
/* This process's fd 2, as the watcher must know it (the program's side: at start and when the
 * program moves or closes its fd 2). */
CW_HIDDEN void cw_sink_publish_stderr(void);
/* In the watcher process: keep its copy of a stderr only while `needed`. */
CW_HIDDEN void cw_sink_stderr_hold(int needed);
/* In the watcher process: is this area's stderr the one the watcher holds? */
struct cw_area;
CW_HIDDEN int cw_sink_holds_stderr_of(const struct cw_area *a);
/* CLOSEWAIT_LOG opened now for this process, for a watcher to be started after the program
 * drops privileges (as a daemon opens its log before it drops them); -1 if there is none. */
CW_HIDDEN int cw_sink_preopen(void);
/* In the watcher process: that descriptor, for the reports about process pid. */
CW_HIDDEN void cw_sink_adopt_log(int fd, pid_t pid);
/* Move a descriptor of ours above the range the program uses; returns the new number. */
CW_HIDDEN int cw_fd_move_high(int fd);
#endif
