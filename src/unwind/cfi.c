/*
 * A fast path for the unwinder on x86-64: the rule that gives a frame's caller (where its CFA
 * is, where it saved RBP) is worked out once per return address from the object's .eh_frame and
 * kept in a small table; the next walk through the same code is a table lookup and two loads per
 * frame.  libgcc's _Unwind_Backtrace does the whole DWARF work again for every frame of every
 * walk (about 2,000 instructions a frame, against a few dozen here).
 *
 * Only what compilers emit for ordinary functions is followed: the CFA at RSP or RBP plus an
 * offset, the return address just below the CFA, RBP saved at an offset from the CFA or left
 * alone.  Anything else (a DWARF expression, a signal frame, an unknown opcode) answers "not
 * here", and the caller unwinds that stack with libgcc instead.
 */
#define _GNU_SOURCE
#include "unwind/cfi.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__)

#define DW_REG_RBP 6
#define DW_REG_RSP 7
#define DW_REG_RA 16

/* A rule: the CFA is (cfa_rbp ? RBP : RSP) + cfa_off; the caller's RBP is at CFA + rbp_off, or
 * unchanged when rbp_off is 0. */
struct rule {
    int32_t cfa_off;
    int16_t rbp_off;
    uint8_t cfa_rbp;
    uint8_t end; /* the outermost frame: its return address is undefined */
};

/* ---- the table: 4096 entries, direct-mapped, each under a sequence word ------- */
#define SLOTS 4096
struct entry {
    _Atomic uint32_t seq; /* odd while being written */
    _Atomic uint64_t pc;
    _Atomic uint64_t hdr; /* the object's .eh_frame_hdr: another object later at the same place is not it */
    _Atomic uint64_t packed;
};
static struct entry table[SLOTS];

static uint64_t pack(struct rule r)
{
    return (uint64_t)(uint32_t)r.cfa_off | (uint64_t)(uint16_t)r.rbp_off << 32 | (uint64_t)r.cfa_rbp << 48 |
           (uint64_t)r.end << 49 | (uint64_t)1 << 50;
}

static struct rule unpack(uint64_t v)
{
    struct rule r = {(int32_t)(uint32_t)v, (int16_t)(uint16_t)(v >> 32), (uint8_t)((v >> 48) & 1), (uint8_t)((v >> 49) & 1)};
    return r;
}

static unsigned slot_of(uintptr_t pc)
{
    return (unsigned)((pc ^ (pc >> 12) ^ (pc >> 24)) & (SLOTS - 1));
}

static int table_get(uintptr_t pc, const void *hdr, struct rule *r)
{
    struct entry *e = &table[slot_of(pc)];
    uint32_t s1 = atomic_load_explicit(&e->seq, memory_order_acquire);
    if (s1 & 1) return 0;
    /* Acquire loads, not a fence (ThreadSanitizer has no fences): the second read of the
     * sequence stays after them. */
    uint64_t p = atomic_load_explicit(&e->pc, memory_order_acquire);
    uint64_t h = atomic_load_explicit(&e->hdr, memory_order_acquire);
    uint64_t v = atomic_load_explicit(&e->packed, memory_order_acquire);
    if (atomic_load_explicit(&e->seq, memory_order_relaxed) != s1 || p != pc || h != (uint64_t)(uintptr_t)hdr ||
        !(v >> 50 & 1))
        return 0;
    *r = unpack(v);
    return 1;
}

static void table_put(uintptr_t pc, const void *hdr, struct rule r)
{
    struct entry *e = &table[slot_of(pc)];
    uint32_t s = atomic_load_explicit(&e->seq, memory_order_relaxed);
    /* Another writer (another thread, or the code this signal handler interrupted): leave it. */
    if ((s & 1) || !atomic_compare_exchange_strong(&e->seq, &s, s + 1)) return;
    atomic_store_explicit(&e->pc, pc, memory_order_relaxed);
    atomic_store_explicit(&e->hdr, (uint64_t)(uintptr_t)hdr, memory_order_relaxed);
    atomic_store_explicit(&e->packed, pack(r), memory_order_relaxed);
    atomic_store_explicit(&e->seq, s + 2, memory_order_release);
}

/* ---- reading .eh_frame ------------------------------------------------------ */
struct cursor {
    const uint8_t *p, *end;
    int bad;
};

static uint64_t uleb(struct cursor *c)
{
    uint64_t v = 0;
    for (unsigned shift = 0; c->p < c->end && shift < 64; shift += 7) {
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
    }
    c->bad = 1;
    return 0;
}

