/* A program that uses no event-loop library, yet finds the library's event-loop entry points by
 * name (dlsym(RTLD_DEFAULT)) and calls them: they must answer as the library would when it is
 * missing (an error value), never crash.  Prints one line per call: NAME absent | NAME RESULT. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

typedef int (*int3)(void *, void *, void *);
typedef void *(*ptr5)(void *, int, short, void *, void *);
typedef void (*void5)(void *, void *, void *, void *, void *);
typedef void (*void2)(void *, void *);

int main(void)
{
    const char *ints[] = {"uv_listen", "uv_accept", "uv_read_start"};
    for (unsigned i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int3 f = (int3)dlsym(RTLD_DEFAULT, ints[i]);
        if (f == NULL) printf("%s absent\n", ints[i]);
        else printf("%s %d\n", ints[i], f(NULL, NULL, NULL));
    }
    ptr5 en = (ptr5)dlsym(RTLD_DEFAULT, "event_new");
    if (en == NULL) printf("event_new absent\n");
    else printf("event_new %s\n", en(NULL, 5, 0, NULL, NULL) == NULL ? "null" : "object");
    void5 sc = (void5)dlsym(RTLD_DEFAULT, "bufferevent_setcb");
    if (sc == NULL) printf("bufferevent_setcb absent\n");
    else {
        sc(NULL, NULL, NULL, NULL, NULL);
        printf("bufferevent_setcb returned\n");
    }
    void2 io = (void2)dlsym(RTLD_DEFAULT, "ev_io_start");
    if (io == NULL) printf("ev_io_start absent\n");
    else {
        io(NULL, NULL);
        printf("ev_io_start returned\n");
    }
    return 0;
}
