/* Names and lines of Go binaries without symbols nor DWARF, from their .gopclntab (gopclntab.c). */
#ifndef CLOSEWAIT_GOPCLNTAB_H
#define CLOSEWAIT_GOPCLNTAB_H
#include "base.h"

/* vaddr: the address in the ELF file's terms (a pc less the module's load bias).  0 and the
 * function's name, its file and line (NULL, 0 when unknown) when path is a Go binary that has
 * vaddr in its table; the strings live until the table is dropped (a few binaries are kept: copy them).
 * Watcher thread only. */
CW_HIDDEN int cw_gopclntab_lookup(const char *path, uint64_t vaddr, const char **function, const char **file, int *line);
#endif
