/*
 * pc -> module, function, file:line, inlined frames.  elfutils' libdwfl does the DWARF work (it
 * also finds separate debug files under /usr/lib/debug/.build-id); it is dlopen'ed by the
 * watcher the first time a report needs it, so a process that never leaks never loads it, and
 * a machine without libdw1 still gets module+offset and ELF symbol names from dladdr.
 * Results are cached by pc: a stack seen again costs a hash lookup.
 */
#define _GNU_SOURCE
#include "unwind/symbolize.h"
#include "unwind/gopclntab.h"
#include "unwind/stacks.h"
#include "shared/region.h"

#include <dlfcn.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#define DW(fn) static __typeof__(fn) *p_##fn
DW(dwfl_begin);
DW(dwfl_end);
DW(dwfl_linux_proc_maps_report);
DW(dwfl_report_end);
DW(dwfl_addrmodule);
DW(dwfl_module_addrinfo);
DW(dwfl_module_getsrc);
DW(dwfl_lineinfo);
DW(dwfl_module_info);
DW(dwfl_module_build_id);
DW(dwfl_module_getelf);
DW(dwfl_module_addrdie);
DW(dwfl_linux_proc_find_elf);
DW(dwfl_standard_find_debuginfo);
DW(dwarf_getscopes);
DW(dwarf_getscopes_die);
DW(dwarf_tag);
DW(dwarf_diename);
DW(dwarf_attr_integrate);
DW(dwarf_formudata);
DW(dwarf_formstring);
DW(dwarf_getsrcfiles);
DW(dwarf_filesrc);
DW(dwfl_module_getdwarf);
DW(dwarf_nextcu);
DW(dwarf_offdie);
DW(dwarf_haspc);
DW(dwarf_getsrc_die);
DW(dwarf_linesrc);
DW(dwarf_lineno);
DW(dwarf_child);
DW(dwarf_siblingof);
#undef DW

static int dw_state; /* 0 untried, 1 ready, -1 unavailable */
static Dwfl *dwfl;
static Dwfl_Callbacks callbacks;
static char *(*demangle)(const char *, char *, size_t *, int *);

static int load_libdw(void)
{
    if (dw_state != 0) return dw_state;
    void *h = dlopen("libdw.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        /* Not installed: for good.  No descriptor to open it with: next time. */
        const char *err = dlerror();
        if (err == NULL || strstr(err, "Too many open files") == NULL) dw_state = -1;
        return -1;
    }
    dw_state = -1;
#define LOAD(fn)                                                                               \
    do {                                                                                       \
        p_##fn = (__typeof__(fn) *)dlsym(h, #fn);                                              \
        if (p_##fn == NULL) return dw_state;                                                   \
    } while (0)
    LOAD(dwfl_begin);
    LOAD(dwfl_end);
    LOAD(dwfl_linux_proc_maps_report);
    LOAD(dwfl_report_end);
    LOAD(dwfl_addrmodule);
    LOAD(dwfl_module_addrinfo);
    LOAD(dwfl_module_getsrc);
    LOAD(dwfl_lineinfo);
    LOAD(dwfl_module_info);
    LOAD(dwfl_module_build_id);
    LOAD(dwfl_module_getelf);
    LOAD(dwfl_module_addrdie);
    LOAD(dwfl_linux_proc_find_elf);
    LOAD(dwfl_standard_find_debuginfo);
    LOAD(dwarf_getscopes);
    LOAD(dwarf_getscopes_die);
    LOAD(dwarf_tag);
    LOAD(dwarf_diename);
    LOAD(dwarf_attr_integrate);
    LOAD(dwarf_formudata);
    LOAD(dwarf_formstring);
    LOAD(dwarf_getsrcfiles);
    LOAD(dwarf_filesrc);
    LOAD(dwfl_module_getdwarf);
    LOAD(dwarf_nextcu);
    LOAD(dwarf_offdie);
    LOAD(dwarf_haspc);
    LOAD(dwarf_getsrc_die);
    LOAD(dwarf_linesrc);
    LOAD(dwarf_lineno);
    LOAD(dwarf_child);
    LOAD(dwarf_siblingof);
#undef LOAD
    callbacks.find_elf = p_dwfl_linux_proc_find_elf;
    callbacks.find_debuginfo = p_dwfl_standard_find_debuginfo;
    dw_state = 1;
    return dw_state;
}

/* The current process's module list, as it published it (modules.c): a copy, checked, in
 * `text`; its length, 0 if there is none. */
static char modules_text[sizeof(((struct cw_area *)0)->modules) + 1];
static size_t modules_copy(void)
{
    struct cw_area *a = cw_current_area();
    if (a == NULL) return 0;
    for (int tries = 0; tries < 4; tries++) {
        uint32_t gen = atomic_load_explicit(&a->modules_gen, memory_order_acquire);
        uint32_t len = atomic_load_explicit(&a->modules_len, memory_order_relaxed);
        if ((gen & 1u) || len >= sizeof a->modules) continue;
        memcpy(modules_text, a->modules, len);
        modules_text[len] = '\0';
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&a->modules_gen, memory_order_relaxed) == gen) return len;
    }
    modules_text[0] = '\0';
    return 0;
}

