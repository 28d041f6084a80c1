/*
 * Event loops: in a program built on libuv, libevent or libev, the system calls are made by the
 * library before it calls the program back, so neither a birth's stack nor an EOF's names the
 * program's own code.  The calls that hand the library a descriptor and the program's callbacks
 * do: they are defined here and forwarded to the library, and what they were given (the
 * callbacks, the stack of the call) is kept beside the descriptor's slot (shared/owners.h).
 *
 * Only for these libraries loaded as shared objects (a static copy, as in Node.js, never calls
 * through here).  A program that does not use them never calls these; a lookup that finds no
 * real function returns the library's own error value rather than crash.  The library's own
 * callbacks (libevent's bufferevent and listener internals call event_assign) are not the
 * program's: they are left out.
 */
#define _GNU_SOURCE
#include "shared/region.h"
#include "unwind/stacks.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <sys/types.h>

#pragma GCC visibility push(default)

/* The libraries' types, as far as the calls below need them (pointers only, except libev's
 * watcher, whose public fields are read). */
typedef struct uv_stream_s uv_stream_t;
typedef struct uv_handle_s uv_handle_t;
typedef void (*uv_connection_cb)(uv_stream_t *, int);
typedef void (*uv_alloc_cb)(uv_handle_t *, size_t, void *);
typedef void (*uv_read_cb)(uv_stream_t *, ssize_t, const void *);
int uv_listen(uv_stream_t *stream, int backlog, uv_connection_cb cb);
int uv_accept(uv_stream_t *server, uv_stream_t *client);
int uv_read_start(uv_stream_t *stream, uv_alloc_cb alloc_cb, uv_read_cb read_cb);
int uv_fileno(const uv_handle_t *handle, int *fd);

struct event;
struct event_base;
struct bufferevent;
struct evconnlistener;
struct sockaddr;
typedef void (*event_callback_fn)(int, short, void *);
typedef void (*bufferevent_data_cb)(struct bufferevent *, void *);
typedef void (*bufferevent_event_cb)(struct bufferevent *, short, void *);
typedef void (*evconnlistener_cb)(struct evconnlistener *, int, struct sockaddr *, int, void *);
struct event *event_new(struct event_base *base, int fd, short events, event_callback_fn cb, void *arg);
int event_assign(struct event *ev, struct event_base *base, int fd, short events, event_callback_fn cb, void *arg);
struct bufferevent *bufferevent_socket_new(struct event_base *base, int fd, int options);
void bufferevent_setcb(struct bufferevent *bev, bufferevent_data_cb readcb, bufferevent_data_cb writecb,
                       bufferevent_event_cb eventcb, void *cbarg);
int bufferevent_getfd(struct bufferevent *bev);
struct evconnlistener *evconnlistener_new(struct event_base *base, evconnlistener_cb cb, void *ptr, unsigned flags,
                                          int backlog, int fd);
struct evconnlistener *evconnlistener_new_bind(struct event_base *base, evconnlistener_cb cb, void *ptr,
                                               unsigned flags, int backlog, const struct sockaddr *sa, int socklen);
int evconnlistener_get_fd(struct evconnlistener *lev);

/* libev's ev_io as ev.h 4.x lays it out by default (EV_COMMON `void *data`, priorities on):
 * active, pending, priority, data, cb, next, fd, events. */
struct ev_loop;
struct ev_io_public {
    int active, pending, priority;
    void *data;
    void (*cb)(struct ev_loop *, struct ev_io_public *, int);
    void *next;
    int fd, events;
};
void ev_io_start(struct ev_loop *loop, struct ev_io_public *w);

#pragma GCC visibility pop

static const char *const uv_libs[] = {"libuv.so.1", NULL};
static const char *const event_libs[] = {"libevent-2.1.so.7", "libevent_core-2.1.so.7", NULL};
static const char *const ev_libs[] = {"libev.so.4", NULL};

/* The real function: the next definition after ours or, for a library a plugin loaded with
 * RTLD_LOCAL (out of the global scope), that library's own.  NULL if there is none. */
static void *loop_real(const char *name, const char *const *libs)
{
    void *p = dlsym(RTLD_NEXT, name);
    for (; p == NULL && *libs != NULL; libs++) {
        void *h = dlopen(*libs, RTLD_LAZY | RTLD_NOLOAD);
        if (h == NULL) continue;
        p = dlsym(h, name);
        dlclose(h);
    }
    return p;
}

