/*
 * The peer-address side table: both ends of each tracked connection, kept while the connection is
 * up, because once both sides have closed (shutdown without close, a reset after EOF) the socket
 * is in CLOSE, in no dump, and getpeername() has nothing to say.  Written by the shutdown() and
 * EOF hooks and by the watcher from its dumps, with the same values for the same socket; copied
 * whole with relaxed atomic words.  Beside the descriptor table, chunk for chunk.
 */
#define _GNU_SOURCE
#include "shared/peers.h"
#include "shared/region.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int cw_peer_from_fd(int fd, struct cw_peer *out)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    struct sockaddr_storage ls;
    memset(&ls, 0, sizeof ls);
    socklen_t llen = sizeof ls;
    if (getsockname(fd, (struct sockaddr *)&ls, &llen) == 0 && ls.ss_family == ss.ss_family) {
        if (ls.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&ls;
            out->lport = ntohs(a->sin_port);
            memcpy(out->laddr, &a->sin_addr, 4);
        } else if (ls.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ls;
            out->lport = ntohs(a->sin6_port);
            memcpy(out->laddr, &a->sin6_addr, 16);
        }
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        out->family = AF_INET;
        out->port = ntohs(a->sin_port);
        memcpy(out->addr, &a->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        out->family = AF_INET6;
        out->port = ntohs(a->sin6_port);
        memcpy(out->addr, &a->sin6_addr, 16);
    } else {
        return -1;
    }
    return 0;
}

void cw_peer_format(const struct cw_peer *p, char *out, size_t cap)
{
    if (p->family == AF_INET || p->family == AF_INET6) {
        __be32 addr[4];
        memcpy(addr, p->addr, sizeof addr);
        cw_format_endpoint(p->family, addr, htons(p->port), out, cap);
    } else {
        snprintf(out, cap, "?");
    }
}

struct cw_peer *cw_peer_slot(int fd)
{
    unsigned c = (unsigned)fd / CW_CHUNK_SLOTS;
    struct cw_area *me = cw_me;
    if (fd < 0 || c >= CW_MAX_CHUNKS || me == NULL) return NULL;
    struct cw_peer *chunk = cw_pool_peers(atomic_load_explicit(&me->chunk[c], memory_order_acquire));
    return chunk != NULL ? &chunk[(unsigned)fd % CW_CHUNK_SLOTS] : NULL;
}

_Static_assert(sizeof(struct cw_peer) == 48, "six words");

void cw_peer_format_local(const struct cw_peer *p, char *out, size_t cap)
{
    if ((p->family == AF_INET || p->family == AF_INET6) && p->lport != 0) {
        __be32 addr[4];
        memcpy(addr, p->laddr, sizeof addr);
        cw_format_endpoint(p->family, addr, htons(p->lport), out, cap);
    } else {
        snprintf(out, cap, "?");
    }
}

void cw_peer_from_sock(const struct cw_sock *k, uint32_t seq, struct cw_peer *out)
{
    memset(out, 0, sizeof *out);
    out->seq = seq;
    out->family = k->family;
    out->port = ntohs(k->dport);
    out->lport = ntohs(k->sport);
    memcpy(out->addr, k->dst, 16);
    memcpy(out->laddr, k->src, 16);
}

void cw_peer_store(struct cw_peer *slot, const struct cw_peer *value)
{
    uint64_t w[6];
    memcpy(w, value, sizeof w);
    _Atomic uint64_t *dst = (_Atomic uint64_t *)(void *)slot;
    for (int i = 0; i < 6; i++) atomic_store_explicit(&dst[i], w[i], memory_order_relaxed);
}

void cw_peer_load(const struct cw_peer *slot, struct cw_peer *value)
{
    uint64_t w[6];
    const _Atomic uint64_t *src = (const _Atomic uint64_t *)(const void *)slot;
    for (int i = 0; i < 6; i++) w[i] = atomic_load_explicit(&src[i], memory_order_relaxed);
    memcpy(value, w, sizeof w);
}

