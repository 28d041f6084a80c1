/*
 * Threads created and destroyed at a high rate, each doing socket I/O: the acceptor starts a
 * short-lived thread per connection (read the request, answer, read EOF, close, exit), and
 * the main thread starts a short-lived client thread per connection (connect, send, read the
 * answer, close, exit), up to 32 of each at once.  Every answer must be right, nothing may
 * leak, and no thread may be lost.
 *
 * usage: h_threads [connections]
 */
#include "common.h"

#include <semaphore.h>
#include <stdatomic.h>

static int port, lfd;
static sem_t client_slots, server_slots;
static _Atomic long served, answered, errors;

static void *server_thread(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[64];
    int have = 0;
    while (have < 64) {
        ssize_t r = read(fd, buf + have, sizeof buf - (size_t)have);
        if (r <= 0) break;
        have += (int)r;
        if (memchr(buf, '\n', (size_t)have)) break;
    }
    if (have > 0 && buf[have - 1] == '\n') {
        for (int i = 0; i < have - 1; i++) buf[i] = (char)(buf[i] ^ 0x20);
        write_all(fd, buf, (size_t)have);
        if (drain_to_eof(fd) != 0) atomic_fetch_add(&errors, 1);
        atomic_fetch_add(&served, 1);
    } else {
        atomic_fetch_add(&errors, 1);
    }
    close(fd);
    sem_post(&server_slots);
    return NULL;
}

static void *acceptor(void *arg)
{
    long want = (long)(intptr_t)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    for (long i = 0; i < want; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR) { i--; continue; }
            atomic_fetch_add(&errors, 1);
            continue;
        }
        sem_wait(&server_slots);
        pthread_t t;
        while (pthread_create(&t, &attr, server_thread, (void *)(intptr_t)fd) != 0) sleep_ms(1);
    }
    pthread_attr_destroy(&attr);
    return NULL;
}

static void *client_thread(void *arg)
{
    long id = (long)(intptr_t)arg;
    int fd = connect_local(port);
    if (fd < 0) {
        atomic_fetch_add(&errors, 1);
        sem_post(&client_slots);
        return NULL;
    }
    char msg[64], want[64], got[64];
    int len = snprintf(msg, sizeof msg, "hello client %ld\n", id);
    for (int i = 0; i < len; i++) want[i] = (char)(i < len - 1 ? msg[i] ^ 0x20 : '\n');
    write_all(fd, msg, (size_t)len);
    int have = 0;
    while (have < len) {
        ssize_t r = read(fd, got + have, (size_t)(len - have));
        if (r <= 0) break;
        have += (int)r;
    }
    if (have == len && memcmp(got, want, (size_t)len) == 0) atomic_fetch_add(&answered, 1);
    else atomic_fetch_add(&errors, 1);
    close(fd);
    sem_post(&client_slots);
    return NULL;
}

int main(int argc, char **argv)
{
    long total = argc > 1 ? atol(argv[1]) : 3000;
    lfd = listen_local(4096, &port);
    if (lfd < 0) fail_setup("listen");
    sem_init(&client_slots, 0, 32);
    sem_init(&server_slots, 0, 32);
    int fds_before = count_fds_below(900);
    pthread_t acc;
    pthread_create(&acc, NULL, acceptor, (void *)(intptr_t)total);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    int64_t t0 = now_ms();
    for (long i = 0; i < total; i++) {
        sem_wait(&client_slots);
        pthread_t t;
        while (pthread_create(&t, &attr, client_thread, (void *)(intptr_t)i) != 0) sleep_ms(1);
    }
    pthread_join(acc, NULL);
    /* Wait for the last detached threads: every slot back. */
    for (int i = 0; i < 32; i++) sem_wait(&client_slots);
    for (int i = 0; i < 32; i++) sem_wait(&server_slots);
    int64_t ms = now_ms() - t0;
    close(lfd);
    int fds_after = count_fds_below(900);
    printf("# %ld connections, %ld threads in %lld ms\n", total, 2 * total, (long long)ms);
    printf("connections=%ld served=%ld answered=%ld errors=%ld\n", total, atomic_load(&served),
           atomic_load(&answered), atomic_load(&errors));
    printf("fds_left=%d\n", fds_after - (fds_before - 1));
    return atomic_load(&served) == total && atomic_load(&answered) == total &&
                   atomic_load(&errors) == 0 && fds_after == fds_before - 1
               ? 0
               : 1;
}
