/*
 * The same accept() call site reached through two different callers, alternately, at the same
 * stack depth: every leaked connection's open stack must name the caller it really came from
 * (a call-site cache must never hand one path's stack to the other).
 *   two_paths N   -> prints "PORT p", then "LEAK fd a|b" per connection, leaks them all
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static __attribute__((noinline)) int accept_conn(int l)
{
    int c = accept(l, NULL, NULL);
    __asm__ volatile("" ::: "memory");
    return c;
}

static __attribute__((noinline)) int path_a(int l)
{
    int c = accept_conn(l);
    __asm__ volatile("" ::: "memory");
    return c;
}

static __attribute__((noinline)) int path_b(int l)
{
    int c = accept_conn(l);
    __asm__ volatile("" ::: "memory");
    return c;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 6;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 64) != 0) return 1;
    getsockname(l, (struct sockaddr *)&a, &len);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        int c = (i % 3 == 2) ? path_b(l) : path_a(l);
        if (c < 0) return 1;
        printf("LEAK %d %c\n", c, (i % 3 == 2) ? 'b' : 'a');
        fflush(stdout);
    }
    sleep(3);
    return 0;
}
