/* SPDX-License-Identifier: MIT */
/* The transmission phase: workers that take turns reading batches of
 * requests off the socket (leader/follower, so no request is handed
 * between threads), serve them on the export (inline while that is fast,
 * in parallel once it is not) and send each batch's replies together;
 * large reads go from the image file to the socket with sendfile (but on
 * TCP loopback, see prl_nbd_sock_plain). */
#include "nbd/server/internal.h"
#include "common/util.h"
#include "prl/error.h"
#include "prl/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Structured reads are split into data and hole chunks on this grid. */
#define READ_GRANULE (64u << 10)
/* Reads at least this long go straight from the image's file to the
 * socket (sendfile) where the export and the socket layer allow it;
 * shorter ones cost less copied, as their replies share one sendmsg per
 * batch (fio sequential reads, iodepth 16, raw: 16 KiB 40% slower with
 * sendfile, 64 KiB even, 128 KiB 5-25% faster). */
#define ZC_MIN (128u << 10)
/* Extents one zero-copy read may span; a more fragmented range is
 * copied (and its zero granules found by scanning, as before). */
#define ZC_MAX_EXTENTS 64
/* Payloads this small are received through the connection buffer. */
#define SMALL_PAYLOAD (16u << 10)
/* CACHE reads ahead at most this much of one request (the rest is a
 * hint we may ignore). */
#define CACHE_MAX (64u << 20)

/* ---- buffers ---- */

int prl_nbd_worker_buf(struct prl_nbd_worker *w, size_t size)
{
    if (w->buf_size >= size) {
        return 0;
    }
    free(w->buf);
    w->buf = prl_alloc_aligned(size);
    w->buf_size = w->buf ? size : 0;
    return w->buf ? 0 : -ENOMEM;
}

int prl_nbd_worker_scratch(struct prl_nbd_worker *w, size_t size)
{
    if (w->scratch_size >= size) {
        return 0;
    }
    free(w->scratch);
    w->scratch = prl_malloc(size);
    w->scratch_size = w->scratch ? size : 0;
    return w->scratch ? 0 : -ENOMEM;
}

void prl_nbd_worker_trim(struct prl_nbd_worker *w)
{
    for (size_t i = 0; i < PRL_NBD_BATCH; i++) {
        struct prl_nbd_slot *s = &w->slots[i];
        if (s->buf_size > PRL_NBD_KEEP_BUF) {
            free(s->buf);
            s->buf = NULL;
            s->buf_size = 0;
        }
    }
    if (w->scratch_size > PRL_NBD_KEEP_BUF) {
        free(w->scratch);
        w->scratch = NULL;
        w->scratch_size = 0;
    }
}

/* ---- receiving, all under conn->read_lock ---- */

/* Make |need| (<= PRL_NBD_RBUF_SIZE) bytes available at rbuf + rpos.
 * 1 when they are, 0 at end of stream, or a negative errno. */
static int rbuf_fill(struct prl_nbd_conn *conn, size_t need)
{
    if (conn->rend - conn->rpos >= need) {
        return 1;
    }
    if (conn->rpos > 0 && PRL_NBD_RBUF_SIZE - conn->rpos < need) {
        memmove(conn->rbuf, conn->rbuf + conn->rpos, conn->rend - conn->rpos);
        conn->rend -= conn->rpos;
        conn->rpos = 0;
    }
    while (conn->rend - conn->rpos < need) {
        ssize_t n = conn->sock.ops->recv(&conn->sock, conn->rbuf + conn->rend,
                                         PRL_NBD_RBUF_SIZE - conn->rend, false);
        if (n <= 0) {
            return (int)n;
        }
        conn->rend += (size_t)n;
    }
    return 1;
}

/* Take |len| payload bytes into |dst|: 1, 0 at end of stream, -errno. */
static int read_payload(struct prl_nbd_conn *conn, uint8_t *dst, size_t len)
{
    size_t take = PRL_MIN(len, conn->rend - conn->rpos);

    if (len == 0) {
        return 1;
    }
    memcpy(dst, conn->rbuf + conn->rpos, take);
    conn->rpos += take;
    dst += take;
    len -= take;
    if (conn->rpos == conn->rend) {
        conn->rpos = conn->rend = 0;
    }
    if (len == 0) {
        return 1;
    }
    if (len <= SMALL_PAYLOAD) {
        /* One receive may bring the rest and the next requests too. */
        int r = rbuf_fill(conn, len);
        if (r <= 0) {
            return r;
        }
        memcpy(dst, conn->rbuf + conn->rpos, len);
        conn->rpos += len;
        return 1;
    }
    while (len > 0) {
        ssize_t n = conn->sock.ops->recv(&conn->sock, dst, len, true);
        if (n <= 0) {
            return (int)n;
        }
        dst += n;
        len -= (size_t)n;
    }
    return 1;
}

static int drain_payload(struct prl_nbd_conn *conn, uint64_t len)
{
    while (len > 0) {
        size_t n;
        int r = rbuf_fill(conn, 1);

        if (r <= 0) {
            return r;
        }
        n = (size_t)PRL_MIN(len, (uint64_t)(conn->rend - conn->rpos));
        conn->rpos += n;
        len -= n;
    }
    return 1;
}

/* Read one request and its payload.  1 with *req filled, 0 at end of
 * stream, or a negative errno for a stream that cannot go on. */
