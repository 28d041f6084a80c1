/* A libev server whose read callback stops watching at EOF and forgets close().  Prints PORT n,
 * then ACCEPT fd cport per client; ends when stdin closes. */
#include <arpa/inet.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    char buf[4096];
    ssize_t n = recv(w->fd, buf, sizeof buf, 0);
    if (n <= 0) {
        ev_io_stop(loop, w); /* the bug: no close(w->fd) */
        free(w);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    int fd = accept(w->fd, (struct sockaddr *)&peer, &len);
    if (fd < 0) return;
    printf("ACCEPT %d %d\n", fd, ntohs(peer.sin_port));
    ev_io *c = malloc(sizeof *c);
    ev_io_init(c, read_cb, fd, EV_READ);
    ev_io_start(loop, c);
}

static void stdin_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    char c[64];
    if (read(w->fd, c, sizeof c) <= 0) ev_break(loop, EVBREAK_ALL);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct ev_loop *loop = EV_DEFAULT;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 16) != 0) return 1;
    socklen_t len = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &len);
    printf("PORT %d\n", ntohs(a.sin_port));
    ev_io lw, in;
    ev_io_init(&lw, accept_cb, lfd, EV_READ);
    ev_io_start(loop, &lw);
    ev_io_init(&in, stdin_cb, 0, EV_READ);
    ev_io_start(loop, &in);
    ev_run(loop, 0);
    return 0;
}
