/*
 * Language stacks: the program's own stack in its own language (Python, JavaScript, Java), as
 * text, for a descriptor's open and its EOF.  The runtime hands them in (closewait_note_stack,
 * from the Python and Node.js shims; the JVM's stacks are read by hooks/jvm.c), the watcher
 * reads them back as untrusted input.
 *
 * In the region (langstack.c owns its own section, after everything else):
 *   [used][index: packed (hash, offset)][texts: {len, hash, bytes}]   one store, deduplicated
 *   [refs: one per descriptor, parallel to the chunk pool's slots]     {slot seq, open id, eof id}
 *
 * The text: a first line naming the language ("python 3.11.2"), then one line per frame,
 * innermost first: "K\tfunction\tfile\tline" where K is 'p' for the program's own code and 'r'
 * for the runtime's or a library's.
 */
#ifndef CLOSEWAIT_LANGSTACK_H
#define CLOSEWAIT_LANGSTACK_H
#include "base.h"

#define CW_LANG_INDEX_SIZE (1u << 14)
#define CW_LANG_ARENA_BYTES (8u << 20)
#define CW_LANG_MAX_TEXT 4096u   /* one stack's text, bytes */
#define CW_LANG_MAX_FRAMES 48
#define CW_LANG_NAME 64          /* a function or file name is cut to this many bytes... */
#define CW_LANG_PATH 256         /* ...a file's path to this many */

enum { CW_LANG_OPEN = 0, CW_LANG_EOF = 1 };

struct cw_lang_ref {
    _Atomic uint32_t seq;  /* the slot's seq these belong to (one life of the descriptor) */
    _Atomic uint32_t open; /* text store ids, 0: none */
    _Atomic uint32_t eof;
    uint32_t unused;
};

/* Bytes of the region the section needs (region.c lays it out). */
CW_HIDDEN size_t cw_lang_section_bytes(void);
CW_HIDDEN size_t cw_lang_refs_per_chunk_bytes(void);
/* region.c tells where the section is (the text store, then the refs) once mapped. */
CW_HIDDEN void cw_lang_point_into(unsigned char *section);
/* The part of the text store in use, from the section's start (for a copy of the region). */
CW_HIDDEN size_t cw_lang_store_used(void);
/* The refs of pool chunk c (its number + 1), NULL when out of range. */
CW_HIDDEN struct cw_lang_ref *cw_lang_refs(uint32_t chunk_plus_one);

/* In the program: note `text` as fd's open or EOF stack, for the life the slot holds now.
 * 0 if noted, -1 if not (no such TCP socket, bad arguments, store full). */
CW_HIDDEN int cw_lang_note(int fd, int kind, const char *text, size_t len);
/* The same with a text already stored (its id). */
CW_HIDDEN int cw_lang_note_id(int fd, int kind, uint32_t id);
/* Store a text (deduplicated); its id, 0 on failure. */
CW_HIDDEN uint32_t cw_lang_store(const char *text, size_t len);

/* A frame as a report writes it: every string NUL-terminated, no control character. */
struct cw_lang_frame {
    char function[CW_LANG_NAME];
    char file[CW_LANG_PATH];
    int line;
    int program; /* the program's own code (not the runtime's nor a library's) */
};
struct cw_lang_stack {
    char lang[32];
    int n;
    int first_program; /* index of the first frame of the program's own code, -1: none */
    uint64_t stable_id; /* base names, functions and lines: the same code gives the same id */
    struct cw_lang_frame f[CW_LANG_MAX_FRAMES];
};
/* In the watcher: read stack `id` of the store, checking everything.  0 on success. */
CW_HIDDEN int cw_lang_read(uint32_t id, struct cw_lang_stack *out);
/* In the watcher: the ids noted for fd's life `seq` in the current area (0 where none). */
CW_HIDDEN void cw_lang_of(const struct cw_lang_ref *r, uint32_t seq, uint32_t *open, uint32_t *eof);
#endif
