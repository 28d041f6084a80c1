/* Sockets that crossed into children that exec'd (a forked child that did not is watched
 * through its own area). */
#define _GNU_SOURCE
#include "watcher/internal.h"

/* Does process pid hold socket inode?  Returns its fd there, or -1 (also when /proc/PID/fd may
 * not be read: then the spawn record's pid is all there is to say). */
static int fd_in_process(pid_t pid, uint64_t inode)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/fd", (long)pid);
    DIR *d = opendir(dir);
    if (d == NULL) return -1;
    char want[64];
    int wlen = snprintf(want, sizeof want, "socket:[%llu]", (unsigned long long)inode);
    int found = -1;
    struct dirent *e;
    while (found < 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[384], target[64];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(path, target, sizeof target);
        if (n == wlen && memcmp(target, want, (size_t)n) == 0) found = atoi(e->d_name);
    }
    closedir(d);
    return found;
}

/* Who holds the socket, when libc did not tell us whom it spawned (system, popen, a daemonizing
 * grandchild): a walk of /proc, where /proc lets us look; 0 if none is found. */
static pid_t find_holder(uint64_t inode, int *fd)
{
    DIR *d = opendir("/proc");
    if (d == NULL) return 0;
    pid_t holder = 0;
    struct dirent *e;
    while (holder == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid == getpid() || cw_watch_pid_watched(pid)) continue;
        if ((*fd = fd_in_process(pid, inode)) >= 0) holder = pid;
    }
    closedir(d);
    return holder;
}

void cw_watch_children(int64_t now)
{
    struct cw_area *a = P->area;
    for (int i = 0; i < CW_MAX_SPAWNS; i++) {
        struct cw_spawn *r = &a->spawns[i];
        int expected = 2;
        /* hold the record (state 1) so that a spawn on another thread does not reuse it */
        if (!atomic_compare_exchange_strong(&r->state, &expected, 1)) continue;
        size_t nsocks = r->nsocks < CW_SPAWN_SOCKS ? r->nsocks : CW_SPAWN_SOCKS;
        pid_t child = r->child;
        for (size_t k = 0; k < nsocks; k++) {
            struct cw_crossed *c = &a->crossed[i][k];
            if (c->w_done) continue;
            int ambiguous = 0;
            const struct cw_sock *ks = cw_dump_find_id(&dump, c->id, &ambiguous);
            if (ambiguous) continue;
            if (!cw_sock_closing_held(ks)) {
                c->w_fin_ms = 0;
                continue;
            }
            if (c->w_fin_ms == 0) c->w_fin_ms = cw_fin_dated(ks, now, c->open_ms);
            if (now - c->w_fin_ms < cw_cfg.grace_ms) continue;
            /* Ours still: our own report covers it; a forked child we watch: its own does. */
            if (cw_proc_fds_of_socket(c->id, -1, NULL, 1) > 0) continue;
            if (child > 0 && cw_watch_pid_watched(child)) continue;
            if (!cw_watch_id_unique(c->id, now)) continue;
            c->w_done = 1;
            if (cw_reported_anywhere(c->id)) continue;
            int child_fd = -1;
            pid_t holder = child > 0 ? child : find_holder(ks->inode, &child_fd);
            if (child > 0) child_fd = fd_in_process(child, ks->inode);
            char local[64], peer[64];
            cw_sock_ends(ks, local, peer, sizeof local);
            struct observed o = {
                .fd = child_fd,
                .id = c->id,
                .open_stack = c->open_stack,
                .open_ms = c->open_ms,
                .fin_ms = c->w_fin_ms,
                .opened_by = c->opened_by,
                .state = ks != NULL ? ks->state : TCPS_CLOSE_WAIT,
                .reason = REASON_INHERITED,
                .local = local,
                .peer = peer,
                .holder = holder > 0 ? holder : -1,
                .spawn_stack = r->stack,
                .spawn_kind = r->kind,
            };
            if (cw_watch_suppressed(o.open_stack, o.lang_open)) {
                P->total_suppressed++;
                continue;
            }
            cw_finding_leak(&o, now);
        }
        atomic_store(&r->state, 2);
    }
}