static int read_request(struct prl_nbd_worker *w, struct prl_nbd_req *req)
{
    struct prl_nbd_conn *conn = w->conn;
    size_t hsize = conn->extended ? sizeof(struct prl_nbd_ext_request)
                                  : sizeof(struct prl_nbd_request);
    const uint8_t *p;
    uint32_t magic;
    uint64_t plen = 0;
    bool has_payload;
    int r = rbuf_fill(conn, hsize);

    if (r <= 0) {
        return r;
    }
    p = conn->rbuf + conn->rpos;
    magic = prl_be32_load(p);
    if (magic !=
        (conn->extended ? PRL_NBD_MAGIC_EXT_REQUEST : PRL_NBD_MAGIC_REQUEST)) {
        return prl_error(EPROTO, "%s: bad request magic 0x%08" PRIx32,
                         conn->peer, magic);
    }
    req->flags = prl_be16_load(p + 4);
    req->type = prl_be16_load(p + 6);
    req->cookie = prl_be64_load(p + 8);
    req->offset = prl_be64_load(p + 16);
    req->length =
        conn->extended ? prl_be64_load(p + 24) : prl_be32_load(p + 24);
    req->payload_len = 0;
    req->error = 0;
    req->error_msg = NULL;
    conn->rpos += hsize;

    if (conn->extended) {
        has_payload = req->flags & PRL_NBD_CMD_FLAG_PAYLOAD_LEN;
    } else {
        has_payload = req->type == PRL_NBD_CMD_WRITE;
    }
    if (has_payload) {
        plen = req->length;
        if (plen > PRL_NBD_MAX_PAYLOAD && conn->extended) {
            /* The spec's advice for oversized declared payloads. */
            return prl_error(EPROTO,
                             "%s: request payload of %" PRIu64
                             " bytes is over the maximum",
                             conn->peer, plen);
        }
    }
    if (has_payload && req->type == PRL_NBD_CMD_WRITE &&
        plen <= PRL_NBD_MAX_PAYLOAD) {
        if (prl_nbd_worker_buf(w, (size_t)plen) < 0) {
            req->error = PRL_NBD_ENOMEM;
            req->error_msg = "out of memory for the write payload";
            r = drain_payload(conn, plen);
        } else {
            r = read_payload(conn, w->buf, (size_t)plen);
            req->payload_len = (uint32_t)plen;
        }
    } else if (has_payload && req->type == PRL_NBD_CMD_BLOCK_STATUS &&
               plen <= 8 + 4 * PRL_NBD_MAX_META) {
        r = prl_nbd_worker_buf(w, (size_t)plen);
        if (r == 0) {
            r = read_payload(conn, w->buf, (size_t)plen);
            req->payload_len = (uint32_t)plen;
        }
    } else if (has_payload) {
        req->error = PRL_NBD_EINVAL;
        req->error_msg = req->type == PRL_NBD_CMD_WRITE
                             ? "write payload is over the maximum of 32 MiB"
                             : "request payload not valid for this command";
        r = drain_payload(conn, plen);
    }
    if (r <= 0) {
        return r == 0 ? prl_error(ECONNRESET,
                                  "%s: client left in the "
                                  "middle of a request",
                                  conn->peer)
                      : r;
    }
    if (prl_nbd_server_stopping(conn->srv) && req->type != PRL_NBD_CMD_DISC) {
        req->error = PRL_NBD_ESHUTDOWN;
        req->error_msg = "server is shutting down";
    }
    return 1;
}

/* ---- checks ---- */

/* 0 when |req| may run, else an NBD error with *msg (into |buf|). */
static uint32_t check_request(struct prl_nbd_conn *conn,
                              struct prl_nbd_req *req, char *buf,
                              size_t bufsize, const char **msg)
{
    const struct prl_nbd_export *exp = conn->exp;
    bool chunky = conn->structured || conn->extended;
    uint16_t common =
        conn->tflags & PRL_NBD_FLAG_SEND_FUA ? PRL_NBD_CMD_FLAG_FUA : 0;
    uint16_t allowed;
    bool writes = false, size_err_nospc = false;
    uint64_t end;

    *msg = buf;
    switch (req->type) {
    case PRL_NBD_CMD_READ:
        allowed = common | (chunky ? PRL_NBD_CMD_FLAG_DF : 0);
        break;
    case PRL_NBD_CMD_WRITE:
        allowed = common | (conn->extended ? PRL_NBD_CMD_FLAG_PAYLOAD_LEN : 0);
        writes = size_err_nospc = true;
        break;
    case PRL_NBD_CMD_FLUSH:
        allowed = common;
        break;
    case PRL_NBD_CMD_TRIM:
        allowed = common;
        writes = true;
        break;
    case PRL_NBD_CMD_CACHE:
        allowed = common;
        break;
    case PRL_NBD_CMD_WRITE_ZEROES:
        allowed = common | PRL_NBD_CMD_FLAG_NO_HOLE |
                  (conn->tflags & PRL_NBD_FLAG_SEND_FAST_ZERO
                       ? PRL_NBD_CMD_FLAG_FAST_ZERO
                       : 0);
        writes = size_err_nospc = true;
        break;
    case PRL_NBD_CMD_BLOCK_STATUS:
        allowed = common | PRL_NBD_CMD_FLAG_REQ_ONE |
                  (conn->tflags & PRL_NBD_FLAG_BLOCK_STATUS_PAYLOAD
                       ? PRL_NBD_CMD_FLAG_PAYLOAD_LEN
                       : 0);
        break;
    default:
        snprintf(buf, bufsize, "unknown command %u", req->type);
        return PRL_NBD_EINVAL;
    }
    if (req->flags & ~allowed) {
        snprintf(buf, bufsize, "flags 0x%x are not valid for %s",
                 req->flags & ~allowed, prl_nbd_cmd_name(req->type));
        return PRL_NBD_EINVAL;
    }
    if (req->type == PRL_NBD_CMD_WRITE && conn->extended &&
        !(req->flags & PRL_NBD_CMD_FLAG_PAYLOAD_LEN)) {
        snprintf(buf, bufsize, "write without NBD_CMD_FLAG_PAYLOAD_LEN");
        return PRL_NBD_EINVAL;
    }
    if (writes && exp->read_only) {
        snprintf(buf, bufsize, "%s on a read-only export",
                 prl_nbd_cmd_name(req->type));
        return PRL_NBD_EPERM;
    }
    if (req->type == PRL_NBD_CMD_FLUSH) {
        return 0; /* offset and length are reserved */
    }
    if (req->type == PRL_NBD_CMD_BLOCK_STATUS) {
        if (conn->n_meta == 0) {
            snprintf(buf, bufsize,
                     "block status without a metadata "
                     "context selected");
            return PRL_NBD_EINVAL;
        }
        if (req->flags & PRL_NBD_CMD_FLAG_PAYLOAD_LEN) {
            if (req->payload_len < 8 || (req->payload_len - 8) % 4 != 0) {
                snprintf(buf, bufsize,
                         "block status payload of %" PRIu32
                         " bytes is malformed",
                         req->payload_len);
                return PRL_NBD_EINVAL;
            }
            /* Check the range against the effect length inside. */
            req->length = 0;
        }
    }
    if (req->type == PRL_NBD_CMD_READ && req->length > PRL_NBD_MAX_PAYLOAD) {
        snprintf(buf, bufsize,
                 "read of %" PRIu64 " bytes is over the "
                 "maximum of %u",
                 req->length, PRL_NBD_MAX_PAYLOAD);
        return PRL_NBD_EOVERFLOW;
    }
    if (prl_add_overflow(req->offset, req->length, &end) || end > exp->size) {
        snprintf(buf, bufsize,
                 "%s of %" PRIu64 " bytes at %" PRIu64
                 " is past the end of the export (%" PRIu64 " bytes)",
                 prl_nbd_cmd_name(req->type), req->length, req->offset,
                 exp->size);
        return size_err_nospc ? PRL_NBD_ENOSPC : PRL_NBD_EINVAL;
    }
    if (((req->offset | req->length) & (exp->min_block - 1)) != 0) {
        snprintf(buf, bufsize,
                 "%s at %" PRIu64 "+%" PRIu64 " is not "
                 "aligned to the minimum block size %" PRIu32,
                 prl_nbd_cmd_name(req->type), req->offset, req->length,
                 exp->min_block);
        return PRL_NBD_EINVAL;
    }
    return 0;
}

