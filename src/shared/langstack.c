/*
 * Language stacks (langstack.h): a store of texts, deduplicated like the native stack store (a
 * text is written first, then published with one CAS on its index entry), and one ref per
 * descriptor naming the texts of its current life.
 *
 * Every process of the tree writes here: the watcher copies a text out before it looks at it,
 * and checks every offset, length, byte and number it reads.
 */
#define _GNU_SOURCE
#include "shared/langstack.h"
#include "shared/region.h"

#include <string.h>

struct stored_text {
    uint32_t len;
    uint32_t hash;
    char bytes[];
};

struct section_head {
    _Atomic uint64_t used; /* bytes of the arena handed out */
    uint64_t unused[7];
};

#define HEAD_BYTES sizeof(struct section_head)
#define INDEX_BYTES ((size_t)CW_LANG_INDEX_SIZE * sizeof(uint64_t))
#define STORE_BYTES (HEAD_BYTES + INDEX_BYTES + CW_LANG_ARENA_BYTES)
#define REFS_PER_CHUNK ((size_t)CW_CHUNK_SLOTS * sizeof(struct cw_lang_ref))

static struct section_head *head;
static _Atomic uint64_t *lang_index;
static unsigned char *arena;
static unsigned char *refs;

size_t cw_lang_section_bytes(void)
{
    return STORE_BYTES + (size_t)CW_POOL_CHUNKS * REFS_PER_CHUNK;
}

size_t cw_lang_refs_per_chunk_bytes(void)
{
    return REFS_PER_CHUNK;
}

void cw_lang_point_into(unsigned char *section)
{
    head = (struct section_head *)(void *)section;
    lang_index = (_Atomic uint64_t *)(void *)(section + HEAD_BYTES);
    arena = section + HEAD_BYTES + INDEX_BYTES;
    refs = section + STORE_BYTES;
}

size_t cw_lang_store_used(void)
{
    if (head == NULL) return 0;
    uint64_t used = atomic_load(&head->used);
    if (used > CW_LANG_ARENA_BYTES) used = CW_LANG_ARENA_BYTES;
    return HEAD_BYTES + INDEX_BYTES + (size_t)used;
}

struct cw_lang_ref *cw_lang_refs(uint32_t chunk_plus_one)
{
    if (refs == NULL || chunk_plus_one == 0 || chunk_plus_one > CW_POOL_CHUNKS) return NULL;
    return (struct cw_lang_ref *)(void *)(refs + (size_t)(chunk_plus_one - 1) * REFS_PER_CHUNK);
}

static uint32_t hash_text(const char *t, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)t[i]) * 16777619u;
    return h == 0 ? 1 : h;
}

/* The text an index entry names, or NULL when it points outside the arena. */
static const struct stored_text *text_at(uint64_t e)
{
    uint64_t off = ((e & 0xffffffffu) - 1) * 8;
    if ((e & 0xffffffffu) == 0 || off + sizeof(struct stored_text) > CW_LANG_ARENA_BYTES) return NULL;
    const struct stored_text *t = (const struct stored_text *)(const void *)(arena + off);
    uint32_t len = t->len;
    if (len == 0 || len > CW_LANG_MAX_TEXT || off + sizeof *t + len > CW_LANG_ARENA_BYTES) return NULL;
    return t;
}

uint32_t cw_lang_store(const char *text, size_t len)
{
    if (head == NULL || text == NULL || len == 0 || len > CW_LANG_MAX_TEXT) return 0;
    uint32_t hash = hash_text(text, len);
    size_t need = (sizeof(struct stored_text) + len + 7) & ~(size_t)7;
    uint64_t reserved = UINT64_MAX;
    for (uint32_t probe = 0; probe < 64; probe++) {
        uint32_t i = (hash + probe) & (CW_LANG_INDEX_SIZE - 1);
        uint64_t e = atomic_load_explicit(&lang_index[i], memory_order_acquire);
        if (e == 0) {
            if (reserved == UINT64_MAX) {
                reserved = atomic_fetch_add_explicit(&head->used, need, memory_order_relaxed);
                if (reserved + need > CW_LANG_ARENA_BYTES) return 0;
                struct stored_text *t = (struct stored_text *)(void *)(arena + reserved);
                t->len = (uint32_t)len;
                t->hash = hash;
                memcpy(t->bytes, text, len);
            }
            uint64_t packed = ((uint64_t)hash << 32) | (reserved / 8 + 1);
            if (atomic_compare_exchange_strong_explicit(&lang_index[i], &e, packed, memory_order_release,
                                                        memory_order_acquire))
                return i + 1;
        }
        if ((uint32_t)(e >> 32) != hash) continue;
        const struct stored_text *t = text_at(e);
        if (t != NULL && t->len == len && memcmp(t->bytes, text, len) == 0) return i + 1;
    }
    return 0;
}

int cw_lang_note(int fd, int kind, const char *text, size_t len)
{
    if (fd < 0 || (kind != CW_LANG_OPEN && kind != CW_LANG_EOF)) return -1;
    struct cw_slot *s = cw_slot_peek(fd);
    if (s == NULL || CW_SEQ_KIND(atomic_load_explicit(&s->seq, memory_order_acquire)) != CW_KIND_TCP) return -1;
    uint32_t id = cw_lang_store(text, len);
    return id != 0 ? cw_lang_note_id(fd, kind, id) : -1;
}

