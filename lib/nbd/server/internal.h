/* SPDX-License-Identifier: MIT */
/* What the server's files share: exports, the socket ops table,
 * connections, metadata contexts, requests and the reply helpers. */
#ifndef PRL_NBD_SERVER_INTERNAL_H
#define PRL_NBD_SERVER_INTERNAL_H

#include "nbd/errors.h"
#include "nbd/server/server.h"
#include "nbd/wire.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Largest payload of a request or a reply's data (the protocol's
 * portable maximum); advertised as the maximum block size. */
#define PRL_NBD_MAX_PAYLOAD (32u << 20)
/* Option data we parse; longer options are drained and refused. */
#define PRL_NBD_MAX_OPTION (64u << 10)
/* Option data we are willing to drain; longer drops the connection. */
#define PRL_NBD_MAX_DRAIN (16u << 20)
/* Options one connection may send before it is dropped. */
#define PRL_NBD_MAX_OPTIONS 512u
/* Metadata contexts one connection may select at once. */
#define PRL_NBD_MAX_META 64u
/* Descriptors in one block status chunk (the spec asks <= 2^20); the
 * client asks again from where the reply stopped. */
#define PRL_NBD_MAX_EXTENTS 16384u
/* Bytes of the per-connection receive buffer. */
#define PRL_NBD_RBUF_SIZE (64u << 10)
/* Worker data buffers up to this size are kept between requests. */
#define PRL_NBD_KEEP_BUF (4u << 20)

struct prl_nbd_export {
    char *name;
    char *description; /* NULL: none */
    struct prl_block *bs;
    uint64_t size;
    unsigned caps; /* PRL_CAP_* */
    bool read_only;
    bool serialize;       /* driver lacks PRL_CAP_PARALLEL */
    pthread_mutex_t lock; /* held around block calls if serialize */
    uint32_t min_block;   /* bytes, power of two */
    uint32_t pref_block;  /* bytes, power of two >= 512 */
    bool alloc_depth;     /* offers qemu:allocation-depth (-A) */
    /* qemu:dirty-bitmap:NAME contexts, one per bitmap given to
     * prl_nbd_server_add_bitmap, in that order. */
    struct prl_nbd_meta_def *bitmaps;
    size_t n_bitmaps;
};

/* ---- sockets: an ops table so TLS can replace the plain one ---- */

struct prl_nbd_sock;

struct prl_nbd_sock_ops {
    /* Receive at most |len| (> 0) bytes; with |all|, preferably wait
     * for all of them (fewer calls for large payloads).  Returns the
     * count (> 0), 0 at end of stream or after shutdown_read, or a
     * negative errno. */
    ssize_t (*recv)(struct prl_nbd_sock *s, void *buf, size_t len, bool all);
    /* Send every byte of |iov| (modified).  0 or a negative errno. */
    int (*sendv)(struct prl_nbd_sock *s, struct iovec *iov, int iovcnt);
    /* Zero-copy send, NULL where the layer must see the bytes (TLS):
     * every byte of |iov| (modified), then |len| bytes of file |fd| from
     * byte |off| without copying them to user space.  With |more|, the
     * message goes on after this call (the stack may hold the tail back
     * for a fuller segment).  0, -ENODATA when the file ends before
     * |len| bytes, or a negative errno; on failure an unknown part of
     * it went out. */
    int (*sendfile)(struct prl_nbd_sock *s, struct iovec *iov, int iovcnt,
                    int fd, uint64_t off, uint64_t len, bool more);
    /* Bytes already received and buffered by this layer (TLS records),
     * which poll() on the descriptor would not show. */
    size_t (*pending)(struct prl_nbd_sock *s);
    /* Make blocked and future recv calls return 0.  Thread-safe. */
    void (*shutdown_read)(struct prl_nbd_sock *s);
    /* Make every further send and recv fail at once.  Thread-safe. */
    void (*shutdown_all)(struct prl_nbd_sock *s);
    /* End the stream politely (TLS: send close_notify) when the
     * connection is done; no other thread uses the socket any more. */
    void (*bye)(struct prl_nbd_sock *s);
    /* Release the layer; closes the descriptors when |owned|. */
    void (*close)(struct prl_nbd_sock *s);
};

