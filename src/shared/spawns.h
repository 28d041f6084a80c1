#ifndef CLOSEWAIT_SPAWN_H
#define CLOSEWAIT_SPAWN_H
#include "base.h"

/* A tracked socket that was open when a child was made. */
struct cw_crossed {
    int fd;
    uint32_t open_stack;
    uint64_t id;                /* which socket: the slot's (shared/fdtable.h), or its inode */
    int64_t open_ms;
    uint8_t opened_by;
    /* watcher-owned */
    uint8_t w_done;
    uint8_t w_searches;      /* /proc searches for its holder so far (bounded) */
    int64_t w_fin_ms;
};

enum cw_spawn_kind { CW_SPAWN_FORK = 1, CW_SPAWN_POSIX_SPAWN, CW_SPAWN_SYSTEM, CW_SPAWN_POPEN };

/* One fork/posix_spawn/system/popen: who, from where, and which sockets crossed. */
struct cw_spawn {
    _Atomic int state;          /* 0 free, 1 being written, 2 ready */
    int kind;
    pid_t child;                /* 0 when libc does not tell us (system, popen) */
    uint32_t stack;
    int64_t when_ms;
    size_t nsocks;              /* its sockets: cw_spawn_socks(index of the record) */
};

#define CW_MAX_SPAWNS 16
#define CW_SPAWN_SOCKS 128 /* sockets recorded per spawn; more are not followed */
CW_HIDDEN const char *cw_spawn_kind_name(int kind);
#endif