int cw_lang_note_id(int fd, int kind, uint32_t id)
{
    if (fd < 0 || id == 0 || (kind != CW_LANG_OPEN && kind != CW_LANG_EOF)) return -1;
    struct cw_area *me = cw_me;
    if (me == NULL) return -1;
    struct cw_slot *s = cw_slot_peek(fd);
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    if (s == NULL || c >= CW_MAX_CHUNKS) return -1;
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (CW_SEQ_KIND(seq) != CW_KIND_TCP) return -1;
    struct cw_lang_ref *chunk = cw_lang_refs(atomic_load_explicit(&me->chunk[c], memory_order_acquire));
    if (chunk == NULL) return -1;
    struct cw_lang_ref *r = &chunk[(unsigned)fd % CW_CHUNK_SLOTS];
    if (atomic_load_explicit(&r->seq, memory_order_acquire) != seq) {
        /* A new life: what the last one noted goes.  The seq is 0 (no life) meanwhile, so that
         * a reader never takes the old texts for the new life. */
        atomic_store_explicit(&r->seq, 0, memory_order_release);
        atomic_store_explicit(&r->open, 0, memory_order_relaxed);
        atomic_store_explicit(&r->eof, 0, memory_order_relaxed);
    }
    /* The first word of a life stays (a TLS wrap of an accepted socket is not where it came
     * from; the first EOF is the one the C hooks keep too). */
    _Atomic uint32_t *field = kind == CW_LANG_OPEN ? &r->open : &r->eof;
    uint32_t none = 0;
    atomic_compare_exchange_strong_explicit(field, &none, id, memory_order_relaxed, memory_order_relaxed);
    atomic_store_explicit(&r->seq, seq, memory_order_release);
    return 0;
}

void cw_lang_of(const struct cw_lang_ref *r, uint32_t seq, uint32_t *open, uint32_t *eof)
{
    *open = *eof = 0;
    if (r == NULL || seq == 0) return;
    if (atomic_load_explicit(&r->seq, memory_order_acquire) != seq) return;
    uint32_t o = atomic_load_explicit(&r->open, memory_order_relaxed);
    uint32_t e = atomic_load_explicit(&r->eof, memory_order_relaxed);
    if (atomic_load_explicit(&r->seq, memory_order_acquire) != seq) return;
    *open = o;
    *eof = e;
}

/* ---- reading, in the watcher ---------------------------------------------- */

/* Copy field [p, end) into out (cap bytes), a control byte becoming '?'. */
static void copy_field(char *out, size_t cap, const char *p, const char *end)
{
    size_t n = 0;
    for (; p < end && n + 1 < cap; p++) {
        unsigned char ch = (unsigned char)*p;
        out[n++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    out[n] = '\0';
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s != NULL ? s + 1 : path;
}

static uint64_t fnv64(uint64_t h, const char *s)
{
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (h ^ 0xff) * 0x100000001b3ull; /* a separator, so that "ab","c" and "a","bc" differ */
}

/* One frame line "K\tfunction\tfile\tline"; 0 if it is one. */
static int parse_frame(const char *p, const char *end, struct cw_lang_frame *f)
{
    const char *tab[3];
    int ntab = 0;
    for (const char *q = p; q < end && ntab < 3; q++)
        if (*q == '\t') tab[ntab++] = q;
    if (ntab < 3 || tab[0] != p + 1 || (*p != 'p' && *p != 'r')) return -1;
    f->program = *p == 'p';
    copy_field(f->function, sizeof f->function, tab[0] + 1, tab[1]);
    /* The end of a long path says more than its start. */
    const char *file = tab[1] + 1;
    if ((size_t)(tab[2] - file) >= sizeof f->file) file = tab[2] - (sizeof f->file - 1);
    copy_field(f->file, sizeof f->file, file, tab[2]);
    long line = 0;
    const char *q = tab[2] + 1;
    if (q == end) return -1;
    for (; q < end; q++) {
        if (*q < '0' || *q > '9' || line > 100000000) return -1;
        line = line * 10 + (*q - '0');
    }
    f->line = (int)line;
    return 0;
}

int cw_lang_read(uint32_t id, struct cw_lang_stack *out)
{
    memset(out, 0, sizeof *out);
    out->first_program = -1;
    if (id == 0 || id > CW_LANG_INDEX_SIZE || lang_index == NULL) return -1;
    uint64_t e = atomic_load_explicit(&lang_index[id - 1], memory_order_acquire);
    const struct stored_text *t = text_at(e);
    if (t == NULL) return -1;
    /* A copy first: the numbers checked are the numbers used. */
    char text[CW_LANG_MAX_TEXT + 1];
    uint32_t len = t->len;
    if (len == 0 || len > CW_LANG_MAX_TEXT) return -1;
    memcpy(text, t->bytes, len);
    text[len] = '\0';
    const char *p = text, *end = text + len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL || nl == p) return -1;
    copy_field(out->lang, sizeof out->lang, p, nl);
    char word[sizeof out->lang];
    memcpy(word, out->lang, sizeof word);
    word[strcspn(word, " ")] = '\0'; /* the language, not its version */
    uint64_t h = fnv64(0xcbf29ce484222325ull, word);
    p = nl + 1;
    while (p < end && out->n < CW_LANG_MAX_FRAMES) {
        nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl != NULL ? nl : end;
        struct cw_lang_frame *f = &out->f[out->n];
        if (parse_frame(p, line_end, f) == 0) {
            if (f->program && out->first_program < 0) out->first_program = out->n;
            char num[16];
            int k = 0, v = f->line;
            do num[k++] = (char)('0' + v % 10); while ((v /= 10) != 0 && k < 15);
            num[k] = '\0';
            h = fnv64(fnv64(fnv64(h, base_name(f->file)), f->function), num);
            out->n++;
        }
        p = line_end + 1;
    }
    out->stable_id = h;
    return out->n > 0 ? 0 : -1;
}