struct prl_nbd_sock {
    const struct prl_nbd_sock_ops *ops;
    int rfd, wfd;     /* the same for a socket */
    bool owned;       /* close() closes the descriptors */
    bool is_socket;   /* shutdown(2) works on rfd */
    bool r_tcp;       /* rfd is a TCP socket: SO_RCVLOWAT works */
    int rcvlowat;     /* rfd's SO_RCVLOWAT as last set (1 at rest) */
    bool w_socket;    /* wfd is a socket: sendmsg(2) */
    bool w_sendfile;  /* large reads go out with sendfile(2): not on TCP
                       * loopback, see prl_nbd_sock_plain */
    int wake_fd;      /* readable when the server stops */
    atomic_bool down; /* shutdown_read was called */
    void *opaque;     /* the layer's state (TLS session) */
    /* Adaptive busy polling of a socket's short receives (request
     * headers), set for the transmission phase: a receive that finds
     * nothing tries again, without sleeping, for up to poll_ns before it
     * blocks.  poll_ns is poll_max_ns while the running average of the
     * receives' waits (poll_avg) is within it, else 0, so a connection
     * whose client pauses longer never spins.  poll_max_ns 0: off.
     * Used under the reader's lock. */
    int64_t poll_max_ns;
    int64_t poll_ns;
    int64_t poll_avg; /* each wait counted as at most
                       * PRL_NBD_POLL_WAIT_CAP budgets */
    /* Receives that could be polled, were polled, found data polling. */
    uint64_t poll_recvs, poll_spins, poll_hits;
};

/* A wait counts in the average as at most this many budgets, and a
 * connection starts as if its client had paused that long. */
#define PRL_NBD_POLL_WAIT_CAP 4

/* Set up the plain (unencrypted) layer over |rfd|/|wfd|. */
void prl_nbd_sock_plain(struct prl_nbd_sock *s, int rfd, int wfd, bool owned,
                        int wake_fd);
/* The plain layer's ops, which the TLS layer uses as its transport. */
extern const struct prl_nbd_sock_ops prl_nbd_sock_plain_ops;

/* ---- metadata contexts ---- */

struct prl_nbd_meta_def {
    const char *name;
    /* Whether |exp| offers it. */
    bool (*available)(const struct prl_nbd_export *exp);
    /* Status of the longest uniform prefix of [offset, offset+length)
     * (length > 0, inside the export): *plen in 1..length. */
    int (*status)(struct prl_nbd_export *exp,
                  const struct prl_nbd_meta_def *def, uint64_t offset,
                  uint64_t length, uint64_t *plen, uint32_t *status);
    /* Status to report for a block that straddles two extents. */
    uint32_t (*merge)(uint32_t a, uint32_t b);
    const char *bitmap; /* qemu:dirty-bitmap: the bitmap's name */
};

/* Fill |def| as the context qemu:dirty-bitmap:|bitmap| (a canonical
 * bitmap name); def->name is allocated, NULL when out of memory. */
void prl_nbd_meta_bitmap_def(struct prl_nbd_meta_def *def, const char *bitmap);
void prl_nbd_meta_bitmap_free(struct prl_nbd_meta_def *def);

struct prl_nbd_meta_sel {
    uint32_t id; /* as sent in NBD_REP_META_CONTEXT */
    const struct prl_nbd_meta_def *def;
};

/* Call |fn| for every context of |exp| that |query| selects: exact
 * names, and with |wildcards| a query ending in ':' selects every name
 * that starts with it and "" selects all.  Returns the count. */
size_t prl_nbd_meta_match(
    const struct prl_nbd_export *exp, const char *query, bool wildcards,
    void (*fn)(void *opaque, const struct prl_nbd_meta_def *def), void *opaque);

/* ---- connections ---- */

struct prl_nbd_server;

