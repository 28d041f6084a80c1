/* Stored stacks as the formats write them: symbolized frames, and an id that does not depend on
 * where the code was loaded. */
#define _GNU_SOURCE
#include "report/report.h"
#include "options/options.h"
#include "unwind/stacks.h"
#include "unwind/symbolize.h"

#include <string.h>

int cw_report_frames(uint32_t stack, struct cw_frame *out, int max)
{
    const uintptr_t *pcs;
    int depth = cw_stack_frames(stack, &pcs);
    int n = 0;
    /* Every captured pc is a return address: our own frames were cut off above it. */
    if (depth > 0 && max > 0 && cw_tail_call_frame(pcs[0], &out[0])) n = 1;
    for (int i = 0; i < depth && n < max; i++) n += cw_symbolize(pcs[i], 0, out + n, max - n);
    return n;
}

static const char *base_name(const char *path)
{
    if (path == NULL) return "?";
    const char *s = strrchr(path, '/');
    return s != NULL ? s + 1 : path;
}

uint64_t cw_report_stack_id(uint32_t stack)
{
    const uintptr_t *pcs;
    int depth = cw_stack_frames(stack, &pcs);
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < depth; i++) {
        struct cw_frame f[16];
        int n = cw_symbolize(pcs[i], 0, f, 16);
        if (n <= 0) continue;
        const char *m = base_name(f[n - 1].module);
        for (const char *p = m; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
        uintptr_t off = f[n - 1].module != NULL ? f[n - 1].offset : 0;
        for (int k = 0; k < 8; k++) h = (h ^ ((off >> (8 * k)) & 0xff)) * 0x100000001b3ull;
    }
    return h;
}

/* The formats, by the value of CLOSEWAIT_FORMAT (enum cw_format). */
extern const struct cw_printer cw_printer_text, cw_printer_json;
static const struct cw_printer *const formats[] = {[CW_FORMAT_TEXT] = &cw_printer_text, [CW_FORMAT_JSON] = &cw_printer_json};

const struct cw_printer *cw_report_printer(void)
{
    unsigned f = (unsigned)cw_cfg.format;
    return f < sizeof formats / sizeof formats[0] && formats[f] != NULL ? formats[f] : &cw_printer_text;
}
