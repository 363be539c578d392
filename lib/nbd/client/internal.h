/* SPDX-License-Identifier: MIT */
/* Client internals shared by the connection, handshake and transmission
 * files: the client state and its byte I/O (plain or TLS). */
#ifndef PRL_NBD_CLIENT_INTERNAL_H
#define PRL_NBD_CLIENT_INTERNAL_H

#include "nbd/client/client.h"
#include "nbd/errors.h"

#include "nbd/client/gnutls-dl.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct prl_nbd_req;

/* Size of the receive buffer; larger reads bypass it. */
#define PRL_NBD_CL_RBUF (64u << 10)

/* Most dirty bitmaps negotiated on one connection. */
#define PRL_NBD_CL_MAX_BITMAPS 64

struct prl_nbd_cl_bitmap {
    char *name; /* without "qemu:dirty-bitmap:" */
    uint32_t id;
    bool has;
};

struct prl_nbd_client {
    int fd;
    gnutls_session_t gs; /* NULL until STARTTLS succeeded */
    gnutls_certificate_credentials_t x509;
    gnutls_psk_client_credentials_t psk;
    char *name;        /* the URI (or fd name), for messages */
    char *export_name; /* as sent to the server */
    /* Bytes received and not yet taken: only the thread that reads
     * replies (or runs the handshake) touches them. */
    uint8_t *rbuf; /* PRL_NBD_CL_RBUF bytes */
    size_t rpos, rlen;
    struct prl_nbd_export exp;
    /* Metadata context ids the server gave (valid when has_*). */
    uint32_t ctx_alloc, ctx_depth;
    /* qemu:dirty-bitmap: contexts: asked for during the handshake, then
     * only those the server granted. */
    struct prl_nbd_cl_bitmap *bitmaps;
    size_t n_bitmaps;
    /* Requests in flight (transmit.c): several threads may each have
     * one.  Lock order: send_lock is never taken with lock held. */
    pthread_mutex_t send_lock;   /* one request (header + payload) at a time */
    pthread_mutex_t lock;        /* guards the fields below */
    pthread_cond_t cond;         /* a reply was read, or the reader left */
    struct prl_nbd_req *pending; /* in flight, waiting for their replies */
    bool reading; /* a waiting thread is reading replies for everyone */
    /* The request whose buffers that reader is filling: its waiter must
     * not return, even when the request is already done, until the
     * reader lets go of it. */
    struct prl_nbd_req *reading_rq;
    uint64_t next_cookie;
    /* A protocol or I/O error left the stream at an unknown place: no
     * more requests, no NBD_CMD_DISC.  Set from any thread. */
    _Atomic bool dead;
    char dead_msg[512];   /* why, for requests failed by another thread */
    bool haggling;        /* fixed newstyle options may be sent */
    bool transmission;    /* the handshake is done */
    bool has_block_sizes; /* the last GO/INFO gave NBD_INFO_BLOCK_SIZE */
};

/* Exactly |n| bytes to or from the server (through TLS once started).
 * 0, or a negative errno with a message naming the peer; the client is
 * marked dead on failure. */
int prl_nbd_cl_send(struct prl_nbd_client *c, const void *buf, size_t n);
int prl_nbd_cl_recv(struct prl_nbd_client *c, void *buf, size_t n);

/* Read and drop |n| bytes. */
int prl_nbd_cl_skip(struct prl_nbd_client *c, uint64_t n);

/* Start TLS on the connected socket, with the credentials |uri| names.
 * 0 or a negative errno with a message (certificate not trusted, PSK
 * refused...). */
int prl_nbd_cl_start_tls(struct prl_nbd_client *c,
                         const struct prl_nbd_uri *uri);

/* Mark the client dead and record a protocol violation: -EIO with
 * "nbd server NAME: " + the message. */
int prl_nbd_cl_proto(struct prl_nbd_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The fixed-newstyle handshake up to transmission (handshake.c).  |tls|
 * non-NULL: STARTTLS first with the credentials it names. */
int prl_nbd_cl_handshake(struct prl_nbd_client *c,
                         const struct prl_nbd_uri *tls,
                         const struct prl_nbd_client_opts *opts);

/* The handshake up to the options, then NBD_OPT_LIST and, for each
 * export, NBD_OPT_INFO and NBD_OPT_LIST_META_CONTEXT (handshake.c); the
 * connection is left in the option phase.  See prl_nbd_client_list. */
int prl_nbd_cl_list(struct prl_nbd_client *c, const struct prl_nbd_uri *tls,
                    struct prl_nbd_export_info **out, size_t *n_out);

/* Make |s| printable in |out| (|size| bytes), cutting it. */
void prl_nbd_cl_printable(char *out, size_t size, const char *s, size_t len);

#endif