/* ---- commands ---- */

#define EXPORT_LOCK(exp)                                                       \
    do {                                                                       \
        if ((exp)->serialize) {                                                \
            pthread_mutex_lock(&(exp)->lock);                                  \
        }                                                                      \
    } while (0)
#define EXPORT_UNLOCK(exp)                                                     \
    do {                                                                       \
        if ((exp)->serialize) {                                                \
            pthread_mutex_unlock(&(exp)->lock);                                \
        }                                                                      \
    } while (0)

/* Answer a failed block call: the client hears the errno's text, the
 * log (at debug level) gets the library's full message. */
static void reply_failure(struct prl_nbd_worker *w,
                          const struct prl_nbd_req *req, int err)
{
    struct prl_nbd_conn *conn = w->conn;
    char msg[160];

    prl_debug("%s: %s failed: %s", conn->peer, prl_nbd_cmd_name(req->type),
              prl_error_message());
    snprintf(msg, sizeof(msg), "%s failed: %s", prl_nbd_cmd_name(req->type),
             strerror(-err));
    prl_nbd_reply_error(w, req, prl_nbd_errno_to_wire(err, req->type), msg);
}

static void reply_result(struct prl_nbd_worker *w,
                         const struct prl_nbd_req *req, int r)
{
    if (r < 0) {
        reply_failure(w, req, r);
    } else {
        prl_nbd_reply_ok(w, req);
    }
}

static int block_read(struct prl_nbd_export *exp, void *buf, uint64_t len,
                      uint64_t off)
{
    int r;

    EXPORT_LOCK(exp);
    r = prl_block_pread(exp->bs, buf, len, off, 0);
    EXPORT_UNLOCK(exp);
    return r;
}

/* A chunk header plus the fixed part of its payload. */
struct chunk {
    uint8_t bytes[32 + 12];
    size_t len;
};

static void chunk_fill(struct prl_nbd_conn *conn, struct chunk *c,
                       const struct prl_nbd_req *req, bool done, bool hole,
                       uint64_t off, uint64_t len)
{
    uint16_t type =
        hole ? PRL_NBD_REPLY_TYPE_OFFSET_HOLE : PRL_NBD_REPLY_TYPE_OFFSET_DATA;
    uint64_t plen = hole ? 12 : 8 + len;
    size_t h = prl_nbd_chunk_header(
        conn, c->bytes, req, done ? PRL_NBD_REPLY_FLAG_DONE : 0, type, plen);

    prl_be64_store(c->bytes + h, off);
    if (hole) {
        prl_be32_store(c->bytes + h + 8, (uint32_t)len);
    }
    c->len = h + (hole ? 12 : 8);
}

/* Structured read that failed: report data chunks for the pieces that
 * read back, and the offset of the first one that did not. */
static void read_failed_structured(struct prl_nbd_worker *w,
                                   const struct prl_nbd_req *req, int err)
{
    struct prl_nbd_conn *conn = w->conn;
    uint64_t off = req->offset, end = req->offset + req->length;
    char msg[160];
    int r = err;

    /* Sent directly: each piece reuses the buffer. */
    if (prl_nbd_out_flush(w) < 0) {
        return;
    }
    while (off < end) {
        uint64_t n =
            PRL_MIN(end - off, (uint64_t)READ_GRANULE - off % READ_GRANULE);
        struct chunk c;
        struct iovec iov[2];

        r = block_read(conn->exp, w->buf, n, off);
        if (r < 0) {
            break;
        }
        chunk_fill(conn, &c, req, false, false, off, n);
        iov[0].iov_base = c.bytes;
        iov[0].iov_len = c.len;
        iov[1].iov_base = w->buf;
        iov[1].iov_len = (size_t)n;
        if (prl_nbd_send_locked(conn, iov, 2) < 0) {
            return;
        }
        off += n;
    }
    if (r == 0) {
        r = err; /* the retry read everything: report the first error */
        off = req->offset;
    }
    prl_debug("%s: read failed at %" PRIu64 ": %s", conn->peer, off,
              prl_error_message());
    snprintf(msg, sizeof(msg), "read failed at offset %" PRIu64 ": %s", off,
             strerror(-r));
    {
        uint8_t hdr[32];
        size_t mlen = strlen(msg);
        struct prl_nbd_chunk_error ce = {
            .error = htobe32(prl_nbd_errno_to_wire(r, req->type)),
            .msg_length = htobe16((uint16_t)mlen),
        };
        uint64_t boff = htobe64(off);
        struct iovec iov[4] = {
            {.iov_base = hdr},
            {.iov_base = &ce, .iov_len = sizeof(ce)},
            {.iov_base = msg, .iov_len = mlen},
            {.iov_base = &boff, .iov_len = sizeof(boff)},
        };
        iov[0].iov_len = prl_nbd_chunk_header(
            conn, hdr, req, PRL_NBD_REPLY_FLAG_DONE,
            PRL_NBD_REPLY_TYPE_ERROR_OFFSET, sizeof(ce) + mlen + 8);
        prl_nbd_send_locked(conn, iov, 4);
    }
}

/* A piece of a zero-copy read: |len| bytes of file |fd| from |foff|, or
 * of zeroes when fd < 0. */
struct zc_ext {
    uint64_t len;
    uint64_t foff;
    int fd;
};

/* Zeroes for replies that must carry them as bytes (simple, DF). */
static const uint8_t zero_bytes[64u << 10];

/* Send |head| (nhead iovecs, may be 0) then |len| zero bytes. */
static int send_zeroes(struct prl_nbd_sock *s, const struct iovec *head,
                       int nhead, uint64_t len, bool more)
{
    struct iovec iov[18];
    int r = 0;

    do {
        int n = 0;

        for (; n < nhead; n++) {
            iov[n] = head[n];
        }
        nhead = 0;
        while (len > 0 && n < 18) {
            size_t k = (size_t)PRL_MIN(len, (uint64_t)sizeof(zero_bytes));
            iov[n].iov_base = (void *)zero_bytes;
            iov[n++].iov_len = k;
            len -= k;
        }
        r = s->ops->sendfile(s, iov, n, -1, 0, 0, more || len > 0);
    } while (r == 0 && len > 0);
    return r;
}