#define LOOP_REAL(fn, libs)                                                                          \
    static _Atomic(__typeof__(fn) *) real_##fn##_ptr;                                                \
    __typeof__(fn) *real_##fn = atomic_load_explicit(&real_##fn##_ptr, memory_order_relaxed);         \
    if (CW_UNLIKELY(real_##fn == NULL)) {                                                            \
        int saved_ = errno;                                                                          \
        real_##fn = (__typeof__(fn) *)loop_real(#fn, libs);                                         \
        errno = saved_;                                                                              \
        atomic_store_explicit(&real_##fn##_ptr, real_##fn, memory_order_relaxed);                    \
    }

/* The loaded object holding addr: its lowest and highest address, for telling the library's own
 * callbacks from the program's. */
struct span {
    uintptr_t addr, lo, hi;
};
static int find_span(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct span *s = data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD) continue;
        uintptr_t a = info->dlpi_addr + ph->p_vaddr;
        if (a < lo) lo = a;
        if (a + ph->p_memsz > hi) hi = a + ph->p_memsz;
    }
    if (s->addr < lo || s->addr >= hi) return 0;
    s->lo = lo;
    s->hi = hi;
    return 1;
}

/* One per library: where its code is. */
struct lib_span {
    _Atomic int state; /* 0 unknown, 1 being found, 2 known */
    uintptr_t lo, hi;
};
static struct lib_span uv_span, event_span, ev_span;

static int inside(struct lib_span *l, const void *real_fn, uintptr_t pc)
{
    int st = atomic_load_explicit(&l->state, memory_order_acquire);
    if (st == 0 && atomic_compare_exchange_strong(&l->state, &st, 1)) {
        struct span s = {(uintptr_t)real_fn, 0, 0};
        dl_iterate_phdr(find_span, &s);
        l->lo = s.lo;
        l->hi = s.hi;
        atomic_store_explicit(&l->state, 2, memory_order_release);
        st = 2;
    }
    return st == 2 && pc >= l->lo && pc < l->hi;
}

/* Record a registration on fd: the program's callbacks among cbs (the library's own dropped),
 * and, when there is one of the program's (or `always`), the stack of the call. */
static void registered(int fd, unsigned call, uintptr_t cbs[CW_CB_COUNT], struct lib_span *lib, const void *real_fn,
                       int always)
{
    if (fd < 0 || cw_in_lib || cw_slot_peek(fd) == NULL) return;
    int saved = errno;
    int any = always;
    for (int i = CW_CB_CONNECTION; i < CW_CB_COUNT; i++) {
        if (cbs[i] != 0 && inside(lib, real_fn, cbs[i])) cbs[i] = 0;
        any |= cbs[i] != 0;
    }
    if (any) {
        cw_in_lib++;
        uint32_t stack = cw_stack_capture();
        cw_owner_register(fd, call, cbs, stack);
        cw_in_lib--;
    }
    errno = saved;
}

/* ---- libuv ---------------------------------------------------------------- */

static int uv_fd(const void *handle)
{
    LOOP_REAL(uv_fileno, uv_libs);
    int fd = -1;
    if (real_uv_fileno == NULL || handle == NULL || real_uv_fileno((const uv_handle_t *)handle, &fd) != 0) return -1;
    return fd;
}

int uv_listen(uv_stream_t *stream, int backlog, uv_connection_cb cb)
{
    LOOP_REAL(uv_listen, uv_libs);
    if (real_uv_listen == NULL) return -ENOSYS;
    int r = real_uv_listen(stream, backlog, cb);
    if (r == 0) {
        uintptr_t cbs[CW_CB_COUNT] = {[CW_CB_CONNECTION] = (uintptr_t)cb};
        registered(uv_fd(stream), CW_REG_UV_LISTEN, cbs, &uv_span, (const void *)real_uv_listen, 0);
    }
    return r;
}

int uv_accept(uv_stream_t *server, uv_stream_t *client)
{
    LOOP_REAL(uv_accept, uv_libs);
    if (real_uv_accept == NULL) return -ENOSYS;
    int r = real_uv_accept(server, client);
    if (r == 0) {
        uintptr_t cbs[CW_CB_COUNT] = {0};
        registered(uv_fd(client), CW_REG_UV_ACCEPT, cbs, &uv_span, (const void *)real_uv_accept, 1);
    }
    return r;
}

int uv_read_start(uv_stream_t *stream, uv_alloc_cb alloc_cb, uv_read_cb read_cb)
{
    LOOP_REAL(uv_read_start, uv_libs);
    if (real_uv_read_start == NULL) return -ENOSYS;
    int r = real_uv_read_start(stream, alloc_cb, read_cb);
    if (r == 0) {
        uintptr_t cbs[CW_CB_COUNT] = {[CW_CB_READ] = (uintptr_t)read_cb};
        registered(uv_fd(stream), CW_REG_UV_READ_START, cbs, &uv_span, (const void *)real_uv_read_start, 0);
    }
    return r;
}

/* ---- libevent -------------------------------------------------------------- */

