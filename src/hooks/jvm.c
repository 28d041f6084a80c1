/*
 * Java: the program's own stack, read through JVMTI by the socket hooks themselves, when the
 * thread making, accepting or reading EOF on a TCP socket is a Java thread inside the JDK's
 * socket natives (libnio, libnet).  Nothing to set: the JVM that loaded libjvm.so is found with
 * JNI_GetCreatedJavaVMs, and a JVMTI environment is asked of it (GetEnv works in the live phase:
 * no -agentpath, no JAVA_TOOL_OPTIONS, whose use the JVM announces on the program's stderr).
 *
 * Only from JDK natives: there the thread is a Java thread in native state, the state every JNI
 * and JVMTI call expects; the JVM's own internal calls (in VM state) are left alone.
 *
 * The interfaces are the spec's numbered function tables (JNI invocation interface, JVMTI 1.2),
 * declared here so that building the library needs no JDK.
 */
#define _GNU_SOURCE
#include "shared/langstack.h"
#include "unwind/stacks.h"
#include "options/options.h"
#include "hooks/jvm.h"
#include "shared/modules.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

typedef int32_t jint;
typedef int64_t jlocation;
typedef void *jmethodID;
typedef void *jclass;
typedef struct { const void *const *functions; } *JavaVMp;      /* JavaVM* */
typedef struct { const void *const *functions; } *JNIEnvp;      /* JNIEnv* */
typedef struct { const void *const *functions; } *jvmtiEnvp;    /* jvmtiEnv* */
struct jvmti_frame { jmethodID method; jlocation location; };
struct jvmti_line { jlocation start; jint line; };

#define JNI_OK 0
#define JNI_VERSION_1_6 0x00010006
#define JVMTI_VERSION_1_2 0x30010200
/* Slots of the function tables (the spec's function number - 1; checked against the JDK's own
 * headers by tests/langs/run.py when a JDK is installed). */
#define VM_GET_ENV 6
#define JNI_DELETE_LOCAL_REF 23
#define TI_DEALLOCATE 46
#define TI_GET_CLASS_SIGNATURE 47
#define TI_GET_SOURCE_FILE_NAME 49
#define TI_GET_METHOD_NAME 63
#define TI_GET_METHOD_DECLARING_CLASS 64
#define TI_GET_LINE_NUMBER_TABLE 69
#define TI_GET_STACK_TRACE 103
#define TI_ADD_CAPABILITIES 141
/* can_get_source_file_name and can_get_line_numbers (bits 11 and 12 of jvmtiCapabilities) */
#define CAPS_BYTE1 0x18

#define FN(env, slot, type) ((type)(env)->functions[slot])

static _Atomic int jvm_state;       /* 0: not looked for, 1: none (yet), 2: found */
static _Atomic int64_t jvm_checked_ms;
static JavaVMp jvm;
static _Atomic int ti_state;        /* 0: none, 1: being made, 2: ready, 3: failed */
static jvmtiEnvp ti;

/* One frame's text, by (method, location): class, method, source file and line are asked of
 * the JVM once per place. */
#define CACHE_WAYS 4096
#define FRAME_TEXT 300
struct cached_frame {
    _Atomic uint64_t key;   /* 0 empty, 1 being written */
    jmethodID method;
    jlocation location;
    char text[FRAME_TEXT];
};
static struct cached_frame *cache;

static uint64_t key_of(jmethodID m, jlocation loc)
{
    uint64_t k = ((uint64_t)(uintptr_t)m * 0x9e3779b97f4a7c15ull) ^ (uint64_t)loc;
    return k < 2 ? k + 2 : k;
}

/* Is there a JVM?  Once libjvm.so is loaded, looked for again at most once a second until
 * one is created. */
static JavaVMp the_jvm(void)
{
    int st = atomic_load_explicit(&jvm_state, memory_order_acquire);
    if (CW_LIKELY(st == 2)) return jvm;
    /* No libjvm.so among the loaded objects: no lookup at all (the loader's lock is not taken
     * in a program that has no JVM). */
    if (CW_LIKELY(!atomic_load_explicit(&cw_modules_jvm, memory_order_relaxed))) return NULL;
    int64_t now = cw_now_ms();
    if (st == 1 && now - atomic_load_explicit(&jvm_checked_ms, memory_order_relaxed) < 1000) return NULL;
    atomic_store_explicit(&jvm_checked_ms, now, memory_order_relaxed);
    jint (*created)(JavaVMp *, jint, jint *) =
        (jint(*)(JavaVMp *, jint, jint *))dlsym(RTLD_DEFAULT, "JNI_GetCreatedJavaVMs");
    JavaVMp vm = NULL;
    jint n = 0;
    if (created == NULL || created(&vm, 1, &n) != JNI_OK || n < 1 || vm == NULL) {
        atomic_store_explicit(&jvm_state, 1, memory_order_release);
        return NULL;
    }
    jvm = vm;
    atomic_store_explicit(&jvm_state, 2, memory_order_release);
    return vm;
}