/* Append |len| bytes of file |fd| at |foff| (zeroes when fd < 0) to the
 * pieces, merging with the last one when they continue it. */
static int zc_add(struct zc_ext *ext, size_t *n, size_t cap, uint64_t len,
                  uint64_t foff, int fd)
{
    struct zc_ext *last = *n ? &ext[*n - 1] : NULL;

    if (last && last->fd == fd && (fd < 0 || last->foff + last->len == foff)) {
        last->len += len;
        return 0;
    }
    if (*n == cap) {
        return -E2BIG;
    }
    ext[*n].len = len;
    ext[*n].foff = foff;
    ext[(*n)++].fd = fd;
    return 0;
}

/* Whether |len| (<= READ_GRANULE) bytes of |fd| at |off| are all zero:
 * a look at their first bytes settles it for almost all data, the rest is
 * read into the worker's buffer.  False when unsure (read errors). */
static bool granule_zero(struct prl_nbd_worker *w, int fd, uint64_t off,
                         uint64_t len)
{
    uint8_t head[64];
    size_t n = (size_t)PRL_MIN(len, (uint64_t)sizeof(head));

    if (pread(fd, head, n, (off_t)off) != (ssize_t)n || !prl_is_zero(head, n)) {
        return false;
    }
    if (prl_nbd_worker_buf(w, READ_GRANULE) < 0) {
        return false;
    }
    return pread(fd, w->buf, (size_t)len, (off_t)off) == (ssize_t)len &&
           prl_is_zero(w->buf, (size_t)len);
}

/* Serve a read by sending its data from the file that holds it: block
 * status splits the range into data extents (sendfile from the file) and
 * zero extents (hole chunks, or zero bytes where the reply must carry
 * them), so the data never passes through user space.  Structured
 * replies without DF also send all-zero granules of data extents as
 * holes, as the copy path does (a cheap look at each granule's first
 * bytes, which are rarely all zero).  Returns false, having sent nothing,
 * when the read should be copied instead: the socket layer does not
 * allow it (TLS), the read is short, or the range is too fragmented or
 * not mapped to a file.  A send that fails once the reply has begun (the
 * file shrank, an I/O error) cannot become an error reply: the
 * connection is dropped.
 *
 * What a client can see: a write racing the read gives old or new bytes
 * of the range, as with a copy.  The data leaves the file only when the
 * client reads it off the socket (sendfile queues page references), so
 * a trim or zeroing of the range that overlaps the read (before the
 * client has the whole reply) may free a Parallels cluster that another
 * write then fills: the read may then carry bytes written to another
 * part of the same disk.  The NBD spec leaves the contents of a trimmed
 * range unspecified until rewritten and orders no read against the
 * commands it overlaps.  A read sent after the trim or zeroing was
 * answered reads zeroes, and nothing outside the export is ever sent. */
static bool read_zero_copy(struct prl_nbd_worker *w,
                           const struct prl_nbd_req *req)
{
    struct prl_nbd_conn *conn = w->conn;
    struct prl_nbd_export *exp = conn->exp;
    struct prl_nbd_sock *s = &conn->sock;
    bool whole = !(conn->structured || conn->extended) ||
                 (req->flags & PRL_NBD_CMD_FLAG_DF);
    uint64_t len = req->length, pos = 0;
    /* Each status extent adds a piece per granule it touches at most. */
    size_t cap = (size_t)(len / READ_GRANULE) + 2 * ZC_MAX_EXTENTS + 2;
    struct zc_ext *ext;
    size_t n = 0, n_status = 0;
    int r = 0;

    if (!s->ops->sendfile || !s->w_sendfile || len < ZC_MIN) {
        return false;
    }
    if (prl_nbd_worker_scratch(w, cap * sizeof(*ext)) < 0) {
        return false;
    }
    ext = w->scratch;
    EXPORT_LOCK(exp);
    while (pos < len && r == 0) {
        struct prl_extent e;
        int fd = -1;

        r = prl_block_status(exp->bs, req->offset + pos, len - pos, &e);
        if (r < 0) {
            break;
        }
        if (++n_status > ZC_MAX_EXTENTS) {
            r = -E2BIG;
            break;
        }
        if ((e.flags & (PRL_EXT_DATA | PRL_EXT_OFFSET)) ==
            (PRL_EXT_DATA | PRL_EXT_OFFSET)) {
            fd = prl_block_data_fd(exp->bs, &e);
            if (fd < 0) {
                r = fd;
                break;
            }
        } else if (!(e.flags & PRL_EXT_ZERO)) {
            r = -ENOTSUP; /* data, but the driver cannot say where */
            break;
        }
        if (fd < 0 || whole) {
            r = zc_add(ext, &n, cap, e.length, e.offset, fd);
        } else {
            for (uint64_t g = 0; g < e.length && r == 0;) {
                uint64_t at = req->offset + pos + g;
                uint64_t gl = PRL_MIN(e.length - g, (uint64_t)READ_GRANULE -
                                                        at % READ_GRANULE);
                bool zero = granule_zero(w, fd, e.offset + g, gl);

                r = zc_add(ext, &n, cap, gl, e.offset + g, zero ? -1 : fd);
                g += gl;
            }
        }
        pos += e.length;
    }
    EXPORT_UNLOCK(exp);
    if (r < 0) {
        return false; /* the copy path answers, errors included */
    }

    if (prl_nbd_send_begin(conn) < 0) {
        return true;
    }
    pos = 0;
    if (whole) {
        /* One message: the simple reply, or one data chunk (DF). */
        uint8_t hdr[32 + 8]; /* chunk header, then the data's offset */
        struct iovec head = {.iov_base = hdr};

        if (conn->structured || conn->extended) {
            size_t h =
                prl_nbd_chunk_header(conn, hdr, req, PRL_NBD_REPLY_FLAG_DONE,
                                     PRL_NBD_REPLY_TYPE_OFFSET_DATA, 8 + len);
            prl_be64_store(hdr + h, req->offset);
            head.iov_len = h + 8;
        } else {
            struct prl_nbd_simple_reply h = {
                .magic = htobe32(PRL_NBD_MAGIC_SIMPLE_REPLY),
                .error = 0,
                .cookie = htobe64(req->cookie),
            };
            memcpy(hdr, &h, sizeof(h));
            head.iov_len = sizeof(h);
        }
        for (size_t i = 0; i < n && r == 0; i++) {
            bool more = i + 1 < n;
            if (ext[i].fd >= 0) {
                r = s->ops->sendfile(s, &head, i == 0, ext[i].fd, ext[i].foff,
                                     ext[i].len, more);
            } else {
                r = send_zeroes(s, &head, i == 0, ext[i].len, more);
            }
            pos += r == 0 ? ext[i].len : 0;
        }
    } else {
        /* A chunk per extent: data from the file, zeroes as holes. */
        for (size_t i = 0; i < n && r == 0; i++) {
            struct chunk c;
            struct iovec head;

            chunk_fill(conn, &c, req, i + 1 == n, ext[i].fd < 0,
                       req->offset + pos, ext[i].len);
            head.iov_base = c.bytes;
            head.iov_len = c.len;
            r = s->ops->sendfile(s, &head, 1, ext[i].fd, ext[i].foff,
                                 ext[i].fd >= 0 ? ext[i].len : 0, i + 1 < n);
            pos += r == 0 ? ext[i].len : 0;
        }
    }
    if (r < 0) {
        prl_warn("%s: read of %" PRIu64 " bytes at %" PRIu64
                 " failed after %" PRIu64 " bytes of its data: %s; "
                 "dropping the connection",
                 conn->peer, len, req->offset, pos, strerror(-r));
    }
    prl_nbd_send_end(conn, r);
    return true;
}