struct prl_nbd_conn {
    struct prl_nbd_server *srv;
    struct prl_nbd_sock sock;
    char peer[80];             /* for log messages */
    struct prl_nbd_conn *next; /* server's list, under srv->lock */

    /* Negotiated in the handshake. */
    bool fixed_newstyle;
    bool no_zeroes;
    bool structured;
    bool extended; /* implies structured chunk types */
    unsigned n_options;
    struct prl_nbd_export *exp;      /* chosen export */
    struct prl_nbd_export *meta_exp; /* export the contexts were set for */
    struct prl_nbd_meta_sel meta[PRL_NBD_MAX_META];
    size_t n_meta;
    uint32_t next_meta_id;
    uint16_t tflags;      /* transmission flags sent */
    bool tls;             /* STARTTLS succeeded: conn->sock is TLS */
    bool in_transmission; /* under the server's lock */

    /* Transmission. */
    pthread_mutex_t read_lock; /* lock order: read_lock, then send_lock */
    uint8_t *rbuf;             /* received, not yet parsed: [rpos,rend) */
    size_t rpos, rend;
    bool read_done; /* under read_lock: no more requests */
    pthread_mutex_t send_lock;
    atomic_bool dead; /* a send failed: drop the connection */
    bool got_disc;
    /* Serve cheap batches while still holding read_lock (no hand-off
     * between workers) until one turns out slow; see transmit.c. */
    atomic_bool inline_ok;
    atomic_uint fast_batches; /* fast in a row since the last slow */
};

/* A parsed request; the payload (if any) is in the worker's buffer. */
struct prl_nbd_req {
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint64_t length;      /* effect length, or payload length */
    uint32_t payload_len; /* bytes of payload in the buffer */
    uint32_t error;       /* PRL_NBD_E* decided while reading */
    const char *error_msg;
};

/* Requests one worker takes off the socket at once, when they are
 * already received in full: they are served in order by that worker and
 * their replies leave in one send, so a burst of small requests costs one
 * wake-up and one sendmsg instead of one each. */
#define PRL_NBD_BATCH 16
/* A batch stops growing past this many bytes of data to move. */
#define PRL_NBD_BATCH_BYTES (256u << 10)
/* Reply queue of a worker: iovecs, and bytes for the small ones. */
#define PRL_NBD_OUT_IOV 128
#define PRL_NBD_OUT_BYTES 8192
/* Queued replies are sent once they carry this much data. */
#define PRL_NBD_OUT_FLUSH (1u << 20)

struct prl_nbd_slot {
    struct prl_nbd_req req;
    uint8_t *buf; /* its payload or read data */
    size_t buf_size;
};

struct prl_nbd_worker {
    struct prl_nbd_conn *conn;
    struct prl_nbd_pool *pool; /* the connection's workers (transmit.c) */
    pthread_t thread;
    uint8_t *buf; /* the current slot's buffer */
    size_t buf_size;
    void *scratch; /* descriptors, chunk headers */
    size_t scratch_size;
    struct prl_nbd_slot slots[PRL_NBD_BATCH];
    /* Replies not sent yet.  Small pieces are copied into out_bytes;
     * larger ones point into slot buffers, valid until the batch ends. */
    struct iovec out_iov[PRL_NBD_OUT_IOV];
    int out_n;
    uint8_t out_bytes[PRL_NBD_OUT_BYTES];
    size_t out_used;
    size_t out_total;
};

/* Grow the worker's buffers; -ENOMEM with a message on failure. */
int prl_nbd_worker_buf(struct prl_nbd_worker *w, size_t size);
int prl_nbd_worker_scratch(struct prl_nbd_worker *w, size_t size);
void prl_nbd_worker_trim(struct prl_nbd_worker *w);

/* handshake.c: negotiate until transmission.  0 with conn->exp set,
 * or a negative errno: the connection is to be closed. */
int prl_nbd_handshake(struct prl_nbd_conn *conn);

