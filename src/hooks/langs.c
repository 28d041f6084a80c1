/*
 * The runtimes' way in: Python (tools/langs/python/sitecustomize.py, through ctypes) and Node.js
 * (tools/langs/node/closewait.js, through this library loaded as a Node-API addon) hand the
 * program's own stack to closewait_note_stack() when a socket is born and when its EOF reaches
 * the program.  The library is already loaded in the process (LD_PRELOAD): nothing else is.
 */
#define _GNU_SOURCE
#include "shared/langstack.h"
#include "shared/region.h"
#include "sys/sockets.h"

#include <errno.h>

__attribute__((visibility("default"))) int closewait_note_stack(int fd, int kind, const char *frames, size_t len)
{
    int saved = errno;
    int r = -1;
    if (frames != NULL && len > 0 && len <= CW_LANG_MAX_TEXT && !cw_on_private_table) r = cw_lang_note(fd, kind, frames, len);
    errno = saved;
    return r;
}