static uint64_t dwfl_modules_hash;

static Dwfl *get_dwfl(void)
{
    size_t len = modules_copy();
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)modules_text[i]) * 0x100000001b3ull;
    if (dwfl != NULL && h == dwfl_modules_hash) return dwfl;
    cw_symbolize_refresh();
    if (len == 0 || load_libdw() != 1) return NULL;
    dwfl = p_dwfl_begin(&callbacks);
    if (dwfl == NULL) {
        return NULL;
    }
    /* The program's objects as it published them: no /proc/PID/maps, which only ptrace-class
     * permission may read. */
    FILE *maps = fmemopen(modules_text, len, "r");
    if (maps == NULL || p_dwfl_linux_proc_maps_report(dwfl, maps) != 0) {
        if (maps != NULL) fclose(maps);
        p_dwfl_end(dwfl);
        dwfl = NULL;
        return NULL;
    }
    fclose(maps);
    p_dwfl_report_end(dwfl, NULL, NULL);
    dwfl_modules_hash = h;
    return dwfl;
}

/* ---- cache ------------------------------------------------------------- */

struct cached {
    uintptr_t pc;
    int innermost;
    int n;
    struct cw_frame *frames;
};
static struct cached *cache;
static size_t cache_cap, cache_count;

static const char *intern(const char *s)
{
    /* Strings live as long as the cache; a small table of distinct names keeps duplicates out. */
    static char **names;
    static size_t cap, count;
    if (s == NULL) return NULL;
    uint64_t h = 1469598103934665603ull;
    for (const char *p = s; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    if ((count + 1) * 2 > cap) {
        size_t ncap = cap ? cap * 2 : 1024;
        char **nn = calloc(ncap, sizeof *nn);
        if (nn == NULL) return NULL;
        for (size_t i = 0; i < cap; i++) {
            if (names[i] == NULL) continue;
            uint64_t g = 1469598103934665603ull;
            for (const char *p = names[i]; *p; p++) g = (g ^ (unsigned char)*p) * 1099511628211ull;
            size_t j = g & (ncap - 1);
            while (nn[j] != NULL) j = (j + 1) & (ncap - 1);
            nn[j] = names[i];
        }
        free(names);
        names = nn;
        cap = ncap;
    }
    size_t i = h & (cap - 1);
    while (names[i] != NULL) {
        if (strcmp(names[i], s) == 0) return names[i];
        i = (i + 1) & (cap - 1);
    }
    names[i] = strdup(s);
    if (names[i] != NULL) count++;
    return names[i];
}

static struct cached *cache_find(uintptr_t pc, int innermost, int insert)
{
    if ((cache_count + 1) * 2 > cache_cap) {
        if (!insert) {
            if (cache_cap == 0) return NULL;
        } else {
            size_t ncap = cache_cap ? cache_cap * 2 : 1024;
            struct cached *nc = calloc(ncap, sizeof *nc);
            if (nc == NULL) return NULL;
            for (size_t i = 0; i < cache_cap; i++) {
                if (cache[i].pc == 0) continue;
                size_t j = (size_t)((cache[i].pc * 0x9e3779b97f4a7c15ull) >> 20) & (ncap - 1);
                while (nc[j].pc != 0) j = (j + 1) & (ncap - 1);
                nc[j] = cache[i];
            }
            free(cache);
            cache = nc;
            cache_cap = ncap;
        }
    }
    size_t i = (size_t)((pc * 0x9e3779b97f4a7c15ull) >> 20) & (cache_cap - 1);
    while (cache[i].pc != 0) {
        if (cache[i].pc == pc && cache[i].innermost == innermost) return &cache[i];
        i = (i + 1) & (cache_cap - 1);
    }
    if (!insert) return NULL;
    cache[i].pc = pc;
    cache[i].innermost = innermost;
    cache_count++;
    return &cache[i];
}

void cw_symbolize_refresh(void)
{
    if (dwfl != NULL) {
        p_dwfl_end(dwfl);
        dwfl = NULL;
    }
}

void cw_symbolize_release(void)
{
    cw_symbolize_refresh();
}

static const char *demangled(const char *name)
{
    /* "memcpy@@GLIBC_2.14": the symbol version is noise in a report */
    const char *at = name != NULL ? strchr(name, '@') : NULL;
    char plain[512];
    if (at != NULL && at != name && (size_t)(at - name) < sizeof plain) {
        memcpy(plain, name, (size_t)(at - name));
        plain[at - name] = '\0';
        name = plain;
    }
    if (name == NULL || name[0] != '_' || name[1] != 'Z') return intern(name);
    if (demangle == NULL) {
        void *sym = dlsym(RTLD_DEFAULT, "__cxa_demangle");
        /* The watcher process is not a C++ program: bring the demangler in. */
        void *lib = sym == NULL ? dlopen("libstdc++.so.6", RTLD_NOW | RTLD_LOCAL) : NULL;
        if (lib != NULL) sym = dlsym(lib, "__cxa_demangle");
        demangle = (char *(*)(const char *, char *, size_t *, int *))sym;
    }
    if (demangle == NULL) return intern(name);
    int status = 0;
    char *d = demangle(name, NULL, NULL, &status);
    if (d == NULL || status != 0) return intern(name);
    const char *r = intern(d);
    free(d);
    return r;
}

static const char *die_function_name(Dwarf_Die *die)
{
    Dwarf_Attribute attr;
    const char *linkage = NULL;
    if (p_dwarf_attr_integrate(die, DW_AT_linkage_name, &attr) != NULL ||
        p_dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &attr) != NULL)
        linkage = p_dwarf_formstring(&attr);
    if (linkage != NULL) return demangled(linkage);
    if (p_dwarf_attr_integrate(die, DW_AT_name, &attr) != NULL) return intern(p_dwarf_formstring(&attr));
    return NULL;
}

