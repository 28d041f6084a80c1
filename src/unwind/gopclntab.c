/*
 * Go's own table of functions, files and lines (.gopclntab), read from the binary's file: what
 * names a pc in a Go binary built without symbols nor DWARF (`-ldflags=-s -w`, most container
 * images), where libdw finds nothing.  The runtime keeps this table for its own tracebacks, so
 * every Go binary has it.  Formats of Go 1.18 and later (magic 0xfffffff0, 0xfffffff1); no
 * inlined frames from it (the innermost function of a pc's inline tree is not unpacked: a pc in
 * inlined code is named by the function it was inlined into, at the inlined code's file:line).
 *
 * The file is the program's: every offset and length read from it is checked.
 */
#define _GNU_SOURCE
#include "unwind/gopclntab.h"

#include <elf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TABLE (256u << 20)

struct table {
    char path[512];
    uint64_t dev, ino;
    unsigned char *data;
    size_t size;
    uint64_t text_start;
    uint64_t nfunc;
    unsigned quantum, ptr_size;
    uint64_t funcname, cutab, filetab, pctab, functab;
    int ok;
};
static struct table tables[4];
static unsigned next_slot;

static int read_at(int fd, void *dst, size_t len, uint64_t off)
{
    return pread(fd, dst, len, (off_t)off) == (ssize_t)len ? 0 : -1;
}

/* The .gopclntab section of a 64-bit little-endian ELF file, malloc'ed. */
static unsigned char *section(int fd, size_t *size)
{
    Elf64_Ehdr eh;
    if (read_at(fd, &eh, sizeof eh, 0) != 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
        eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum == 0 || eh.e_shnum > 4096 || eh.e_shstrndx >= eh.e_shnum)
        return NULL;
    Elf64_Shdr *sh = calloc(eh.e_shnum, sizeof *sh);
    if (sh == NULL) return NULL;
    unsigned char *out = NULL;
    char *names = NULL;
    if (read_at(fd, sh, (size_t)eh.e_shnum * sizeof *sh, eh.e_shoff) != 0) goto done;
    const Elf64_Shdr *strs = &sh[eh.e_shstrndx];
    if (strs->sh_size == 0 || strs->sh_size > (1u << 20) || (names = malloc(strs->sh_size + 1)) == NULL ||
        read_at(fd, names, strs->sh_size, strs->sh_offset) != 0)
        goto done;
    names[strs->sh_size] = '\0';
    for (unsigned i = 0; i < eh.e_shnum; i++) {
        if (sh[i].sh_name >= strs->sh_size || strcmp(names + sh[i].sh_name, ".gopclntab") != 0) continue;
        if (sh[i].sh_type == SHT_NOBITS || sh[i].sh_size < 64 || sh[i].sh_size > MAX_TABLE) break;
        out = malloc(sh[i].sh_size);
        if (out != NULL && read_at(fd, out, sh[i].sh_size, sh[i].sh_offset) != 0) {
            free(out);
            out = NULL;
        }
        if (out != NULL) *size = sh[i].sh_size;
        break;
    }
done:
    free(names);
    free(sh);
    return out;
}

static uint64_t word(const struct table *t, size_t off)
{
    uint64_t v = 0;
    if (off + t->ptr_size > t->size) return UINT64_MAX;
    memcpy(&v, t->data + off, t->ptr_size); /* little-endian */
    return v;
}

static int u32_at(const struct table *t, uint64_t off, uint32_t *out)
{
    if (off > t->size || t->size - off < 4) return -1;
    memcpy(out, t->data + off, 4);
    return 0;
}

static void parse(struct table *t)
{
    uint32_t magic;
    if (u32_at(t, 0, &magic) != 0 || (magic != 0xfffffff0u && magic != 0xfffffff1u)) return;
    t->quantum = t->data[6];
    t->ptr_size = t->data[7];
    if ((t->ptr_size != 8 && t->ptr_size != 4) || t->quantum == 0 || t->quantum > 4) return;
    size_t ps = t->ptr_size;
    t->nfunc = word(t, 8);
    t->text_start = word(t, 8 + 2 * ps);
    t->funcname = word(t, 8 + 3 * ps);
    t->cutab = word(t, 8 + 4 * ps);
    t->filetab = word(t, 8 + 5 * ps);
    t->pctab = word(t, 8 + 6 * ps);
    t->functab = word(t, 8 + 7 * ps);
    if (t->funcname >= t->size || t->cutab >= t->size || t->filetab >= t->size || t->pctab >= t->size ||
        t->functab >= t->size || t->nfunc == 0 || t->nfunc > (t->size - t->functab) / 8)
        return;
    t->ok = 1;
}

