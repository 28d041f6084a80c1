/*
 * The program's loaded objects, written into its area as /proc/PID/maps lines, for the watcher
 * to name addresses with.  The watcher could read the program's own maps file only with
 * ptrace-class permission (refused for a non-dumpable worker, a container without
 * CAP_SYS_PTRACE, Yama), so the program says where its objects are itself: from
 * dl_iterate_phdr, without a descriptor.  Re-published when a newly stored stack runs through
 * code outside the known objects (something was dlopen'ed since).
 */
#define _GNU_SOURCE
#include "shared/region.h"
#include "shared/modules.h"

#include <link.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_RANGES 512
static struct {
    uintptr_t lo, hi;
} ranges[MAX_RANGES];
static _Atomic int nranges;
static _Atomic int publishing;
static char exe_path[256];
CW_HIDDEN _Atomic int cw_modules_jvm;

struct writer {
    char *out;
    size_t cap, n;
    int nr;
};

static int add_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct writer *w = data;
    const char *name = info->dlpi_name;
    if (name == NULL || name[0] == '\0') name = exe_path; /* the main program */
    if (name[0] != '/') return 0;                         /* the vDSO */
    size_t name_len = strlen(name);
    if (name_len >= 10 && strcmp(name + name_len - 10, "/libjvm.so") == 0) atomic_store(&cw_modules_jvm, 1);
    struct stat st;
    unsigned long dev_major = 0, dev_minor = 0, ino = 1;
    if (stat(name, &st) == 0) {
        dev_major = (unsigned long)((st.st_dev >> 8) & 0xfff);
        dev_minor = (unsigned long)((st.st_dev & 0xff) | ((st.st_dev >> 12) & 0xfff00));
        ino = (unsigned long)st.st_ino;
    }
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD) continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        uintptr_t hi = lo + ph->p_memsz;
        uintptr_t page = (uintptr_t)(lo & ~(uintptr_t)4095);
        uintptr_t off = (uintptr_t)(ph->p_offset - (lo - page));
        hi = (hi + 4095) & ~(uintptr_t)4095;
        char perms[5] = {(ph->p_flags & PF_R) ? 'r' : '-', (ph->p_flags & PF_W) ? 'w' : '-',
                         (ph->p_flags & PF_X) ? 'x' : '-', 'p', '\0'};
        if (w->n < w->cap) {
            int len = snprintf(w->out + w->n, w->cap - w->n, "%lx-%lx %s %08lx %02lx:%02lx %lu %s\n",
                               (unsigned long)page, (unsigned long)hi, perms, (unsigned long)off, dev_major,
                               dev_minor, ino, name);
            if (len > 0 && w->n + (size_t)len < w->cap) w->n += (size_t)len;
            else w->n = w->cap; /* full: what fits is kept */
        }
        if ((ph->p_flags & PF_X) && w->nr < MAX_RANGES) {
            ranges[w->nr].lo = page;
            ranges[w->nr].hi = hi;
            w->nr++;
        }
    }
    return 0;
}

/* The loader's count of objects loaded and unloaded so far. */
static int load_count(struct dl_phdr_info *info, size_t size, void *data)
{
    unsigned long long *out = data;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs)
        *out = (unsigned long long)info->dlpi_adds * 1000003ull + (unsigned long long)info->dlpi_subs;
    return 1;
}
static unsigned long long published_count;

void cw_modules_publish(void)
{
    struct cw_area *me = cw_me;
    if (me == NULL) return;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&publishing, &expected, 1)) return;
    if (exe_path[0] == '\0') {
        ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
        exe_path[n > 0 ? n : 0] = '\0';
        memcpy(me->exe, exe_path, sizeof me->exe);
    }
    uint32_t gen = atomic_load(&me->modules_gen);
    atomic_store(&me->modules_gen, gen | 1u);
    if (published_count == 0) dl_iterate_phdr(load_count, &published_count);
    struct writer w = {me->modules, sizeof me->modules, 0, 0};
    atomic_store(&nranges, 0);
    dl_iterate_phdr(add_object, &w);
    if (w.n >= w.cap) w.n = w.cap - 1;
    me->modules[w.n] = '\0';
    atomic_store(&me->modules_len, (uint32_t)w.n);
    atomic_store(&nranges, w.nr);
    atomic_store(&me->modules_gen, (gen | 1u) + 1u);
    atomic_store(&publishing, 0);
}


void cw_modules_cover(const uintptr_t *pcs, int n)
{
    int nr = atomic_load(&nranges);
    for (int i = 0; i < n; i++) {
        int known = 0;
        for (int k = 0; k < nr && !known; k++) known = pcs[i] >= ranges[k].lo && pcs[i] < ranges[k].hi;
        if (!known) {
            /* JIT code is in no object: publish again only if the objects changed. */
            unsigned long long count = 0;
            dl_iterate_phdr(load_count, &count);
            if (count != published_count || count == 0) {
                published_count = count;
                cw_modules_publish();
            }
            return;
        }
    }
}