static const char *hex_build_id(Dwfl_Module *mod)
{
    const unsigned char *bits;
    GElf_Addr vaddr;
    int len = p_dwfl_module_build_id(mod, &bits, &vaddr);
    if (len <= 0 || len > 64) return NULL;
    char hex[130];
    for (int i = 0; i < len; i++) snprintf(hex + 2 * (size_t)i, 3, "%02x", bits[i]);
    return intern(hex);
}

/* The compilation unit holding addr, by each unit's own ranges: for objects without
 * .debug_aranges (Go's), where libdw before 0.189 finds no unit at all. */
static int cu_by_ranges(Dwfl_Module *mod, uintptr_t lookup, Dwarf_Die *cu, Dwarf_Addr *bias)
{
    Dwarf *dw = p_dwfl_module_getdwarf(mod, bias);
    if (dw == NULL) return 0;
    Dwarf_Off off = 0, next;
    size_t header = 0;
    for (int units = 0; units < 100000 && p_dwarf_nextcu(dw, off, &next, &header, NULL, NULL, NULL) == 0; units++) {
        if (p_dwarf_offdie(dw, off + header, cu) != NULL && p_dwarf_haspc(cu, lookup - *bias) > 0) return 1;
        off = next;
    }
    return 0;
}

/* The function at addr and the calls inlined into it that hold addr, innermost first, found by
 * walking the unit's tree: dwarf_getscopes() gives up on units it cannot take a base address
 * from (Go's: "no address value").  A malloc'ed array and its length, 0 if none. */
static int scopes_by_hand(Dwarf_Die *cu, Dwarf_Addr addr, Dwarf_Die **out)
{
    Dwarf_Die chain[32], cur = *cu, child;
    int n = 0;
    for (int depth = 0; depth < 64 && n < 32 && p_dwarf_child(&cur, &child) == 0; depth++) {
        int found = 0;
        do {
            int tag = p_dwarf_tag(&child);
            if ((tag == DW_TAG_subprogram || tag == DW_TAG_inlined_subroutine || tag == DW_TAG_lexical_block) &&
                p_dwarf_haspc(&child, addr) > 0) {
                if (tag != DW_TAG_lexical_block) chain[n++] = child;
                cur = child;
                found = 1;
            }
        } while (!found && p_dwarf_siblingof(&child, &child) == 0);
        if (!found) break;
    }
    if (n == 0 || (*out = malloc((size_t)n * sizeof **out)) == NULL) return 0;
    for (int i = 0; i < n; i++) (*out)[i] = chain[n - 1 - i];
    return n;
}