static struct table *table_of(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return NULL;
    for (unsigned i = 0; i < sizeof tables / sizeof tables[0]; i++)
        if (tables[i].data != NULL && tables[i].dev == (uint64_t)st.st_dev && tables[i].ino == (uint64_t)st.st_ino &&
            strcmp(tables[i].path, path) == 0)
            return tables[i].ok ? &tables[i] : NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t size = 0;
    unsigned char *data = section(fd, &size);
    close(fd);
    struct table *t = &tables[next_slot++ % (sizeof tables / sizeof tables[0])];
    free(t->data);
    memset(t, 0, sizeof *t);
    snprintf(t->path, sizeof t->path, "%s", path);
    t->dev = (uint64_t)st.st_dev;
    t->ino = (uint64_t)st.st_ino;
    t->data = data != NULL ? data : (unsigned char *)calloc(1, 1); /* remembered as not Go */
    t->size = data != NULL ? size : 0;
    if (data != NULL) parse(t);
    return t->ok ? t : NULL;
}

static int varint(const struct table *t, uint64_t *p, uint32_t *out)
{
    uint32_t v = 0;
    for (unsigned shift = 0; shift < 35; shift += 7) {
        if (*p >= t->size) return -1;
        unsigned char b = t->data[(*p)++];
        v |= (uint32_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* The value of the pc-value table at `off` for target (Go's runtime.pcvalue). */
static int pcvalue(const struct table *t, uint32_t off, uint64_t entry, uint64_t target, int32_t *out)
{
    if (off == 0) return -1;
    uint64_t p = t->pctab + off, pc = entry;
    int32_t val = -1;
    for (int steps = 0; steps < 1000000; steps++) {
        uint32_t uv, pcdelta;
        if (p >= t->size) return -1;
        if (t->data[p] == 0 && pc != entry) return -1; /* the end: target is past this function */
        if (varint(t, &p, &uv) != 0) return -1;
        val += (int32_t)((uv & 1) ? ~(uv >> 1) : (uv >> 1));
        if (varint(t, &p, &pcdelta) != 0) return -1;
        pc += (uint64_t)pcdelta * t->quantum;
        if (target < pc) {
            *out = val;
            return 0;
        }
    }
    return -1;
}

static const char *string_at(const struct table *t, uint64_t off)
{
    if (off >= t->size || memchr(t->data + off, '\0', t->size - off) == NULL) return NULL;
    return (const char *)t->data + off;
}

int cw_gopclntab_lookup(const char *path, uint64_t vaddr, const char **function, const char **file, int *line)
{
    struct table *t = table_of(path);
    if (t == NULL || vaddr < t->text_start) return -1;
    uint64_t target = vaddr - t->text_start;
    /* functab: nfunc (entryoff, funcoff) pairs, then the end's entryoff */
    uint64_t lo = 0, hi = t->nfunc;
    uint32_t end;
    if (u32_at(t, t->functab + t->nfunc * 8, &end) != 0 || target >= end) return -1;
    while (hi - lo > 1) {
        uint64_t mid = (lo + hi) / 2;
        uint32_t e;
        if (u32_at(t, t->functab + mid * 8, &e) != 0) return -1;
        if (e <= target) lo = mid;
        else hi = mid;
    }
    uint32_t entryoff, funcoff;
    if (u32_at(t, t->functab + lo * 8, &entryoff) != 0 || u32_at(t, t->functab + lo * 8 + 4, &funcoff) != 0 ||
        entryoff > target)
        return -1;
    uint64_t f = t->functab + funcoff;
    uint32_t fields[9];
    for (int i = 0; i < 9; i++)
        if (u32_at(t, f + 4 * (uint64_t)i, &fields[i]) != 0) return -1;
    /* _func: entryOff, nameOff, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset */
    *function = string_at(t, t->funcname + fields[1]);
    *file = NULL;
    *line = 0;
    uint64_t entry = t->text_start + fields[0];
    int32_t lineno, fileno;
    if (pcvalue(t, fields[6], entry, vaddr, &lineno) == 0 && lineno > 0) *line = lineno;
    uint32_t fileoff;
    if (pcvalue(t, fields[5], entry, vaddr, &fileno) == 0 && fileno >= 0 &&
        u32_at(t, t->cutab + 4 * ((uint64_t)fields[8] + (uint64_t)fileno), &fileoff) == 0 && fileoff != UINT32_MAX)
        *file = string_at(t, t->filetab + fileoff);
    return *function != NULL ? 0 : -1;
}