static void cmd_read(struct prl_nbd_worker *w, const struct prl_nbd_req *req)
{
    struct prl_nbd_conn *conn = w->conn;
    bool chunky = conn->structured || conn->extended;
    uint64_t len = req->length;
    int r;

    if (len == 0) {
        if (chunky) {
            uint8_t hdr[32];
            struct iovec iov = {.iov_base = hdr};
            iov.iov_len =
                prl_nbd_chunk_header(conn, hdr, req, PRL_NBD_REPLY_FLAG_DONE,
                                     PRL_NBD_REPLY_TYPE_NONE, 0);
            prl_nbd_out(w, &iov, 1);
        } else {
            prl_nbd_reply_ok(w, req);
        }
        return;
    }
    if (read_zero_copy(w, req)) {
        return;
    }
    r = prl_nbd_worker_buf(w, (size_t)len);
    if (r == 0) {
        r = block_read(conn->exp, w->buf, len, req->offset);
    }
    if (r < 0) {
        if (chunky && w->buf_size >= len) {
            read_failed_structured(w, req, r);
        } else {
            reply_failure(w, req, r);
        }
        return;
    }
    if (!chunky) {
        struct prl_nbd_simple_reply h = {
            .magic = htobe32(PRL_NBD_MAGIC_SIMPLE_REPLY),
            .error = 0,
            .cookie = htobe64(req->cookie),
        };
        struct iovec iov[2] = {
            {.iov_base = &h, .iov_len = sizeof(h)},
            {.iov_base = w->buf, .iov_len = (size_t)len},
        };
        prl_nbd_out(w, iov, 2);
        return;
    }
    if ((req->flags & PRL_NBD_CMD_FLAG_DF) || len <= READ_GRANULE) {
        /* One chunk; a hole if it all reads as zeroes (not with DF). */
        bool hole = !(req->flags & PRL_NBD_CMD_FLAG_DF) &&
                    prl_is_zero(w->buf, (size_t)len);
        struct chunk c;
        struct iovec iov[2];

        chunk_fill(conn, &c, req, true, hole, req->offset, len);
        iov[0].iov_base = c.bytes;
        iov[0].iov_len = c.len;
        iov[1].iov_base = w->buf;
        iov[1].iov_len = hole ? 0 : (size_t)len;
        prl_nbd_out(w, iov, hole ? 1 : 2);
        return;
    }

    /* Longer reads: runs of zero granules go out as holes. */
    size_t max_chunks = (size_t)(len / READ_GRANULE) + 2;
    struct chunk *chunks;
    struct iovec *iov;
    size_t n = 0, niov = 0;
    uint64_t pos = 0;

    if (prl_nbd_worker_scratch(
            w, max_chunks * (sizeof(struct chunk) + 2 * sizeof(struct iovec))) <
        0) {
        reply_failure(w, req, -ENOMEM);
        return;
    }
    chunks = w->scratch;
    iov = (struct iovec *)(chunks + max_chunks);
    while (pos < len) {
        uint64_t start = pos;
        bool hole;

        pos = PRL_MIN(len,
                      pos + READ_GRANULE - (req->offset + pos) % READ_GRANULE);
        hole = prl_is_zero(w->buf + start, (size_t)(pos - start));
        while (pos < len) {
            uint64_t next = PRL_MIN(len, pos + READ_GRANULE);
            if (prl_is_zero(w->buf + pos, (size_t)(next - pos)) != hole) {
                break;
            }
            pos = next;
        }
        chunk_fill(conn, &chunks[n], req, pos == len, hole, req->offset + start,
                   pos - start);
        iov[niov].iov_base = chunks[n].bytes;
        iov[niov++].iov_len = chunks[n].len;
        if (!hole) {
            iov[niov].iov_base = w->buf + start;
            iov[niov++].iov_len = (size_t)(pos - start);
        }
        n++;
    }
    prl_nbd_out(w, iov, (int)niov);
}

static void cmd_write(struct prl_nbd_worker *w, const struct prl_nbd_req *req)
{
    struct prl_nbd_export *exp = w->conn->exp;
    unsigned flags = req->flags & PRL_NBD_CMD_FLAG_FUA ? PRL_REQ_FUA : 0;
    int r;

    EXPORT_LOCK(exp);
    r = prl_block_pwrite(exp->bs, w->buf, req->payload_len, req->offset, flags);
    EXPORT_UNLOCK(exp);
    reply_result(w, req, r);
}

static void cmd_flush(struct prl_nbd_worker *w, const struct prl_nbd_req *req)
{
    struct prl_nbd_export *exp = w->conn->exp;
    int r;

    EXPORT_LOCK(exp);
    r = prl_block_flush(exp->bs);
    EXPORT_UNLOCK(exp);
    reply_result(w, req, r);
}

static void cmd_trim(struct prl_nbd_worker *w, const struct prl_nbd_req *req)
{
    struct prl_nbd_export *exp = w->conn->exp;
    bool unmap =
        prl_nbd_server_cfg(w->conn->srv)->discard == PRL_NBD_DISCARD_UNMAP;
    bool fua = req->flags & PRL_NBD_CMD_FLAG_FUA;
    int r = 0;

    EXPORT_LOCK(exp);
    if (unmap) {
        r = prl_block_trim(exp->bs, req->length, req->offset,
                           fua ? PRL_REQ_FUA : 0);
    } else if (fua) {
        r = prl_block_flush(exp->bs);
    }
    EXPORT_UNLOCK(exp);
    reply_result(w, req, r);
}