static int64_t sleb(struct cursor *c)
{
    int64_t v = 0;
    unsigned shift = 0;
    uint8_t b = 0x80;
    while (c->p < c->end && shift < 64 && (b & 0x80)) {
        b = *c->p++;
        v |= (int64_t)((uint64_t)(b & 0x7f) << shift);
        shift += 7;
    }
    if (b & 0x80) {
        c->bad = 1;
        return 0;
    }
    if (shift < 64 && (b & 0x40)) v = (int64_t)((uint64_t)v | ~(uint64_t)0 << shift);
    return v;
}

static uint64_t fixed(struct cursor *c, unsigned n)
{
    if (c->p + n > c->end) {
        c->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    memcpy(&v, c->p, n);
    c->p += n;
    if (n < 8 && (v >> (n * 8 - 1) & 1)) v |= ~(uint64_t)0 << (n * 8); /* sign, for the sdata forms */
    return v;
}

/* A DWARF EH pointer (DW_EH_PE_*): absolute, or relative to where it is read (pcrel) or to
 * the .eh_frame_hdr (datarel).  0 when the encoding is not one compilers use here. */
static uintptr_t pointer(struct cursor *c, uint8_t enc, uintptr_t datarel)
{
    if (enc == 0xff) return 0; /* DW_EH_PE_omit */
    uintptr_t at = (uintptr_t)c->p;
    uint64_t v;
    switch (enc & 0x0f) {
    case 0x00: v = fixed(c, 8); break;
    case 0x01: v = uleb(c); break;
    case 0x02: v = fixed(c, 2) & 0xffff; break;
    case 0x03: v = fixed(c, 4) & 0xffffffffu; break;
    case 0x04: v = fixed(c, 8); break;
    case 0x09: v = (uint64_t)sleb(c); break;
    case 0x0a: v = fixed(c, 2); break;
    case 0x0b: v = fixed(c, 4); break;
    case 0x0c: v = fixed(c, 8); break;
    default: c->bad = 1; return 0;
    }
    switch (enc & 0x70) {
    case 0x00: break;
    case 0x10: v += at; break;
    case 0x30: v += datarel; break;
    default: c->bad = 1; return 0;
    }
    return (uintptr_t)v;
}

/* The FDE covering pc, found in the object's .eh_frame_hdr search table. */
static const uint8_t *find_fde(uintptr_t pc, const uint8_t *hdr)
{
    if (hdr == NULL || hdr[0] != 1 || hdr[3] != 0x3b) return NULL; /* version 1, datarel sdata4 table */
    struct cursor c = {hdr + 4, hdr + 4 + 16, 0};
    pointer(&c, hdr[1], (uintptr_t)hdr); /* the .eh_frame pointer: not needed */
    uintptr_t count = pointer(&c, hdr[2], (uintptr_t)hdr);
    if (c.bad || count == 0 || count > (1u << 24)) return NULL;
    const int32_t *t = (const int32_t *)(const void *)c.p;
    size_t lo = 0, hi = count;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uintptr_t)hdr + (intptr_t)t[2 * mid] <= pc) lo = mid;
        else hi = mid;
    }
    if ((uintptr_t)hdr + (intptr_t)t[2 * lo] > pc) return NULL;
    return hdr + t[2 * lo + 1];
}

struct state {
    int64_t cfa_off;
    int64_t rbp_off; /* 0: unchanged */
    int rbp_lost, ra_ok, ra_undefined;
    uint8_t cfa_reg;
};

/* Runs a CFA program up to `target` (the code address whose rule is wanted); 0 if it uses
 * something this walker does not follow. */