/* tls.c: after STARTTLS's ACK, run the TLS handshake on conn->sock,
 * check the client (certificate, authorization), and switch the
 * connection to the TLS layer.  |wait| (may be NULL) is called before
 * each read of the socket until prl_nbd_sock_tls_wait clears it: it
 * enforces the NBD handshake's time limit.  0, or a negative errno with a
 * message naming why (-EACCES: authentication or authorization failed);
 * the connection stays plain and is to be closed. */
struct prl_nbd_tls;
int prl_nbd_sock_tls_start(struct prl_nbd_conn *conn,
                           const struct prl_nbd_tls *tls,
                           int (*wait)(void *opaque), void *wait_opaque);
/* Replace the wait hook of a TLS socket (no-op on a plain one). */
void prl_nbd_sock_tls_wait(struct prl_nbd_sock *s, int (*wait)(void *opaque),
                           void *wait_opaque);

/* Transmission flags of |exp| for what |conn| negotiated. */
uint16_t prl_nbd_export_tflags(const struct prl_nbd_conn *conn,
                               const struct prl_nbd_export *exp);

/* transmit.c: serve requests with the configured number of workers
 * until the client leaves or the server stops.  Flushes the export
 * when the connection ends. */
void prl_nbd_transmit(struct prl_nbd_conn *conn);

/* reply.c */
/* Take the connection's send lock for a reply sent in several calls
 * of the socket ops: 0, or -EPIPE (unlocked) when the connection is
 * already dead. */
int prl_nbd_send_begin(struct prl_nbd_conn *conn);
/* Release it; |r| < 0 (the reply could not be sent whole) marks the
 * connection dead and shuts its socket down.  Returns |r|. */
int prl_nbd_send_end(struct prl_nbd_conn *conn, int r);
/* Send iovecs whole under the connection's send lock. */
int prl_nbd_send_locked(struct prl_nbd_conn *conn, struct iovec *iov,
                        int iovcnt);
/* Queue a reply message on the worker (it goes out whole, in order with
 * the worker's other replies, by the next prl_nbd_out_flush at the
 * latest).  Pieces of up to 512 bytes are copied; longer ones must stay
 * valid until the flush. */
int prl_nbd_out(struct prl_nbd_worker *w, const struct iovec *iov, int n);
/* Send everything queued on the worker. */
int prl_nbd_out_flush(struct prl_nbd_worker *w);
/* Fill a reply chunk header for the negotiated style (structured or
 * extended) into |hdr| (32 bytes); returns its size. */
size_t prl_nbd_chunk_header(const struct prl_nbd_conn *conn, void *hdr,
                            const struct prl_nbd_req *req, uint16_t flags,
                            uint16_t type, uint64_t length);
/* Success without data: simple reply or NONE chunk (queued). */
int prl_nbd_reply_ok(struct prl_nbd_worker *w, const struct prl_nbd_req *req);
/* Failure |error| (PRL_NBD_E*) with a message for structured clients
 * (queued). */
int prl_nbd_reply_error(struct prl_nbd_worker *w, const struct prl_nbd_req *req,
                        uint32_t error, const char *msg);

/* server.c */
bool prl_nbd_server_stopping(const struct prl_nbd_server *srv);
const struct prl_nbd_server_config *
prl_nbd_server_cfg(const struct prl_nbd_server *srv);
/* Look up an export by name; "" falls back to the first export. */
struct prl_nbd_export *prl_nbd_server_find(struct prl_nbd_server *srv,
                                           const char *name);
size_t prl_nbd_server_n_exports(const struct prl_nbd_server *srv);
struct prl_nbd_export *prl_nbd_server_export(struct prl_nbd_server *srv,
                                             size_t i);
/* Switch |conn| to another socket layer, under the server's lock (the
 * stop path calls the shutdown ops of every connection). */
void prl_nbd_server_conn_set_sock(struct prl_nbd_conn *conn,
                                  const struct prl_nbd_sock_ops *ops,
                                  void *opaque);
/* Log |what| about |conn| at info level, naming the peer. */
void prl_nbd_server_conn_log(const struct prl_nbd_conn *conn, const char *what);

#endif