static void cmd_cache(struct prl_nbd_worker *w, const struct prl_nbd_req *req)
{
    struct prl_nbd_export *exp = w->conn->exp;
    int r;

    /* Read-ahead of the files behind the range (or the hint passed on
     * to the server of an NBD export); the reply need not wait for it. */
    EXPORT_LOCK(exp);
    r = prl_block_cache(exp->bs, PRL_MIN(req->length, (uint64_t)CACHE_MAX),
                        req->offset);
    EXPORT_UNLOCK(exp);
    reply_result(w, req, r);
}

static void cmd_zero(struct prl_nbd_worker *w, const struct prl_nbd_req *req)
{
    struct prl_nbd_export *exp = w->conn->exp;
    bool unmap =
        prl_nbd_server_cfg(w->conn->srv)->discard == PRL_NBD_DISCARD_UNMAP;
    unsigned flags = 0;
    int r;

    if (req->flags & PRL_NBD_CMD_FLAG_FUA) {
        flags |= PRL_REQ_FUA;
    }
    if (req->flags & PRL_NBD_CMD_FLAG_FAST_ZERO) {
        flags |= PRL_REQ_FAST_ZERO;
    }
    if ((req->flags & PRL_NBD_CMD_FLAG_NO_HOLE) || !unmap) {
        flags |= PRL_REQ_NO_UNMAP;
    }
    EXPORT_LOCK(exp);
    r = prl_block_zero(exp->bs, req->length, req->offset, flags);
    EXPORT_UNLOCK(exp);
    if ((r == -ENOTSUP || r == -EOPNOTSUPP) &&
        !(req->flags & PRL_NBD_CMD_FLAG_FAST_ZERO)) {
        r = -EIO; /* ENOTSUP is reserved for a refused fast zero */
    }
    reply_result(w, req, r);
}

struct extent {
    uint64_t length;
    uint32_t status;
};

static void ext_push(struct extent *e, size_t *n, uint64_t len, uint32_t st)
{
    if (*n > 0 && e[*n - 1].status == st) {
        e[*n - 1].length += len;
    } else {
        e[*n].length = len;
        e[*n].status = st;
        (*n)++;
    }
}

/* Rewrite extents so every boundary is a multiple of |mb| (from an
 * aligned start): a block that straddles extents gets their merged
 * status.  |in| (consumed: lengths are cut) and |out| may not overlap. */
static size_t ext_align(const struct prl_nbd_meta_def *def, struct extent *in,
                        size_t n, uint64_t mb, struct extent *out)
{
    size_t o = 0, i = 0;
    uint64_t pos = 0, in_start = 0; /* relative to the request offset */

    while (i < n) {
        uint64_t in_end = in_start + in[i].length;
        uint64_t aend = prl_round_down(in_end, mb);
        uint32_t st;

        if (aend > pos) {
            ext_push(out, &o, aend - pos, in[i].status);
            pos = aend;
        }
        if (in_end == pos) {
            in_start = in_end;
            i++;
            continue;
        }
        /* The block [pos, pos + mb) straddles in[i] and what follows. */
        st = in[i].status;
        in_start = in_end;
        i++;
        while (i < n && in_start < pos + mb) {
            st = def->merge(st, in[i].status);
            if (in_start + in[i].length > pos + mb) {
                break; /* goes on past the block: its rest stays */
            }
            in_start += in[i].length;
            i++;
        }
        if (i == n && in_start < pos + mb) {
            break; /* the list ended mid-block: drop the partial block */
        }
        ext_push(out, &o, mb, st);
        pos += mb;
        if (i < n) {
            /* in[i] now starts at pos; shorten it by what was merged. */
            uint64_t cut = pos - in_start;
            if (cut > 0) {
                in[i].length -= cut;
                in_start = pos;
            }
        }
    }
    return o;
}

static void cmd_block_status(struct prl_nbd_worker *w,
                             const struct prl_nbd_req *req_in)
{
    struct prl_nbd_conn *conn = w->conn;
    struct prl_nbd_export *exp = conn->exp;
    struct prl_nbd_req req = *req_in;
    const struct prl_nbd_meta_sel *sel[PRL_NBD_MAX_META];
    size_t nsel = 0;
    bool one = req.flags & PRL_NBD_CMD_FLAG_REQ_ONE;
    /* With REQ_ONE the first whole minimum block must still be known. */
    size_t max_ext = one && exp->min_block == 1 ? 1 : PRL_NBD_MAX_EXTENTS;
    size_t desc_size = conn->extended ? 16 : 8;
    struct extent *ext, *ext2;
    uint8_t *wire;
    uint64_t end;

    if (req.flags & PRL_NBD_CMD_FLAG_PAYLOAD_LEN) {
        /* Payload: effect length, then the context ids wanted. */
        size_t nid = (req.payload_len - 8) / 4;
        req.length = prl_be64_load(w->buf);
        for (size_t i = 0; i < nid; i++) {
            uint32_t id = prl_be32_load(w->buf + 8 + 4 * i);
            size_t j;
            for (j = 0; j < conn->n_meta && conn->meta[j].id != id; j++) {
            }
            bool dup = false;
            for (size_t k = 0; k < nsel; k++) {
                dup |= sel[k]->id == id;
            }
            if (j == conn->n_meta || dup) {
                prl_nbd_reply_error(w, &req, PRL_NBD_EINVAL,
                                    "unknown or repeated context id");
                return;
            }
            sel[nsel++] = &conn->meta[j];
        }
        if (nsel == 0) {
            prl_nbd_reply_error(w, &req, PRL_NBD_EINVAL,
                                "block status payload names no context");
            return;
        }
    } else {
        for (size_t j = 0; j < conn->n_meta; j++) {
            sel[nsel++] = &conn->meta[j];
        }
    }
    if (req.length == 0 || prl_add_overflow(req.offset, req.length, &end) ||
        end > exp->size ||
        ((req.offset | req.length) & (exp->min_block - 1)) != 0) {
        prl_nbd_reply_error(w, &req, PRL_NBD_EINVAL,
                            "block status range is empty, past the end "
                            "of the export or misaligned");
        return;
    }
    if (prl_nbd_worker_scratch(
            w, max_ext * (2 * sizeof(struct extent) + desc_size) + 8) < 0) {
        reply_failure(w, &req, -ENOMEM);
        return;
    }
    /* Chunks point into scratch: send what is queued, then each chunk
     * directly. */
    if (prl_nbd_out_flush(w) < 0) {
        return;
    }
    ext = w->scratch;
    ext2 = ext + max_ext;
    wire = (uint8_t *)(ext2 + max_ext);

    for (size_t s = 0; s < nsel; s++) {
        const struct prl_nbd_meta_def *def = sel[s]->def;
        uint64_t pos = req.offset;
        size_t n = 0, hdr_extra = conn->extended ? 8 : 4;
        uint8_t hdr[32];
        struct iovec iov[2];

        while (pos < end && n < max_ext) {
            uint64_t plen;
            uint32_t st;
            int r = def->status(exp, def, pos, end - pos, &plen, &st);
            if (r < 0) {
                reply_failure(w, &req, r);
                return;
            }
            ext_push(ext, &n, plen, st);
            pos += plen;
            if (one && pos - req.offset >= exp->min_block) {
                break;
            }
        }
        if (exp->min_block > 1) {
            size_t m = ext_align(def, ext, n, exp->min_block, ext2);
            if (m == 0) {
                /* Under one block of information: report it merged. */
                ext2[0].length = exp->min_block;
                ext2[0].status = ext[0].status;
                for (size_t i = 1; i < n; i++) {
                    ext2[0].status = def->merge(ext2[0].status, ext[i].status);
                }
                m = 1;
            }
            memcpy(ext, ext2, m * sizeof(*ext));
            n = m;
        }
        if (one) {
            n = 1;
            if (ext[0].length > req.length) {
                ext[0].length = req.length;
            }
        }
        /* Compact descriptors hold 32-bit lengths. */
        uint8_t *d = wire + hdr_extra;
        for (size_t i = 0; i < n; i++) {
            if (conn->extended) {
                prl_be64_store(d, ext[i].length);
                prl_be64_store(d + 8, ext[i].status);
            } else {
                prl_be32_store(d, (uint32_t)ext[i].length);
                prl_be32_store(d + 4, ext[i].status);
            }
            d += desc_size;
        }
        prl_be32_store(wire, sel[s]->id);
        if (conn->extended) {
            prl_be32_store(wire + 4, (uint32_t)n);
        }
        iov[0].iov_base = hdr;
        iov[0].iov_len = prl_nbd_chunk_header(
            conn, hdr, &req, s + 1 == nsel ? PRL_NBD_REPLY_FLAG_DONE : 0,
            conn->extended ? PRL_NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                           : PRL_NBD_REPLY_TYPE_BLOCK_STATUS,
            hdr_extra + n * desc_size);
        iov[1].iov_base = wire;
        iov[1].iov_len = hdr_extra + n * desc_size;
        if (prl_nbd_send_locked(conn, iov, 2) < 0) {
            return;
        }
    }
}