struct event *event_new(struct event_base *base, int fd, short events, event_callback_fn cb, void *arg)
{
    LOOP_REAL(event_new, event_libs);
    if (real_event_new == NULL) return NULL;
    struct event *ev = real_event_new(base, fd, events, cb, arg);
    if (ev != NULL) {
        uintptr_t cbs[CW_CB_COUNT] = {[CW_CB_EVENT] = (uintptr_t)cb};
        registered(fd, CW_REG_EVENT_NEW, cbs, &event_span, (const void *)real_event_new, 0);
    }
    return ev;
}

int event_assign(struct event *ev, struct event_base *base, int fd, short events, event_callback_fn cb, void *arg)
{
    LOOP_REAL(event_assign, event_libs);
    if (real_event_assign == NULL) return -1;
    int r = real_event_assign(ev, base, fd, events, cb, arg);
    if (r == 0) {
        uintptr_t cbs[CW_CB_COUNT] = {[CW_CB_EVENT] = (uintptr_t)cb};
        registered(fd, CW_REG_EVENT_ASSIGN, cbs, &event_span, (const void *)real_event_assign, 0);
    }
    return r;
}

struct bufferevent *bufferevent_socket_new(struct event_base *base, int fd, int options)
{
    LOOP_REAL(bufferevent_socket_new, event_libs);
    if (real_bufferevent_socket_new == NULL) return NULL;
    struct bufferevent *bev = real_bufferevent_socket_new(base, fd, options);
    if (bev != NULL) {
        uintptr_t cbs[CW_CB_COUNT] = {0};
        registered(fd, CW_REG_BEV_SOCKET_NEW, cbs, &event_span, (const void *)real_bufferevent_socket_new, 1);
    }
    return bev;
}

void bufferevent_setcb(struct bufferevent *bev, bufferevent_data_cb readcb, bufferevent_data_cb writecb,
                       bufferevent_event_cb eventcb, void *cbarg)
{
    LOOP_REAL(bufferevent_setcb, event_libs);
    if (real_bufferevent_setcb == NULL) return;
    real_bufferevent_setcb(bev, readcb, writecb, eventcb, cbarg);
    LOOP_REAL(bufferevent_getfd, event_libs);
    if (bev == NULL || real_bufferevent_getfd == NULL) return;
    uintptr_t cbs[CW_CB_COUNT] = {
        [CW_CB_READ] = (uintptr_t)readcb, [CW_CB_WRITE] = (uintptr_t)writecb, [CW_CB_EVENT] = (uintptr_t)eventcb};
    int saved = errno;
    int fd = real_bufferevent_getfd(bev);
    errno = saved;
    registered(fd, CW_REG_BEV_SETCB, cbs, &event_span, (const void *)real_bufferevent_setcb, 0);
}

static void listener_registered(struct evconnlistener *lev, unsigned call, evconnlistener_cb cb, const void *real_fn)
{
    LOOP_REAL(evconnlistener_get_fd, event_libs);
    if (lev == NULL || real_evconnlistener_get_fd == NULL) return;
    uintptr_t cbs[CW_CB_COUNT] = {[CW_CB_CONNECTION] = (uintptr_t)cb};
    registered(real_evconnlistener_get_fd(lev), call, cbs, &event_span, real_fn, 0);
}

struct evconnlistener *evconnlistener_new(struct event_base *base, evconnlistener_cb cb, void *ptr, unsigned flags,
                                          int backlog, int fd)
{
    LOOP_REAL(evconnlistener_new, event_libs);
    if (real_evconnlistener_new == NULL) return NULL;
    struct evconnlistener *lev = real_evconnlistener_new(base, cb, ptr, flags, backlog, fd);
    listener_registered(lev, CW_REG_EVCONNLISTENER_NEW, cb, (const void *)real_evconnlistener_new);
    return lev;
}

struct evconnlistener *evconnlistener_new_bind(struct event_base *base, evconnlistener_cb cb, void *ptr,
                                               unsigned flags, int backlog, const struct sockaddr *sa, int socklen)
{
    LOOP_REAL(evconnlistener_new_bind, event_libs);
    if (real_evconnlistener_new_bind == NULL) return NULL;
    struct evconnlistener *lev = real_evconnlistener_new_bind(base, cb, ptr, flags, backlog, sa, socklen);
    listener_registered(lev, CW_REG_EVCONNLISTENER_NEW_BIND, cb, (const void *)real_evconnlistener_new_bind);
    return lev;
}

/* ---- libev ------------------------------------------------------------------ */

void ev_io_start(struct ev_loop *loop, struct ev_io_public *w)
{
    LOOP_REAL(ev_io_start, ev_libs);
    if (real_ev_io_start == NULL) return;
    real_ev_io_start(loop, w);
    /* The watcher is the program's, and libev has just read the same fields. */
    if (w == NULL) return;
    uintptr_t cbs[CW_CB_COUNT] = {[CW_CB_EVENT] = (uintptr_t)w->cb};
    registered(w->fd, CW_REG_EV_IO_START, cbs, &ev_span, (const void *)real_ev_io_start, 0);
}