/* With libdw: ELF symbol (static functions too), line table and inline chain. */
static int symbolize_dwfl(uintptr_t pc, uintptr_t lookup, struct cw_frame *out, int max)
{
    Dwfl *d = get_dwfl();
    if (d == NULL) return -1;
    Dwfl_Module *mod = p_dwfl_addrmodule(d, lookup);
    if (mod == NULL) {
        cw_symbolize_refresh(); /* a library loaded since we last looked */
        d = get_dwfl();
        if (d == NULL) return -1;
        mod = p_dwfl_addrmodule(d, lookup);
        if (mod == NULL) return -1;
    }
    GElf_Addr bias = 0;
    if (p_dwfl_module_getelf(mod, &bias) == NULL) {
        /* The module's file could not be opened (EMFILE?): libdw remembers that failure, so
         * start again later with a fresh view. */
        cw_symbolize_refresh();
        return -1;
    }
    const char *modname = NULL, *mainfile = NULL;
    p_dwfl_module_info(mod, NULL, NULL, NULL, NULL, NULL, &mainfile, NULL);
    /* The name is the path in /proc/self/maps (the object the program loaded), not the
     * separate debug file the symbols may have come from. */
    modname = p_dwfl_module_info(mod, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

    struct cw_frame base = {0};
    base.pc = pc;
    base.offset = pc - (uintptr_t)bias;
    base.module = intern(modname != NULL && modname[0] == '/' ? modname : mainfile != NULL ? mainfile : modname);
    base.build_id = hex_build_id(mod);

    GElf_Off off;
    GElf_Sym sym;
    off = 0;
    base.function = demangled(p_dwfl_module_addrinfo(mod, lookup, &off, &sym, NULL, NULL, NULL));
    base.sym_off = base.function != NULL ? (uintptr_t)off : (uintptr_t)-1;
    if (base.function == NULL && base.module != NULL && base.module[0] == '/') {
        /* A Go binary without symbols nor DWARF: the runtime's own table names it. */
        const char *fn = NULL, *fl = NULL;
        int ln = 0;
        if (cw_gopclntab_lookup(base.module, (uint64_t)(lookup - (uintptr_t)bias), &fn, &fl, &ln) == 0) {
            base.function = intern(fn);
            base.file = intern(fl);
            base.line = ln;
        }
    }
    Dwfl_Line *line = p_dwfl_module_getsrc(mod, lookup);
    if (line != NULL) {
        int lineno = 0;
        const char *file = p_dwfl_lineinfo(line, NULL, &lineno, NULL, NULL, NULL);
        base.file = intern(file);
        base.line = lineno;
    }
    Dwarf_Die ranged_cu;
    Dwarf_Addr ranged_bias = 0;
    int ranged = line == NULL && cu_by_ranges(mod, lookup, &ranged_cu, &ranged_bias);
    if (ranged) {
        Dwarf_Line *l = p_dwarf_getsrc_die(&ranged_cu, lookup - ranged_bias);
        int lineno = 0;
        if (l != NULL && p_dwarf_lineno(l, &lineno) == 0) {
            base.file = intern(p_dwarf_linesrc(l, NULL, NULL));
            base.line = lineno;
        }
    }

    /* Inlined calls: each DW_TAG_inlined_subroutine scope is a frame whose caller's location is
     * its DW_AT_call_file:DW_AT_call_line. */
    Dwarf_Addr cubias = 0;
    Dwarf_Die *cudie = p_dwfl_module_addrdie(mod, lookup, &cubias);
    if (cudie == NULL && ranged) {
        cudie = &ranged_cu;
        cubias = ranged_bias;
    }
    Dwarf_Die *scopes = NULL;
    int nscopes = cudie != NULL ? p_dwarf_getscopes(cudie, lookup - cubias, &scopes) : 0;
    if (nscopes > 0) {
        /* dwarf_getscopes() follows an inlined call into the callee's abstract definition, so
         * the scopes past it are the callee's, not the caller's.  The chain of the innermost
         * concrete DIE itself leads out through the function it was inlined into (as
         * eu-addr2line -i does). */
        Dwarf_Die innermost = scopes[0];
        Dwarf_Die *chain = NULL;
        int nchain = p_dwarf_getscopes_die(&innermost, &chain);
        if (nchain > 0) {
            free(scopes);
            scopes = chain;
            nscopes = nchain;
        }
    }
    if (nscopes <= 0 && cudie != NULL) nscopes = scopes_by_hand(cudie, lookup - cubias, &scopes);
    int n = 0;
    if (nscopes > 0) {
        Dwarf_Files *files = NULL;
        size_t nfiles = 0;
        p_dwarf_getsrcfiles(cudie, &files, &nfiles);
        const char *file = base.file;
        int lineno = base.line;
        for (int i = 0; i < nscopes && n < max; i++) {
            int tag = p_dwarf_tag(&scopes[i]);
            if (tag != DW_TAG_inlined_subroutine && tag != DW_TAG_subprogram) continue;
            struct cw_frame f = base;
            f.function = die_function_name(&scopes[i]);
            if (tag == DW_TAG_subprogram && base.function != NULL) f.function = base.function;
            f.file = file;
            f.line = lineno;
            f.inlined = tag == DW_TAG_inlined_subroutine;
            out[n++] = f;
            if (tag == DW_TAG_subprogram) break;
            Dwarf_Attribute attr;
            Dwarf_Word w;
            file = NULL;
            lineno = 0;
            if (p_dwarf_attr_integrate(&scopes[i], DW_AT_call_file, &attr) != NULL &&
                p_dwarf_formudata(&attr, &w) == 0 && files != NULL)
                file = intern(p_dwarf_filesrc(files, w, NULL, NULL));
            if (p_dwarf_attr_integrate(&scopes[i], DW_AT_call_line, &attr) != NULL &&
                p_dwarf_formudata(&attr, &w) == 0)
                lineno = (int)w;
        }
        free(scopes);
    }
    if (n == 0) out[n++] = base;
    return n;
}

/* The published module line that holds addr: its start, file offset and path. */
static int module_of(uintptr_t addr, uintptr_t *lo_out, uintptr_t *off_out, char *path, size_t cap)
{
    size_t len = modules_copy();
    const char *p = modules_text, *end = modules_text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL) nl = end;
        unsigned long lo, hi, off;
        int name_at = 0;
        char line[512];
        size_t ll = (size_t)(nl - p) < sizeof line - 1 ? (size_t)(nl - p) : sizeof line - 1;
        memcpy(line, p, ll);
        line[ll] = '\0';
        p = nl + 1;
        if (sscanf(line, "%lx-%lx %*s %lx %*s %*s %n", &lo, &hi, &off, &name_at) < 3 || name_at == 0) continue;
        if (addr < lo || addr >= hi || line[name_at] != '/') continue;
        *lo_out = lo;
        *off_out = off;
        snprintf(path, cap, "%s", line + name_at);
        return 0;
    }
    return -1;
}

