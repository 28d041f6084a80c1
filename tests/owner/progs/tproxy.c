/* A threaded proxy whose upstream connection has no timeout (tinyproxy #414): each client gets a
 * thread that reads its request, opens the upstream (opensock), forwards the request and waits for
 * the reply in read().  A silent upstream keeps the thread there; a client that gives up leaves
 * its socket in CLOSE_WAIT, and nothing else will ever read or close it.
 *
 *   tproxy UPSTREAM_PORT [drop]   prints PORT n, then per client: ACCEPT fd cport, WORKER tid,
 *                                 UPSTREAM fd; ends when stdin closes.  With `drop` the thread
 *                                 reads the request and ends without closing the client (the
 *                                 owner is gone).  A request "BYE" is answered by closing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int upstream_port;
static int drop_mode;

/* The bug: no SO_RCVTIMEO on the upstream socket. */
__attribute__((noinline)) static int opensock(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0); /* @opensock */
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

__attribute__((noinline)) static void relay(int client, int upstream)
{
    char buf[4096];
    ssize_t n = read(upstream, buf, sizeof buf); /* @relay_read */
    if (n > 0 && write(client, buf, (size_t)n) < 0) perror("write");
    close(upstream);
    close(client);
}

static void *serve(void *arg)
{
    int client = (int)(intptr_t)arg;
    pthread_setname_np(pthread_self(), "relay");
    printf("WORKER %ld\n", (long)syscall(SYS_gettid));
    char req[1024];
    ssize_t n = read(client, req, sizeof req);
    if (n <= 0) {
        close(client);
        return NULL;
    }
    if (n >= 3 && memcmp(req, "BYE", 3) == 0) {
        close(client); /* a short-lived thread: its record must be given back */
        printf("BYE %d\n", client);
        return NULL;
    }
    if (drop_mode) {
        printf("DROPPED %d\n", client);
        return NULL; /* the bug: the client is never closed */
    }
    int up = opensock("127.0.0.1", upstream_port);
    if (up < 0) {
        close(client);
        return NULL;
    }
    if (write(up, req, (size_t)n) < 0) perror("write upstream");
    printf("UPSTREAM %d\n", up);
    relay(client, up);
    return NULL;
}

static void *acceptor(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int c = accept(lfd, (struct sockaddr *)&peer, &len);
        if (c < 0) continue;
        printf("ACCEPT %d %d\n", c, ntohs(peer.sin_port));
        pthread_t t;
        pthread_create(&t, NULL, serve, (void *)(intptr_t)c);
        pthread_detach(t);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) return 2;
    upstream_port = atoi(argv[1]);
    drop_mode = argc > 2 && strcmp(argv[2], "drop") == 0;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 16) != 0) return 1;
    socklen_t len = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &len);
    printf("PORT %d\n", ntohs(a.sin_port));
    pthread_t t;
    pthread_create(&t, NULL, acceptor, (void *)(intptr_t)lfd);
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