static void handle(struct prl_nbd_worker *w, struct prl_nbd_req *req)
{
    struct prl_nbd_conn *conn = w->conn;
    char buf[256];
    const char *msg = req->error_msg;
    uint32_t err = req->error;

    if (err == 0) {
        err = check_request(conn, req, buf, sizeof(buf), &msg);
    }
    if (err != 0) {
        prl_debug("%s: %s refused: %s", conn->peer, prl_nbd_cmd_name(req->type),
                  msg);
        prl_nbd_reply_error(w, req, err, msg);
        return;
    }
    switch (req->type) {
    case PRL_NBD_CMD_READ:
        cmd_read(w, req);
        break;
    case PRL_NBD_CMD_WRITE:
        cmd_write(w, req);
        break;
    case PRL_NBD_CMD_FLUSH:
        cmd_flush(w, req);
        break;
    case PRL_NBD_CMD_TRIM:
        cmd_trim(w, req);
        break;
    case PRL_NBD_CMD_CACHE:
        cmd_cache(w, req);
        break;
    case PRL_NBD_CMD_WRITE_ZEROES:
        cmd_zero(w, req);
        break;
    case PRL_NBD_CMD_BLOCK_STATUS:
        cmd_block_status(w, req);
        break;
    }
}

/* ---- workers ---- */

/* Whether a whole request (header and payload) is already received;
 * *bytes is the data it moves. */
static bool request_buffered(const struct prl_nbd_conn *conn, uint64_t *bytes)
{
    size_t hsize = conn->extended ? sizeof(struct prl_nbd_ext_request)
                                  : sizeof(struct prl_nbd_request);
    size_t avail = conn->rend - conn->rpos;
    const uint8_t *p = conn->rbuf + conn->rpos;
    uint16_t flags, type;
    uint64_t length;
    bool payload;

    if (avail < hsize) {
        return false;
    }
    flags = prl_be16_load(p + 4);
    type = prl_be16_load(p + 6);
    length = conn->extended ? prl_be64_load(p + 24) : prl_be32_load(p + 24);
    payload = conn->extended ? (flags & PRL_NBD_CMD_FLAG_PAYLOAD_LEN) != 0
                             : type == PRL_NBD_CMD_WRITE;
    if (payload && length > avail - hsize) {
        return false;
    }
    *bytes = payload || type == PRL_NBD_CMD_READ ? length : 0;
    return true;
}

static void slot_in(struct prl_nbd_worker *w, struct prl_nbd_slot *s)
{
    w->buf = s->buf;
    w->buf_size = s->buf_size;
}

static void slot_out(struct prl_nbd_worker *w, struct prl_nbd_slot *s)
{
    s->buf = w->buf;
    s->buf_size = w->buf_size;
    w->buf = NULL;
    w->buf_size = 0;
}

/* Take the next request, and the ones right behind it that are already
 * received (a batch), off the socket; read_lock held.  Returns how
 * many. */
static size_t read_batch_locked(struct prl_nbd_worker *w)
{
    struct prl_nbd_conn *conn = w->conn;
    uint64_t total = 0;
    size_t n = 0;

    while (!conn->read_done && !atomic_load(&conn->dead) && n < PRL_NBD_BATCH) {
        struct prl_nbd_slot *s = &w->slots[n];
        uint64_t bytes = 0;
        int r;

        if (n > 0 && (!request_buffered(conn, &bytes) ||
                      total + bytes > PRL_NBD_BATCH_BYTES)) {
            break;
        }
        slot_in(w, s);
        r = read_request(w, &s->req);
        slot_out(w, s);
        if (r <= 0 || s->req.type == PRL_NBD_CMD_DISC) {
            conn->read_done = true;
            if (r < 0) {
                prl_info("%s: %s", conn->peer, prl_error_message());
            } else if (r > 0) {
                conn->got_disc = true;
            }
            break;
        }
        total += bytes;
        n++;
    }
    return n;
}