/* Without libdw: the module and the offset (file offset and virtual address agree for the code
 * of PIE programs and shared objects), but no names. */
static int symbolize_maps(uintptr_t pc, uintptr_t lookup, struct cw_frame *out)
{
    struct cw_frame f = {0};
    f.pc = pc;
    f.offset = pc;
    f.sym_off = (uintptr_t)-1;
    uintptr_t lo = 0, off = 0;
    char path[512];
    if (module_of(lookup, &lo, &off, path, sizeof path) == 0) {
        f.module = intern(path);
        f.offset = pc - lo + off;
    }
    out[0] = f;
    return 1;
}

/* Without libdw: dladdr gives the module, its load bias and exported names. */
static int symbolize_dladdr(uintptr_t pc, uintptr_t lookup, struct cw_frame *out, int with_names)
{
    if (cw_in_watcher_process || cw_current_area() != cw_me) return symbolize_maps(pc, lookup, out);
    struct cw_frame f = {0};
    f.pc = pc;
    Dl_info info;
    struct link_map *lm = NULL;
    if (dladdr1((void *)lookup, &info, /* NOLINT(performance-no-int-to-ptr) */ (void **)&lm, RTLD_DL_LINKMAP) != 0) {
        uintptr_t bias = lm != NULL ? (uintptr_t)lm->l_addr : (uintptr_t)info.dli_fbase;
        f.offset = pc - bias;
        /* The main program's link_map name is "" and dladdr reports argv[0] for it, which may be
         * relative: name it by /proc/self/exe. */
        const char *name = lm != NULL ? lm->l_name : info.dli_fname;
        if (name == NULL || name[0] != '/') {
            static char exe[512];
            ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
            if (len > 0) {
                exe[len] = '\0';
                name = exe;
            }
        }
        f.module = intern(name);
        if (with_names) f.function = demangled(info.dli_sname);
        f.sym_off = info.dli_saddr != NULL ? lookup - (uintptr_t)info.dli_saddr : (uintptr_t)-1;
    } else {
        f.offset = pc;
        f.sym_off = (uintptr_t)-1;
    }
    out[0] = f;
    return 1;
}