/* The JDK's socket natives: a Java thread in native state called us from there. */
static int from_jdk_natives(void)
{
    uintptr_t ret = 0;
    if (!cw_stack_program_return(&ret)) return 0;
    Dl_info info;
    if (dladdr((void *)ret, &info) == 0 || info.dli_fname == NULL) return 0; /* NOLINT(performance-no-int-to-ptr) */
    const char *base = strrchr(info.dli_fname, '/');
    base = base != NULL ? base + 1 : info.dli_fname;
    return strcmp(base, "libnio.so") == 0 || strcmp(base, "libnet.so") == 0;
}

static jvmtiEnvp the_ti(JavaVMp vm)
{
    int st = atomic_load_explicit(&ti_state, memory_order_acquire);
    if (CW_LIKELY(st == 2)) return ti;
    if (st != 0 || !atomic_compare_exchange_strong(&ti_state, &st, 1)) return NULL;
    jvmtiEnvp env = NULL;
    jint (*get_env)(JavaVMp, void **, jint) = FN(vm, VM_GET_ENV, jint(*)(JavaVMp, void **, jint));
    void *mem = mmap(NULL, sizeof(struct cached_frame) * CACHE_WAYS, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || get_env(vm, (void **)&env, JVMTI_VERSION_1_2) != JNI_OK || env == NULL) {
        if (mem != MAP_FAILED) munmap(mem, sizeof(struct cached_frame) * CACHE_WAYS);
        cw_warn("Java stacks unavailable: ", "the JVM gave no JVMTI environment; ", "reports show native frames only");
        atomic_store(&ti_state, 3);
        return NULL;
    }
    cache = mem;
    unsigned char caps[16] = {0};
    caps[1] = CAPS_BYTE1;
    /* Without them, frames have no file and line: still the class and the method. */
    FN(env, TI_ADD_CAPABILITIES, int (*)(jvmtiEnvp, const void *))(env, caps);
    ti = env;
    atomic_store_explicit(&ti_state, 2, memory_order_release);
    return env;
}

static void deallocate(jvmtiEnvp env, void *p)
{
    if (p != NULL) FN(env, TI_DEALLOCATE, int (*)(jvmtiEnvp, void *))(env, p);
}

/* The text's separators inside a name would split it. */
static void blank_separators(char *s)
{
    for (; s != NULL && *s; s++)
        if (*s == '\t' || *s == '\n') *s = ' ';
}

/* "K\tcom.example.Pool.dial\tPool.java\t88" for one frame. */
static void format_frame(jvmtiEnvp env, JNIEnvp jni, jmethodID m, jlocation loc, char *out, size_t cap)
{
    char *name = NULL, *sig = NULL, *csig = NULL, *src = NULL;
    void *klass = NULL;
    FN(env, TI_GET_METHOD_NAME, int (*)(jvmtiEnvp, jmethodID, char **, char **, char **))(env, m, &name, &sig, NULL);
    FN(env, TI_GET_METHOD_DECLARING_CLASS, int (*)(jvmtiEnvp, jmethodID, jclass *))(env, m, &klass);
    if (klass != NULL) {
        FN(env, TI_GET_CLASS_SIGNATURE, int (*)(jvmtiEnvp, jclass, char **, char **))(env, klass, &csig, NULL);
        FN(env, TI_GET_SOURCE_FILE_NAME, int (*)(jvmtiEnvp, jclass, char **))(env, klass, &src);
        FN(jni, JNI_DELETE_LOCAL_REF, void (*)(JNIEnvp, jclass))(jni, klass);
    }
    int line = 0;
    jint nlines = 0;
    struct jvmti_line *lines = NULL;
    if (loc >= 0 &&
        FN(env, TI_GET_LINE_NUMBER_TABLE, int (*)(jvmtiEnvp, jmethodID, jint *, struct jvmti_line **))(env, m, &nlines,
                                                                                                    &lines) == 0) {
        jlocation best = -1;
        for (jint i = 0; i < nlines; i++)
            if (lines[i].start <= loc && lines[i].start > best) {
                best = lines[i].start;
                line = lines[i].line;
            }
    }
    deallocate(env, lines);
    /* "Lcom/example/Pool;" -> "com.example.Pool" */
    char cls[160] = "?";
    if (csig != NULL && csig[0] == 'L') {
        size_t n = 0;
        for (const char *p = csig + 1; *p && *p != ';' && n + 1 < sizeof cls; p++) cls[n++] = *p == '/' ? '.' : *p;
        cls[n] = '\0';
    }
    static const char *const runtime[] = {"java.", "javax.", "jdk.", "sun.", "com.sun.", "org.ietf.", "org.w3c.",
                                          "org.xml."};
    char kind = 'p';
    for (size_t i = 0; i < sizeof runtime / sizeof runtime[0]; i++)
        if (strncmp(cls, runtime[i], strlen(runtime[i])) == 0) kind = 'r';
    blank_separators(cls);
    blank_separators(name);
    blank_separators(src);
    snprintf(out, cap, "%c\t%s.%s\t%s\t%d", kind, cls, name != NULL ? name : "?",
             src != NULL ? src : (loc < 0 ? "Native Method" : "Unknown Source"), line);
    deallocate(env, name);
    deallocate(env, sig);
    deallocate(env, csig);
    deallocate(env, src);
}