/*
 * Inline serving.  Handing the socket to the next worker costs a futex
 * wake-up and a context switch per batch, which is most of the CPU a
 * small request costs when the data is in the page cache.  So while
 * requests complete fast, the worker that read a batch of small reads
 * and writes serves it still holding read_lock, and reads the next batch
 * itself.  A batch that takes longer than SLOW_BATCH_NS (a page cache
 * miss, a cluster allocation) switches the connection to hand-off mode,
 * where workers serve in parallel; FAST_BATCHES fast batches in a row
 * switch it back.
 */
#define SLOW_BATCH_NS 500000
#define FAST_BATCHES 256
#define INLINE_MAX_BYTES (64u << 10)

static bool batch_cheap(const struct prl_nbd_worker *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct prl_nbd_req *r = &w->slots[i].req;
        /* Block status moves no data: its length says nothing of its
         * cost, which the batch timing judges. */
        if (r->type == PRL_NBD_CMD_BLOCK_STATUS) {
            continue;
        }
        if ((r->type != PRL_NBD_CMD_READ && r->type != PRL_NBD_CMD_WRITE) ||
            r->length > INLINE_MAX_BYTES || (r->flags & PRL_NBD_CMD_FLAG_FUA)) {
            return false;
        }
    }
    return true;
}

static void note_batch_time(struct prl_nbd_conn *conn, int64_t ns)
{
    if (ns > SLOW_BATCH_NS) {
        atomic_store(&conn->fast_batches, 0);
        atomic_store(&conn->inline_ok, false);
    } else if (atomic_fetch_add(&conn->fast_batches, 1) + 1 >= FAST_BATCHES) {
        atomic_store(&conn->inline_ok, true);
    }
}

/*
 * Workers start as they are needed: a connection that is served inline
 * (a short session such as nbdinfo's, a map of block status requests)
 * never pays for creating and joining threads that would only wait.  The
 * first hand-off of a batch starts one more worker, so that someone reads
 * while the batch is served; each later one starts another, up to the
 * configured count.
 */
struct prl_nbd_pool {
    struct prl_nbd_worker *w;
    unsigned n;       /* workers allowed */
    unsigned started; /* w[0] (the connection's thread) counts; under
                       * the connection's read_lock */
};

static void *worker_main(void *opaque);

/* Start one more worker if the pool allows; read_lock held. */
static void pool_grow_locked(struct prl_nbd_pool *pool)
{
    struct prl_nbd_worker *nw;

    if (pool->started == pool->n) {
        return;
    }
    nw = &pool->w[pool->started];
    if (pthread_create(&nw->thread, NULL, worker_main, nw) != 0) {
        pool->n = pool->started; /* serve with what we have */
        return;
    }
    pool->started++;
}

static void *worker_main(void *opaque)
{
    struct prl_nbd_worker *w = opaque;
    struct prl_nbd_conn *conn = w->conn;

    pthread_mutex_lock(&conn->read_lock);
    for (;;) {
        size_t n = read_batch_locked(w);
        bool inl;
        int64_t t0;

        if (n == 0) {
            break;
        }
        inl = atomic_load(&conn->inline_ok) && batch_cheap(w, n);
        if (!inl) {
            pool_grow_locked(w->pool);
            pthread_mutex_unlock(&conn->read_lock);
        }
        t0 = prl_mono_ns();
        for (size_t i = 0; i < n; i++) {
            struct prl_nbd_slot *s = &w->slots[i];
            uint16_t type = s->req.type;

            /* Replies so far go out before anything that may take a
             * while. */
            if (i > 0 && type != PRL_NBD_CMD_READ &&
                type != PRL_NBD_CMD_WRITE) {
                prl_nbd_out_flush(w);
            }
            slot_in(w, s);
            handle(w, &s->req);
            slot_out(w, s);
        }
        prl_nbd_out_flush(w);
        if (batch_cheap(w, n)) {
            note_batch_time(conn, prl_mono_ns() - t0);
        }
        prl_nbd_worker_trim(w);
        if (!inl) {
            pthread_mutex_lock(&conn->read_lock);
        }
    }
    pthread_mutex_unlock(&conn->read_lock);
    return NULL;
}

void prl_nbd_transmit(struct prl_nbd_conn *conn)
{
    const struct prl_nbd_server_config *cfg = prl_nbd_server_cfg(conn->srv);
    unsigned nw = cfg->workers ? cfg->workers : 8;
    struct prl_nbd_worker *w = calloc(nw, sizeof(*w));
    struct prl_nbd_pool pool = {.w = w, .n = nw, .started = 1};

    conn->rbuf = malloc(PRL_NBD_RBUF_SIZE);
    if (!w || !conn->rbuf) {
        prl_warn("%s: out of memory", conn->peer);
        free(w);
        return;
    }
    conn->rpos = conn->rend = 0;
    /* Polling starts once a run of requests has come quickly. */
    conn->sock.poll_max_ns = cfg->poll_max_ns;
    conn->sock.poll_ns = 0;
    conn->sock.poll_avg = PRL_NBD_POLL_WAIT_CAP * (int64_t)cfg->poll_max_ns;
    atomic_init(&conn->inline_ok, true);
    atomic_init(&conn->fast_batches, 0);
    for (unsigned i = 0; i < nw; i++) {
        w[i].conn = conn;
        w[i].pool = &pool;
    }
    worker_main(&w[0]);
    /* No worker starts once the reading is done (the last one to read
     * saw read_done), so pool.started is final; read_lock orders it. */
    pthread_mutex_lock(&conn->read_lock);
    unsigned started = pool.started;
    pthread_mutex_unlock(&conn->read_lock);
    for (unsigned i = 1; i < started; i++) {
        pthread_join(w[i].thread, NULL);
    }
    for (unsigned i = 0; i < nw; i++) {
        for (size_t j = 0; j < PRL_NBD_BATCH; j++) {
            free(w[i].slots[j].buf);
        }
        free(w[i].scratch);
    }
    free(w);
    free(conn->rbuf);
    conn->rbuf = NULL;
    if (conn->sock.poll_max_ns > 0) {
        prl_debug("%s: busy polling: %" PRIu64 " receives, %" PRIu64
                  " polled, %" PRIu64 " found data",
                  conn->peer, conn->sock.poll_recvs, conn->sock.poll_spins,
                  conn->sock.poll_hits);
    }
    if (!conn->exp->read_only) {
        int r;
        EXPORT_LOCK(conn->exp);
        r = prl_block_flush(conn->exp->bs);
        EXPORT_UNLOCK(conn->exp);
        if (r < 0) {
            prl_warn("%s: flush at disconnect: %s", conn->peer,
                     prl_error_message());
        }
    }
}