static int run_program(struct cursor *c, uintptr_t *loc, uintptr_t target, uint64_t code_align, int64_t data_align,
                       struct state *st, const struct state *initial)
{
    struct state saved[8];
    int depth = 0;
    while (c->p < c->end && !c->bad) {
        uint8_t op = *c->p++;
        uint8_t hi2 = op & 0xc0, low = op & 0x3f;
        uint64_t reg;
        int64_t off;
        if (hi2 == 0x40) { /* advance_loc */
            *loc += low * code_align;
            if (*loc > target) return 1;
            continue;
        }
        if (hi2 == 0x80 || op == 0x05 || op == 0x11) { /* offset, offset_extended(_sf) */
            reg = hi2 == 0x80 ? low : uleb(c);
            off = op == 0x11 ? sleb(c) * data_align : (int64_t)uleb(c) * data_align;
            if (reg == DW_REG_RBP) st->rbp_off = off, st->rbp_lost = 0;
            if (reg == DW_REG_RA) st->ra_ok = off == -8;
            continue;
        }
        if (hi2 == 0xc0 || op == 0x06) { /* restore, restore_extended */
            reg = hi2 == 0xc0 ? low : uleb(c);
            if (initial == NULL) return 0;
            if (reg == DW_REG_RBP) st->rbp_off = initial->rbp_off, st->rbp_lost = initial->rbp_lost;
            if (reg == DW_REG_RA) st->ra_ok = initial->ra_ok;
            continue;
        }
        switch (op) {
        case 0x00: break; /* nop */
        case 0x02: *loc += (uint64_t)fixed(c, 1) % 256 * code_align; if (*loc > target) return 1; break;
        case 0x03: *loc += (uint64_t)fixed(c, 2) % 65536 * code_align; if (*loc > target) return 1; break;
        case 0x04: *loc += (uint64_t)(uint32_t)fixed(c, 4) * code_align; if (*loc > target) return 1; break;
        case 0x07: /* undefined */
            reg = uleb(c);
            if (reg == DW_REG_RA) st->ra_undefined = 1;
            if (reg == DW_REG_RBP) st->rbp_lost = 1;
            break;
        case 0x08: /* same_value */
            reg = uleb(c);
            if (reg == DW_REG_RBP) st->rbp_off = 0, st->rbp_lost = 0;
            if (reg == DW_REG_RA) return 0;
            break;
        case 0x09: /* register */
            reg = uleb(c);
            uleb(c);
            if (reg == DW_REG_RBP || reg == DW_REG_RA) return 0;
            break;
        case 0x0a: /* remember_state */
            if (depth == 8) return 0;
            saved[depth++] = *st;
            break;
        case 0x0b: /* restore_state */
            if (depth == 0) return 0;
            *st = saved[--depth];
            break;
        case 0x0c: /* def_cfa */
            st->cfa_reg = (uint8_t)uleb(c);
            st->cfa_off = (int64_t)uleb(c);
            break;
        case 0x0d: st->cfa_reg = (uint8_t)uleb(c); break;          /* def_cfa_register */
        case 0x0e: st->cfa_off = (int64_t)uleb(c); break;          /* def_cfa_offset */
        case 0x12:                                                /* def_cfa_sf */
            st->cfa_reg = (uint8_t)uleb(c);
            st->cfa_off = sleb(c) * data_align;
            break;
        case 0x13: st->cfa_off = sleb(c) * data_align; break;      /* def_cfa_offset_sf */
        case 0x10:                                                /* expression */
        case 0x16: {                                              /* val_expression */
            reg = uleb(c);
            uint64_t len = uleb(c);
            if (reg == DW_REG_RBP || reg == DW_REG_RA || len > (uint64_t)(c->end - c->p)) return 0;
            c->p += len;
            break;
        }
        case 0x14: /* val_offset */
        case 0x15: /* val_offset_sf */
            reg = uleb(c);
            if (op == 0x14) uleb(c);
            else sleb(c);
            if (reg == DW_REG_RBP || reg == DW_REG_RA) return 0;
            break;
        case 0x2e: uleb(c); break; /* GNU_args_size */
        default: return 0;         /* def_cfa_expression, set_loc, and the rest */
        }
    }
    return !c->bad;
}

/* The rule for the code at `pc` (a return address: its call is at pc - 1) in the object whose
 * .eh_frame_hdr is `hdr`; 0 if this walker cannot follow it. */
