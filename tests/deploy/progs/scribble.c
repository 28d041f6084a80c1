/*
 * A hostile worker beside a leaking parent.  The root parent listens on 127.0.0.1 and forks a
 * worker that becomes nobody and, for SECONDS, overwrites with random bytes every writable
 * MAP_SHARED mapping whose /proc/self/maps name contains "memfd:closewait" (the resident pages of
 * each, found with mincore, and always its first page: the memory is sparse and may be large).
 * Meanwhile the parent accepts 2 connections in leak_here() and never reads or closes them.  The
 * parent then reaps the worker and waits for stdin's EOF.
 *
 *   scribble SECONDS
 * Lines: PORT n / WORKER pid / DROPPED ... / SCRIBBLING / SCRIBBLED maps=.. bytes=.. faults=.. /
 *        ACCEPT L fd peerport / REAPED status / EXIT
 */
#include "common.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

__attribute__((noinline)) static int leak_here(int lfd)
{
    int fd = accept(lfd, NULL, NULL);
    __asm__ volatile("" ::: "memory");
    return fd;
}

static sigjmp_buf fault_jmp;
static void on_fault(int sig)
{
    siglongjmp(fault_jmp, sig);
}

static unsigned long long rng = 88172645463325252ULL;
static unsigned long long next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned long long bytes, faults;
static unsigned maps_seen;

/* Random words over one page; a fault (the memory was shrunk under us) skips it. */
static void scribble_page(unsigned char *page, size_t len)
{
    if (sigsetjmp(fault_jmp, 1) != 0) {
        faults++;
        return;
    }
    for (size_t off = 0; off + 8 <= len; off += 8) {
        unsigned long long v = next_random();
        memcpy(page + off, &v, 8);
    }
    bytes += len;
}

static void scribble_mapping(unsigned char *start, unsigned char *end)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (size_t)(end - start) / page;
    unsigned char vec[4096];
    for (size_t first = 0; first < pages; first += sizeof vec) {
        size_t n = pages - first < sizeof vec ? pages - first : sizeof vec;
        if (mincore(start + first * page, n * page, vec) != 0) memset(vec, 0, n);
        for (size_t i = 0; i < n; i++)
            if ((vec[i] & 1) || first + i == 0) scribble_page(start + (first + i) * page, page);
    }
}

static void scribble_all(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL) return;
    struct { unsigned long a, b; } found[64];
    unsigned nfound = 0;
    char line[1024];
    while (fgets(line, sizeof line, f) != NULL && nfound < 64) {
        unsigned long a, b;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) != 3) continue;
        if (strstr(line, "memfd:closewait") == NULL) continue;
        if (perms[1] != 'w' || perms[3] != 's') continue;
        found[nfound].a = a;
        found[nfound].b = b;
        nfound++;
    }
    fclose(f);
    if (nfound > maps_seen) maps_seen = nfound;
    for (unsigned i = 0; i < nfound; i++)
        scribble_mapping((unsigned char *)found[i].a, (unsigned char *)found[i].b); /* NOLINT */
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    int lfd = listen_local();
    pid_t worker = fork();
    if (worker < 0) die("fork");
    if (worker == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(lfd);
        drop_to_nobody();
        rng ^= (unsigned long long)getpid() * 2654435761ULL ^ (unsigned long long)time(NULL);
        struct sigaction sa = {.sa_handler = on_fault};
        sigaction(SIGSEGV, &sa, NULL);
        sigaction(SIGBUS, &sa, NULL);
        say("SCRIBBLING");
        double end = now_s() + seconds;
        while (now_s() < end) scribble_all();
        say("SCRIBBLED maps=%u bytes=%llu faults=%llu", maps_seen, bytes, faults);
        _exit(0);
    }
    say("WORKER %d", (int)worker);
    for (int i = 0; i < 2; i++) {
        int fd = leak_here(lfd);
        if (fd < 0) die("accept");
        say("ACCEPT L %d %d", fd, peer_port(fd));
    }
    int status = 0;
    while (waitpid(worker, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    say("REAPED %d", status);
    wait_stdin_eof();
    say("EXIT");
    return 0;
}
