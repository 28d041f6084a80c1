/* Both ends of each tracked connection, per descriptor (shared/peers.c). */
#ifndef CLOSEWAIT_PEERS_H
#define CLOSEWAIT_PEERS_H
#include "base.h"
#include "sys/sockets.h"

/* Both ends of a connection, kept while the connection is up: once both sides have closed
 * (shutdown without close, a reset after EOF) the socket is in CLOSE, in no dump, and
 * getpeername() has nothing to say.  Written by shutdown() and by the watcher from its dumps. */
struct cw_peer {
    uint32_t seq;
    uint16_t family, port;  /* family 0: not known yet */
    uint16_t lport, pad;
    uint8_t addr[16], laddr[16];
    uint32_t pad2;
};
/* The side table's entries are written by the shutdown() hook, copied whole with relaxed atomic
 * words. */
CW_HIDDEN void cw_peer_store(struct cw_peer *slot, const struct cw_peer *value);
CW_HIDDEN void cw_peer_load(const struct cw_peer *slot, struct cw_peer *value);
CW_HIDDEN int cw_peer_from_fd(int fd, struct cw_peer *out);
/* This process's peer-address side table, per fd, beside its descriptor table. */
CW_HIDDEN struct cw_peer *cw_peer_slot(int fd);
CW_HIDDEN void cw_peer_format(const struct cw_peer *p, char *out, size_t cap);
CW_HIDDEN void cw_peer_format_local(const struct cw_peer *p, char *out, size_t cap);
/* The ends of a dumped socket, as a peer entry. */
CW_HIDDEN void cw_peer_from_sock(const struct cw_sock *k, uint32_t seq, struct cw_peer *out);
#endif
