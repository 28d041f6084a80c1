/* The region shared by the program's hooks and the watcher process (region.c, helper.c). */
#ifndef CLOSEWAIT_REGION_H
#define CLOSEWAIT_REGION_H
#include "closewait.h"
#include "kernel.h"
#include "spawns.h"

#define CW_STACK_INDEX_SIZE (1u << 16)
#define CW_STACK_ARENA_BYTES (64u << 20)

enum { CW_HELPER_NONE, CW_HELPER_STARTING, CW_HELPER_READY, CW_HELPER_FAILED };

/* The control block at the start of the region.  Words the two processes wait on are 32-bit
 * (futexes). */
struct cw_shared {
    uint64_t cookie;                /* random: the helper tells an exec'd program by it */
    size_t size;
    unsigned nchunks;               /* descriptor-table chunks the region has room for */
    struct cw_config cfg;
    int watch_mode;
    _Atomic int32_t program_pid;
    _Atomic int32_t helper_pid;
    _Atomic unsigned long long helper_start; /* its start time, to tell a reused pid */
    _Atomic uint32_t helper_state;
    _Atomic uint32_t dump_req, dump_done;
    _Atomic uint32_t exit_req, exit_done;
    _Atomic int64_t open_now;       /* sockets held in CLOSE_WAIT now, after the last tick */
    _Atomic uint16_t fork_gen;
    _Atomic int any_tcp;
    _Atomic int chunk_limit;
    _Atomic int fd_high;            /* every slot ever written is below it */
    _Atomic int sink_fd, epoll_fd;  /* the program's numbers, for the helper to copy */
    _Atomic uint32_t epoll_generation;
    _Atomic int32_t fork_parent;
    _Atomic uint32_t fork_stack;
    _Atomic size_t arena_used;
    char helper_error[200];
    _Atomic uint8_t slot_chunk[CW_MAX_CHUNKS];
    _Atomic uint8_t peer_chunk[CW_MAX_CHUNKS];
    struct cw_spawn spawns[CW_MAX_SPAWNS];
};

CW_HIDDEN extern struct cw_shared *cw_sh;
CW_HIDDEN extern _Atomic uint64_t *cw_region_stack_index;
CW_HIDDEN extern unsigned char *cw_region_arena;
CW_HIDDEN extern struct cw_slot *cw_region_slots;
CW_HIDDEN extern struct cw_peer *cw_region_peers;
CW_HIDDEN extern struct cw_crossed *cw_region_crossed;

/* In the program: make the region (shared memory if it can, else private). */
CW_HIDDEN int cw_region_create(void);
/* A descriptor for the region, for a watcher process to map: the region is copied into a new
 * memfd put in its place (the program keeps no descriptor of ours meanwhile).  -1 if none. */
CW_HIDDEN int cw_region_share(void);
CW_HIDDEN int cw_region_is_shared(void);
/* Around fork: the parent copies, the child takes the copy (at the same address, *memfd its
 * descriptor), the parent drops it. */
CW_HIDDEN void cw_region_fork_prepare(void);
CW_HIDDEN void cw_region_fork_parent(void);
CW_HIDDEN int cw_region_fork_child(int *memfd);
/* In the helper: map the program's region (anywhere: it holds no pointers). */
CW_HIDDEN int cw_region_attach(int memfd, size_t size);
CW_HIDDEN int cw_futex_wait(_Atomic uint32_t *word, uint32_t expected, int timeout_ms);
CW_HIDDEN void cw_futex_wake(_Atomic uint32_t *word);

/* Forget this process's pointers into a region it no longer has (fdtable.c, kernel.c). */
CW_HIDDEN void cw_table_detach(void);
CW_HIDDEN void cw_peer_detach(void);

/* helper.c */
/* Start the watcher process; 0 when it runs (wait: for its first word, in the constructor). */
CW_HIDDEN int cw_helper_spawn(int memfd, int wait);
/* Is this process the watcher of another one? */
CW_HIDDEN extern int cw_is_helper;
CW_HIDDEN int cw_helper_running(void);
/* Are few pids left in the process's pids cgroup (a container's limit)? */
CW_HIDDEN int cw_helper_pids_tight(void);
/* Ask the helper for something and wait until it is done (bounded). */
CW_HIDDEN void cw_helper_request(_Atomic uint32_t *req, _Atomic uint32_t *done);
CW_HIDDEN void cw_helper_poke(void); /* async-signal-safe */
/* In the constructor: CLOSEWAIT_HELPER set means this process is a helper; never returns. */
CW_HIDDEN void cw_helper_main_if_asked(void);
/* The pid whose sockets are watched: ours, or in the helper the program's. */
CW_HIDDEN pid_t cw_program_pid(void);
/* In the helper: has the program exec'd (our region gone from its memory)? */
CW_HIDDEN int cw_helper_program_changed(void);
CW_HIDDEN pid_t cw_program_ppid(void);
#endif
