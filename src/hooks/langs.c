/*
 * The runtimes' way in: Python (tools/langs/python/sitecustomize.py, through ctypes) and Node.js
 * (tools/langs/node/closewait.js, through this library loaded as a Node-API addon) hand the
 * program's own stack to closewait_note_stack() when a socket is born and when its EOF reaches
 * the program.  The library is already loaded in the process (LD_PRELOAD): nothing else is.
 */
#define _GNU_SOURCE
#include "shared/langstack.h"
#include "shared/region.h"
#include "sys/sockets.h"

#include <dlfcn.h>
#include <errno.h>

__attribute__((visibility("default"))) int closewait_note_stack(int fd, int kind, const char *frames, size_t len)
{
    int saved = errno;
    int r = -1;
    if (frames != NULL && len > 0 && len <= CW_LANG_MAX_TEXT && !cw_on_private_table) r = cw_lang_note(fd, kind, frames, len);
    errno = saved;
    return r;
}

/* ---- Node.js: this library as a Node-API addon ----------------------------
 * tools/langs/node/closewait.js loads it with process.dlopen(); Node then calls
 * napi_register_module_v1.  The napi_* functions are node's own, looked up at that moment, so
 * that the library links without them and costs nothing in any other program. */
typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status; /* napi_ok is 0 */
typedef napi_value (*napi_callback)(napi_env, napi_callback_info);

static struct {
    napi_status (*get_cb_info)(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
    napi_status (*get_value_int32)(napi_env, napi_value, int32_t *);
    napi_status (*get_value_string_utf8)(napi_env, napi_value, char *, size_t, size_t *);
    napi_status (*create_int32)(napi_env, int32_t, napi_value *);
    napi_status (*create_function)(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
    napi_status (*set_named_property)(napi_env, napi_value, const char *, napi_value);
} napi;

/* noteStack(fd, kind, text) -> 0 noted, -1 not */
static napi_value js_note_stack(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3];
    int32_t fd = -1, kind = -1, r = -1;
    static __thread char text[CW_LANG_MAX_TEXT + 1];
    size_t len = 0;
    if (napi.get_cb_info(env, info, &argc, argv, NULL, NULL) == 0 && argc >= 3 &&
        napi.get_value_int32(env, argv[0], &fd) == 0 && napi.get_value_int32(env, argv[1], &kind) == 0 &&
        napi.get_value_string_utf8(env, argv[2], text, sizeof text, &len) == 0)
        r = closewait_note_stack(fd, kind, text, len);
    napi_value out = NULL;
    napi.create_int32(env, r, &out);
    return out;
}

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports);
__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports)
{
#define NAPI_FN(field, name) *(void **)&napi.field = dlsym(RTLD_DEFAULT, name)
    NAPI_FN(get_cb_info, "napi_get_cb_info");
    NAPI_FN(get_value_int32, "napi_get_value_int32");
    NAPI_FN(get_value_string_utf8, "napi_get_value_string_utf8");
    NAPI_FN(create_int32, "napi_create_int32");
    NAPI_FN(create_function, "napi_create_function");
    NAPI_FN(set_named_property, "napi_set_named_property");
#undef NAPI_FN
    if (napi.get_cb_info == NULL || napi.get_value_int32 == NULL || napi.get_value_string_utf8 == NULL ||
        napi.create_int32 == NULL || napi.create_function == NULL || napi.set_named_property == NULL)
        return exports; /* not a Node-API host: an object without noteStack says so */
    napi_value fn = NULL;
    if (napi.create_function(env, "noteStack", 9, js_note_stack, NULL, &fn) == 0)
        napi.set_named_property(env, exports, "noteStack", fn);
    return exports;
}
