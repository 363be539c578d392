/* SPDX-License-Identifier: MIT */
/* The NBD server as the tools see it: exports over block handles,
 * listeners, a run loop, and a stop that is safe in a signal handler. */
#ifndef PRL_NBD_SERVER_H
#define PRL_NBD_SERVER_H

#include "prl/block.h"

#include <stdbool.h>
#include <stdint.h>

struct prl_nbd_tls; /* nbd/tls.h */

struct prl_nbd_server;

enum prl_nbd_discard {
    PRL_NBD_DISCARD_IGNORE, /* NBD_CMD_TRIM succeeds and frees nothing */
    PRL_NBD_DISCARD_UNMAP,  /* trim and hole-punching zeroes free space */
};

struct prl_nbd_server_config {
    unsigned shared;          /* clients served at once (-e); 0 = no limit;
                               * the next one waits in the listen backlog */
    unsigned max_connections; /* open sockets at once, handshakes included;
                               * more are closed on accept; 0 = no cap */
    bool persistent;          /* keep serving after the last client (-t) */
    enum prl_nbd_discard discard;
    unsigned handshake_limit; /* seconds a client may take to reach
                               * transmission; 0 = unlimited */
    unsigned workers;         /* threads serving one connection; 0 = 8 */
    uint32_t poll_max_ns;     /* busy polling of each connection's socket
                               * between requests, at most this long
                               * (adaptive, see prl_nbd_sock); 0 = off */
    uint32_t min_block_size;  /* advertised minimum block, a power of two
                               * <= 65536; 0 = what the image needs */
    /* NULL: no TLS (NBD_OPT_STARTTLS is refused).  Otherwise every
     * client must upgrade with STARTTLS before any other option (the
     * spec's FORCEDTLS mode).  Not owned; outlives the server. */
    const struct prl_nbd_tls *tls;
};

/* Make a server with |cfg|.  Returns 0 and *out, or a negative errno. */
int prl_nbd_server_new(const struct prl_nbd_server_config *cfg,
                       struct prl_nbd_server **out);

/* Serve |bs| as |name| (may be "") with an optional |description|
 * (NULL: none).  The server takes |bs| in every case and closes it in
 * prl_nbd_server_free.  A handle without PRL_CAP_WRITE is a read-only
 * export.  -EEXIST when |name| is taken. */
int prl_nbd_server_add_export(struct prl_nbd_server *srv, const char *name,
                              const char *description, struct prl_block *bs);

/* Offer persistent bitmap |bitmap| (a UUID, any case) of export
 * |export_name| (exact name) as the context qemu:dirty-bitmap:NAME,
 * NAME being the bitmap's canonical name.  -ENOENT for an unknown export
 * or bitmap, -EINVAL for an inconsistent bitmap, -E2BIG past the cap;
 * a bitmap given twice is offered once. */
int prl_nbd_server_add_bitmap(struct prl_nbd_server *srv,
                              const char *export_name, const char *bitmap);

/* Offer the context qemu:allocation-depth on export |export_name| (exact
 * name), as qemu-nbd -A does; an export without it neither lists nor
 * selects it.  -ENOENT for an unknown export. */
int prl_nbd_server_export_depth(struct prl_nbd_server *srv,
                                const char *export_name);

/* Listen on TCP |addr| (NULL: every address) port |port|; every address
 * |addr| resolves to is bound.  TCP_NODELAY is set on accepted sockets. */
int prl_nbd_server_listen_tcp(struct prl_nbd_server *srv, const char *addr,
                              const char *port);
/* Listen on a Unix socket at |path| (created; removed by free). */
int prl_nbd_server_listen_unix(struct prl_nbd_server *srv, const char *path);
/* Adopt an already listening socket (socket activation).  The server
 * closes it. */
int prl_nbd_server_listen_fd(struct prl_nbd_server *srv, int fd);

/* Accept and serve clients until prl_nbd_server_stop, or, without
 * |persistent|, until the last client has left.  Returns when every
 * connection has finished (in-flight requests answered, exports
 * flushed).  0, or a negative errno when the loop itself failed. */
int prl_nbd_server_run(struct prl_nbd_server *srv);

/* Serve one client already connected on |rfd| (reads) and |wfd|
 * (writes), which may be the same descriptor, in the calling thread;
 * return when it leaves or the server stops.  The descriptors are not
 * closed. */
int prl_nbd_server_serve_fds(struct prl_nbd_server *srv, int rfd, int wfd);

/* Ask the server to stop: no new connections; open ones finish their
 * in-flight requests and end.  Async-signal-safe, idempotent. */
void prl_nbd_server_stop(struct prl_nbd_server *srv);

/* Close the listeners and every export (flush, mark clean).  Returns the
 * first error met closing an export (message set); NULL is a no-op. */
int prl_nbd_server_free(struct prl_nbd_server *srv);

#endif
