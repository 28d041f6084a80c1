/* A libevent server (bufferevent) that forgets bufferevent_free() on EOF: event_cb returns and the
 * connection stays open.  Prints PORT n, then ACCEPT fd cport per client; ends when stdin closes. */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static struct event_base *base;

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) return; /* the bug: no bufferevent_free(bev) */
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    (void)l;
    (void)len;
    (void)arg;
    printf("ACCEPT %d %d\n", (int)fd, ntohs(((struct sockaddr_in *)sa)->sin_port));
    struct bufferevent *bev = bufferevent_socket_new(base, fd, 0);
    bufferevent_setcb(bev, read_cb, NULL, event_cb, NULL);
    bufferevent_enable(bev, EV_READ);
}

static void stdin_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    char c[64];
    if (read(fd, c, sizeof c) <= 0) event_base_loopbreak(base);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    base = event_base_new();
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    struct evconnlistener *l = evconnlistener_new_bind(base, accept_cb, NULL, LEV_OPT_REUSEABLE, 16,
                                                       (struct sockaddr *)&sin, sizeof sin);
    if (l == NULL) return 1;
    socklen_t len = sizeof sin;
    getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &len);
    printf("PORT %d\n", ntohs(sin.sin_port));
    struct event *in = event_new(base, 0, EV_READ | EV_PERSIST, stdin_cb, NULL);
    event_add(in, NULL);
    event_base_dispatch(base);
    return 0;
}