/* Reads code bytes from the object's file, not from the program's memory (which only
 * ptrace-class permission may read), without trusting the address: a frame from a broken unwind
 * (JIT code) or bytes that only look like a call must not fault the watcher. */
static int read_code(uintptr_t addr, void *dst, size_t len)
{
    uintptr_t lo = 0, off = 0;
    char path[512];
    if (module_of(addr, &lo, &off, path, sizeof path) != 0) return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = pread(fd, dst, len, (off_t)(addr - lo + off));
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

int cw_tail_call_frame(uintptr_t ret_addr, struct cw_frame *out)
{
    /* call rel32: e8 xx xx xx xx, ending at the return address. */
    unsigned char insn[5];
    if (ret_addr < 4096 || read_code(ret_addr - 5, insn, sizeof insn) != 0 || insn[0] != 0xe8) return 0;
    int32_t rel;
    memcpy(&rel, insn + 1, sizeof rel);
    uintptr_t target = ret_addr + (uintptr_t)(intptr_t)rel;
    /* A PLT stub is [endbr64] [bnd] jmp *GOT(%rip): a call to the hooked function itself. */
    unsigned char code[8];
    if (read_code(target, code, sizeof code) != 0) return 0;
    const unsigned char *t = code;
    if (t[0] == 0xf3 && t[1] == 0x0f && t[2] == 0x1e && t[3] == 0xfa) t += 4;
    if (t[0] == 0xf2) t++;
    if (t[0] == 0xff && t[1] == 0x25) return 0;
    struct cw_frame f[16];
    int n = cw_symbolize(target, 1, f, 16);
    if (n <= 0) return 0;
    struct cw_frame *entry = &f[n - 1];
    /* With names, a real function is entered at its first byte; without them (symbolizing
     * off, or a stripped module), the PLT test above has to do. */
    if (entry->function != NULL && (entry->sym_off != 0 || strstr(entry->function, "@plt") != NULL))
        return 0;
    if (entry->module == NULL) return 0;
    *out = *entry;
    out->inlined = 0;
    out->tail_call = 1;
    return 1;
}

int cw_symbolize(uintptr_t pc, int innermost, struct cw_frame *out, int max)
{
    if (max <= 0) return 0;
    struct cached *c = cache_find(pc, innermost, 0);
    if (c != NULL && c->frames != NULL) {
        int n = c->n < max ? c->n : max;
        memcpy(out, c->frames, (size_t)n * sizeof *out);
        return n;
    }
    /* A return address points after the call; the call itself is one byte earlier. */
    uintptr_t lookup = innermost ? pc : pc - 1;
    struct cw_frame tmp[16];
    int n = -1;
    if (cw_cfg.symbolize) n = symbolize_dwfl(pc, lookup, tmp, 16);
    if (n <= 0) n = symbolize_dladdr(pc, lookup, tmp, cw_cfg.symbolize);
    /* libdw is there but could not work just now: keep nothing, try again later. */
    int transient = cw_cfg.symbolize && dw_state != -1 && dwfl == NULL;
    c = transient ? NULL : cache_find(pc, innermost, 1);
    if (c != NULL) {
        c->frames = malloc((size_t)n * sizeof *tmp);
        if (c->frames != NULL) {
            memcpy(c->frames, tmp, (size_t)n * sizeof *tmp);
            c->n = n;
        }
    }
    if (n > max) n = max;
    memcpy(out, tmp, (size_t)n * sizeof *out);
    return n;
}
