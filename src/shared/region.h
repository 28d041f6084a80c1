/* The region shared by the processes of one program tree and their watcher (region.c). */
#ifndef CLOSEWAIT_REGION_H
#define CLOSEWAIT_REGION_H
#include "base.h"
#include "options/options.h"
#include "shared/fdtable.h"
#include "shared/owners.h"
#include "shared/peers.h"
#include "shared/spawns.h"

#define CW_STACK_INDEX_SIZE (1u << 16)
#define CW_STACK_ARENA_BYTES (64u << 20)
/* Processes of one tree watched at once (a fork-per-connection server's live backends), and
 * table chunks they share. */
#define CW_MAX_AREAS 2048 /* processes of one tree watched at once: a PostgreSQL with 2000 backends */
#define CW_POOL_CHUNKS 8192

enum { CW_WATCHER_NONE, CW_WATCHER_STARTING, CW_WATCHER_READY, CW_WATCHER_FAILED, CW_WATCHER_GONE };

/* An area's life.  FORKING: made by a parent for a child not yet running; LIVE: its process runs
 * (pid set); EXEC: its process is replacing its image (the new one watches itself); LEFT: its
 * process took a region of its own (it changed credentials); FREE: reusable. */
enum { AREA_FREE, AREA_FORKING, AREA_LIVE, AREA_EXEC, AREA_LEFT, AREA_EXITED };

/* What a process's fd 2 is, for the watcher that writes reports there. */
enum { ERR_NONE, ERR_FILE, ERR_TTY, ERR_PIPE, ERR_UNIX, ERR_OTHER };
struct cw_stderr_id {
    _Atomic uint32_t gen;     /* odd while being written */
    uint32_t kind;
    uint64_t dev, ino;
    char path[256];
};

/* One process of the tree.  Everything here is written by that process (and its parent before
 * it runs), so a watcher checks every number it reads. */
struct cw_area {
    _Atomic uint32_t state;
    _Atomic int32_t pid;
    _Atomic int32_t parent;          /* area index + 1 of the process it was forked from, 0: none */
    _Atomic int32_t fork_parent_pid;
    _Atomic uint32_t fork_stack;
    _Atomic int64_t forked_ms;
    _Atomic uint16_t fork_gen;
    _Atomic int any_tcp;
    _Atomic int any_inet6;           /* an IPv6 TCP socket was made: the watcher dumps that family too */
    _Atomic int fd_high;             /* every slot ever written is below it */
    _Atomic uint32_t dump_req, dump_done;
    _Atomic uint32_t exit_req, exit_done;
    /* written by the watcher */
    _Atomic int64_t open_now;        /* sockets held in CLOSE_WAIT now, after the last look */
    _Atomic int64_t reported;        /* leaks reported in all */
    _Atomic uint32_t thread_epoch;   /* its thread records below hold it (shared/owners.h) */
    struct cw_stderr_id err;
    _Atomic uint32_t modules_gen;    /* the module list below: odd while being written */
    _Atomic uint32_t modules_len;
    /* Never zeroed: free unless of thread_epoch.  Right after the fields: a forked child's first
     * blocking call claims one, on the page of the fields it reads anyway (each page of the
     * region a child touches is a fault in that child). */
    struct cw_thread_rec threads[CW_MAX_THREADS];
    char modules[12288];             /* /proc/pid/maps lines of the loaded objects' segments */
    char exe[256];
    _Atomic uint32_t chunk[CW_MAX_CHUNKS]; /* pool chunk + 1 holding fds [c*CHUNK, (c+1)*CHUNK) */
    struct cw_spawn spawns[CW_MAX_SPAWNS];
    struct cw_crossed crossed[CW_MAX_SPAWNS][CW_SPAWN_SOCKS];
};

/* The control block at the start of the region.  Words that processes wait on are 32-bit
 * (futexes). */
