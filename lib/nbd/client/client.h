/* SPDX-License-Identifier: MIT */
/* The NBD client: connect to an export named by a URI (TCP, Unix socket,
 * TLS), negotiate the richest protocol the server offers (extended
 * headers, else structured replies, else simple replies; NBD_OPT_GO,
 * else NBD_OPT_EXPORT_NAME) and do block I/O on it.  Every reply is
 * validated; a server that breaks the protocol fails the request with
 * -EIO and a message naming the field, and the connection is then
 * dropped (later requests fail too). */
#ifndef PRL_NBD_CLIENT_H
#define PRL_NBD_CLIENT_H

#include "nbd/uri.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct prl_nbd_client;

/* What the handshake found; read-only for the caller. */
struct prl_nbd_export {
    uint64_t size;       /* bytes */
    uint16_t tflags;     /* PRL_NBD_FLAG_* transmission flags */
    uint32_t min_block;  /* power of two, 1..64 KiB */
    uint32_t pref_block; /* power of two, >= min_block */
    uint32_t max_block;  /* multiple of min_block: largest READ/WRITE */
    bool structured;     /* structured replies (or extended headers) */
    bool extended;       /* extended headers */
    bool has_alloc;      /* base:allocation was negotiated */
    bool has_depth;      /* qemu:allocation-depth was negotiated */
    bool has_bitmap;     /* at least one qemu:dirty-bitmap: context */
    size_t n_bitmaps;    /* qemu:dirty-bitmap: contexts negotiated */
    bool tls;            /* the session is encrypted */
};

/* Connect options beyond the URI. */
struct prl_nbd_client_opts {
    /* Ask for qemu:dirty-bitmap:NAME (NULL: none). */
    const char *bitmap;
    /* Ask for qemu:allocation-depth (when the server has it). */
    bool want_depth;
    /* Also ask for every qemu:dirty-bitmap: context the server lists
     * (NBD_OPT_LIST_META_CONTEXT; at most 64). */
    bool all_bitmaps;
    /* Fail the handshake with -ETIMEDOUT when the server stays silent
     * this long at any step (0: wait as long as it takes). */
    unsigned timeout_ms;
};

/* Connect to |uri| (prl_nbd_uri_parse'd) and negotiate.  |opts| may be
 * NULL.  0 and *out, or a negative errno with a message naming the URI
 * and the step that failed. */
int prl_nbd_client_connect(const struct prl_nbd_uri *uri,
                           const struct prl_nbd_client_opts *opts,
                           struct prl_nbd_client **out);

/* Negotiate over an already connected stream |fd| (plain text; the
 * client owns |fd| from here on, even on failure).  |name| is for
 * messages.  For tests and the fuzzer. */
int prl_nbd_client_connect_fd(int fd, const char *name, const char *export_name,
                              const struct prl_nbd_client_opts *opts,
                              struct prl_nbd_client **out);

/* One export of a server's list (prl_nbd_client_list). */
struct prl_nbd_export_info {
    char *name;
    char *description; /* "" when the server gave none */
    /* What NBD_OPT_INFO said (has_info): size, transmission flags, and
     * the block sizes when has_block_sizes; structured and extended say
     * what this connection negotiated. */
    bool has_info;
    bool has_block_sizes;
    struct prl_nbd_export exp;
    /* NBD_OPT_LIST_META_CONTEXT with no query: every context the export
     * offers (none when structured replies were not negotiated). */
    char **contexts;
    size_t n_contexts;
};

/* Connect to the server |uri| names (its export name is not used), ask
 * for its exports (NBD_OPT_LIST) and about each of them, and leave with
 * NBD_OPT_ABORT, as qemu-nbd --list does.  0 with *out (n_out entries;
 * free with prl_nbd_export_info_free), or a negative errno with a
 * message. */
int prl_nbd_client_list(const struct prl_nbd_uri *uri,
                        struct prl_nbd_export_info **out, size_t *n_out);
/* The same over an already connected stream |fd| (plain text; owned by
 * the call), for the fuzzer. */
int prl_nbd_client_list_fd(int fd, const char *name,
                           struct prl_nbd_export_info **out, size_t *n_out);
void prl_nbd_export_info_free(struct prl_nbd_export_info *v, size_t n);

/* Send NBD_CMD_DISC (if the connection is still good), close and free.
 * NULL is a no-op. */
void prl_nbd_client_close(struct prl_nbd_client *c);

const struct prl_nbd_export *
prl_nbd_client_export(const struct prl_nbd_client *c);

/* I/O.  Ranges lie inside the export (the caller checks) and are
 * multiples of min_block; long requests are split at max_block here.
 * All return 0 or a negative errno with a message.  The calls are
 * serialized by a lock inside the client, so any thread may call. */
int prl_nbd_client_read(struct prl_nbd_client *c, void *buf, uint64_t len,
                        uint64_t off);
int prl_nbd_client_write(struct prl_nbd_client *c, const void *buf,
                         uint64_t len, uint64_t off, bool fua);
/* PRL_NBD_CMD_FLAG_FUA / NO_HOLE / FAST_ZERO in |flags|; -ENOTSUP
 * (message set) when the server has no WRITE_ZEROES, or FAST_ZERO is
 * asked of a server without it or refused by the server. */
int prl_nbd_client_zero(struct prl_nbd_client *c, uint64_t len, uint64_t off,
                        unsigned flags);
int prl_nbd_client_trim(struct prl_nbd_client *c, uint64_t len, uint64_t off,
                        bool fua);
int prl_nbd_client_flush(struct prl_nbd_client *c);
int prl_nbd_client_cache(struct prl_nbd_client *c, uint64_t len, uint64_t off);

/* One extent of a metadata context. */
struct prl_nbd_extent {
    uint64_t length; /* > 0 */
    uint64_t flags;  /* the context's status bits */
};

/* Status of [off, off+len): for base:allocation (alloc), and when
 * negotiated qemu:allocation-depth (depth) and the first dirty bitmap
 * (bitmap), the first extent of each (clamped to len; NULL pointers
 * or contexts not negotiated are skipped).  Needs has_alloc. */
int prl_nbd_client_block_status(struct prl_nbd_client *c, uint64_t len,
                                uint64_t off, struct prl_nbd_extent *alloc,
                                struct prl_nbd_extent *depth,
                                struct prl_nbd_extent *bitmap);

/* Like prl_nbd_client_block_status, with up to |max| extents of
 * base:allocation in |alloc| (*n_alloc of them, at least 1 on success)
 * and of qemu:allocation-depth in |depth| (NULL: not wanted; *n_depth
 * at least 1 when has_depth), each list consecutive from |off| and
 * clamped to |len|. */
int prl_nbd_client_block_status_list(struct prl_nbd_client *c, uint64_t len,
                                     uint64_t off, struct prl_nbd_extent *alloc,
                                     size_t *n_alloc,
                                     struct prl_nbd_extent *depth,
                                     size_t *n_depth, size_t max);

/* The name (without "qemu:dirty-bitmap:") of negotiated bitmap |i| <
 * n_bitmaps; lives as long as the client. */
const char *prl_nbd_client_bitmap_name(const struct prl_nbd_client *c,
                                       size_t i);

/* The first extent of dirty bitmap |name| (qemu:dirty-bitmap:NAME)
 * at [off, off+len); PRL_NBD_STATE_DIRTY in ext->flags when dirty.
 * -ENOENT with a message when that context was not negotiated. */
int prl_nbd_client_bitmap_status(struct prl_nbd_client *c, const char *name,
                                 uint64_t len, uint64_t off,
                                 struct prl_nbd_extent *ext);

#endif