static int rule_for(uintptr_t pc, const uint8_t *hdr, struct rule *out)
{
    uintptr_t target = pc - 1;
    const uint8_t *fde = find_fde(target, hdr);
    if (fde == NULL) return 0;
    uint32_t flen;
    memcpy(&flen, fde, 4);
    if (flen == 0 || flen == 0xffffffffu) return 0;
    int32_t cie_back;
    memcpy(&cie_back, fde + 4, 4);
    const uint8_t *cie = fde + 4 - cie_back;
    uint32_t clen;
    memcpy(&clen, cie, 4);
    if (clen == 0 || clen == 0xffffffffu) return 0;
    struct cursor c = {cie + 8, cie + 4 + clen, 0};
    uint8_t version = *c.p++;
    const char *aug = (const char *)c.p;
    size_t auglen = strnlen(aug, (size_t)(c.end - c.p));
    c.p += auglen + 1;
    uint64_t code_align = uleb(&c);
    int64_t data_align = sleb(&c);
    uint64_t ra_reg = version == 1 ? fixed(&c, 1) & 0xff : uleb(&c);
    if (ra_reg != DW_REG_RA) return 0;
    uint8_t fde_enc = 0;
    int has_z = aug[0] == 'z';
    if (has_z) {
        uint64_t len = uleb(&c);
        const uint8_t *after = c.p + len;
        for (size_t i = 1; i < auglen && !c.bad; i++) {
            if (aug[i] == 'R') fde_enc = (uint8_t)fixed(&c, 1);
            else if (aug[i] == 'L') fixed(&c, 1);
            else if (aug[i] == 'P') pointer(&c, (uint8_t)fixed(&c, 1), 0);
            else return 0; /* 'S' (a signal frame) and anything unknown */
        }
        if (c.bad || after > c.end) return 0;
        c.p = after;
    } else if (auglen != 0) {
        return 0;
    }
    struct state st = {.cfa_off = 8, .cfa_reg = DW_REG_RSP}, initial;
    uintptr_t loc = 0;
    if (!run_program(&c, &loc, UINTPTR_MAX, code_align, data_align, &st, NULL)) return 0;
    initial = st;
    struct cursor f = {fde + 8, fde + 4 + flen, 0};
    uintptr_t begin = pointer(&f, fde_enc, 0);
    uintptr_t range = pointer(&f, fde_enc & 0x0f, 0);
    if (f.bad || target < begin || target - begin >= range) return 0;
    if (has_z) {
        uint64_t len = uleb(&f);
        if (f.bad || len > (uint64_t)(f.end - f.p)) return 0;
        f.p += len;
    }
    loc = begin;
    if (!run_program(&f, &loc, target, code_align, data_align, &st, &initial)) return 0;
    if (st.ra_undefined) {
        out->end = 1;
        out->cfa_off = 0;
        out->rbp_off = 0;
        out->cfa_rbp = 0;
        return 1;
    }
    if (!st.ra_ok || st.rbp_lost || (st.cfa_reg != DW_REG_RSP && st.cfa_reg != DW_REG_RBP) || st.cfa_off < 0 ||
        st.cfa_off > INT32_MAX || st.rbp_off < INT16_MIN || st.rbp_off > INT16_MAX)
        return 0;
    out->cfa_off = (int32_t)st.cfa_off;
    out->rbp_off = (int16_t)st.rbp_off;
    out->cfa_rbp = st.cfa_reg == DW_REG_RBP;
    out->end = 0;
    return 1;
}

int cw_cfi_walk(uintptr_t pc, uintptr_t sp, uintptr_t rbp, uintptr_t *pcs, uintptr_t *slots, int max)
{
    int n = 0;
    uintptr_t lowest = sp;
    while (n < max && pc != 0) {
        pcs[n] = pc;
        slots[n] = sp - sizeof(uintptr_t);
        n++;
        /* Code outside every loaded object (JIT code): the walk ends there, as libgcc's does. */
        struct dl_find_object dlfo;
        if (_dl_find_object((void *)(pc - 1), &dlfo) != 0 || dlfo.dlfo_eh_frame == NULL) break; /* NOLINT(performance-no-int-to-ptr) */
        struct rule r;
        if (!table_get(pc, dlfo.dlfo_eh_frame, &r)) {
            if (!rule_for(pc, dlfo.dlfo_eh_frame, &r)) return -1;
            table_put(pc, dlfo.dlfo_eh_frame, r);
        }
        if (r.end) break;
        uintptr_t cfa = (r.cfa_rbp ? rbp : sp) + (uintptr_t)(intptr_t)r.cfa_off;
        /* Up the stack, and not past what a stack can be: a rule that says otherwise is wrong. */
        if (cfa <= sp || cfa - lowest > CW_CFI_MAX_SPAN) return -1;
        uintptr_t next_pc = *(const uintptr_t *)(cfa - sizeof(uintptr_t)); /* NOLINT(performance-no-int-to-ptr) */
        if (r.rbp_off != 0) rbp = *(const uintptr_t *)(cfa + (uintptr_t)(intptr_t)r.rbp_off); /* NOLINT(performance-no-int-to-ptr) */
        sp = cfa;
        pc = next_pc;
    }
    return n;
}

#else

int cw_cfi_walk(uintptr_t pc, uintptr_t sp, uintptr_t rbp, uintptr_t *pcs, uintptr_t *slots, int max)
{
    (void)pc, (void)sp, (void)rbp, (void)pcs, (void)slots, (void)max;
    return -1;
}

#endif