struct cw_shared {
    uint64_t cookie;                /* random, per region */
    size_t size;
    struct cw_config cfg;
    _Atomic uint32_t watcher_state;
    _Atomic int32_t watcher_pid;
    /* The watcher's tid while it lives: the kernel sets FUTEX_OWNER_DIED here when it dies,
     * however it dies (its robust list names this word). */
    _Atomic uint32_t watcher_alive;
    _Atomic int64_t watcher_tick_ms; /* CLOCK_MONOTONIC of its last look */
    _Atomic uint32_t doorbell;       /* bumped, then woken, by a process that wants the watcher */
    _Atomic uint32_t quit;           /* the watcher must leave (a pids limit needs its pid) */
    _Atomic int thread_only;         /* orphans come back to the program: no watcher process */
    _Atomic uint32_t watcher_restarts; /* watchers started after one died (for the metrics) */
    _Atomic size_t arena_used;
    _Atomic uint32_t thread_epochs;  /* the last area thread epoch given */
    char watcher_error[200];
    _Atomic uint64_t area_map[CW_MAX_AREAS / 64];
    _Atomic uint64_t chunk_map[CW_POOL_CHUNKS / 64];
};

CW_HIDDEN extern struct cw_shared *cw_sh;
#define cw_me (cw_private.me) /* this process's area (NULL: none) */
CW_HIDDEN extern _Atomic uint64_t *cw_region_stack_index;
CW_HIDDEN extern unsigned char *cw_region_arena;

/* Areas and chunks by number (NULL when out of range). */
CW_HIDDEN struct cw_area *cw_area_at(unsigned i);
CW_HIDDEN int cw_area_index(const struct cw_area *a);
CW_HIDDEN struct cw_slot *cw_pool_slots(uint32_t chunk_plus_one);
CW_HIDDEN struct cw_peer *cw_pool_peers(uint32_t chunk_plus_one);
CW_HIDDEN struct cw_owner *cw_pool_owners(uint32_t chunk_plus_one);
/* A chunk from the pool (its number + 1), 0 if none is left. */
CW_HIDDEN uint32_t cw_pool_take(void);
CW_HIDDEN void cw_pool_give(uint32_t chunk_plus_one);
/* Give back an area and its chunks (the watcher, once its process is gone). */
CW_HIDDEN void cw_area_release(struct cw_area *a);
/* An empty area for a running process that another producer writes for (the eBPF front-end, for
 * a process it finds already running); NULL when none is left. */
CW_HIDDEN struct cw_area *cw_area_new_live(pid_t pid);

/* In the program: make the region (shared memory if it can, else private) and its first area. */
CW_HIDDEN int cw_region_create(void);
CW_HIDDEN int cw_region_is_shared(void);
/* A descriptor of the region's memfd for a watcher process (the program keeps none of ours
 * otherwise; closed by the caller).  -1 if none. */
CW_HIDDEN int cw_region_fd(void);
/* Around fork: the parent makes the child's area (a copy of its own), the child takes it. */
CW_HIDDEN void cw_region_fork_prepare(void);
CW_HIDDEN void cw_region_fork_parent(void);
CW_HIDDEN void cw_region_fork_child(void);
/* The parent, after the fork: the child's pid (< 0: the fork failed) and the stack of the fork
 * call (0: none), written into the child's area here: a page of the region the child would
 * otherwise fault in. */
CW_HIDDEN void cw_region_fork_result(pid_t child, uint32_t fork_stack);
/* The process changed credentials: the tree's region (and its watcher) are no longer its
 * business; take a region of its own holding its own area.  0 on success. */
CW_HIDDEN int cw_region_leave(void);
/* In the watcher process: map the region. */
CW_HIDDEN int cw_region_attach(int memfd);
CW_HIDDEN int cw_futex_wait(_Atomic uint32_t *word, uint32_t expected, int timeout_ms);
CW_HIDDEN void cw_futex_wake(_Atomic uint32_t *word);
/* Ring the watcher (async-signal-safe). */
CW_HIDDEN void cw_doorbell(void);

/* The chunk pointers of this process point into cw_me (fdtable.c, kernel.c). */
CW_HIDDEN void cw_table_repoint(void);
/* No table any more (a forked child that got no area of its own). */
CW_HIDDEN void cw_table_forget(void);
/* This process's area, taken now if a fork left it without one (NULL: none to be had). */
CW_HIDDEN struct cw_area *cw_region_late_area(void);

/* The area being looked at: in the watcher, the process it is reporting on; elsewhere this
 * process's own. */
CW_HIDDEN void cw_set_current_area(struct cw_area *a);
CW_HIDDEN struct cw_area *cw_current_area(void);
/* The pid whose sockets are being looked at: ours, or in the watcher the current area's. */
CW_HIDDEN pid_t cw_program_pid(void);
CW_HIDDEN pid_t cw_program_ppid(void);
#endif