static void frame_text(jvmtiEnvp env, JNIEnvp jni, jmethodID m, jlocation loc, char *out, size_t cap)
{
    uint64_t key = key_of(m, loc);
    struct cached_frame *c = &cache[key % CACHE_WAYS];
    if (atomic_load_explicit(&c->key, memory_order_acquire) == key && c->method == m && c->location == loc) {
        size_t n = strnlen(c->text, cap - 1);
        memcpy(out, c->text, n);
        out[n] = '\0';
        if (atomic_load_explicit(&c->key, memory_order_acquire) == key) return;
    }
    format_frame(env, jni, m, loc, out, cap);
    uint64_t old = atomic_load(&c->key);
    if (old != 1 && atomic_compare_exchange_strong(&c->key, &old, 1)) {
        c->method = m;
        c->location = loc;
        size_t n = strnlen(out, sizeof c->text - 1);
        memcpy(c->text, out, n);
        c->text[n] = '\0';
        atomic_store_explicit(&c->key, key, memory_order_release);
    }
}

/* Out of line: its frame (the JVMTI frames, the text) is not set up for a program without a JVM. */
static __attribute__((noinline)) uint32_t jvm_stack_of(JavaVMp vm)
{
    int saved = errno;
    uint32_t id = 0;
    JNIEnvp jni = NULL;
    jint (*get_env)(JavaVMp, void **, jint) = FN(vm, VM_GET_ENV, jint(*)(JavaVMp, void **, jint));
    jvmtiEnvp env;
    if (get_env(vm, (void **)&jni, JNI_VERSION_1_6) == JNI_OK && jni != NULL && from_jdk_natives() &&
        (env = the_ti(vm)) != NULL) {
        struct jvmti_frame frames[CW_MAX_DEPTH];
        jint count = 0;
        int depth = cw_cfg.stack_depth > 0 && cw_cfg.stack_depth <= CW_MAX_DEPTH ? cw_cfg.stack_depth : CW_MAX_DEPTH;
        if (FN(env, TI_GET_STACK_TRACE, int (*)(jvmtiEnvp, void *, jint, jint, struct jvmti_frame *, jint *))(
                env, NULL, 0, depth, frames, &count) == 0 &&
            count > 0) {
            char text[CW_LANG_MAX_TEXT];
            int len = snprintf(text, sizeof text, "java");
            for (jint i = 0; i < count && i < CW_MAX_DEPTH; i++) {
                char line[FRAME_TEXT];
                frame_text(env, jni, frames[i].method, frames[i].location, line, sizeof line);
                size_t n = strlen(line);
                if ((size_t)len + n + 2 > sizeof text) break;
                text[len++] = '\n';
                memcpy(text + len, line, n + 1); /* its NUL too: the next line goes over it */
                len += (int)n;
            }
            id = cw_lang_store(text, (size_t)len);
        }
    }
    errno = saved;
    return id;
}

uint32_t cw_jvm_stack(void)
{
    JavaVMp vm = the_jvm();
    return CW_LIKELY(vm == NULL) ? 0 : jvm_stack_of(vm);
}
