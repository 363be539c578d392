/* SPDX-License-Identifier: MIT */
/* Replies in the transmission phase: chunk headers for structured and
 * extended replies, and whole sends under the send lock. */
#include "nbd/server/internal.h"

#include <errno.h>
#include <string.h>

int prl_nbd_send_begin(struct prl_nbd_conn *conn)
{
    if (atomic_load_explicit(&conn->dead, memory_order_relaxed)) {
        return -EPIPE;
    }
    pthread_mutex_lock(&conn->send_lock);
    return 0;
}

int prl_nbd_send_end(struct prl_nbd_conn *conn, int r)
{
    pthread_mutex_unlock(&conn->send_lock);
    if (r < 0) {
        atomic_store(&conn->dead, true);
        conn->sock.ops->shutdown_all(&conn->sock);
    }
    return r;
}

int prl_nbd_send_locked(struct prl_nbd_conn *conn, struct iovec *iov,
                        int iovcnt)
{
    int r;

    if (atomic_load_explicit(&conn->dead, memory_order_relaxed)) {
        return -EPIPE;
    }
    pthread_mutex_lock(&conn->send_lock);
    r = conn->sock.ops->sendv(&conn->sock, iov, iovcnt);
    pthread_mutex_unlock(&conn->send_lock);
    if (r < 0) {
        /* A reply is lost: the stream is unusable, stop serving it. */
        atomic_store(&conn->dead, true);
        conn->sock.ops->shutdown_all(&conn->sock);
    }
    return r;
}

size_t prl_nbd_chunk_header(const struct prl_nbd_conn *conn, void *hdr,
                            const struct prl_nbd_req *req, uint16_t flags,
                            uint16_t type, uint64_t length)
{
    if (conn->extended) {
        struct prl_nbd_ext_reply h = {
            .magic = htobe32(PRL_NBD_MAGIC_EXT_REPLY),
            .flags = htobe16(flags),
            .type = htobe16(type),
            .cookie = htobe64(req->cookie),
            .offset = htobe64(req->offset),
            .length = htobe64(length),
        };
        memcpy(hdr, &h, sizeof(h));
        return sizeof(h);
    } else {
        struct prl_nbd_struct_reply h = {
            .magic = htobe32(PRL_NBD_MAGIC_STRUCT_REPLY),
            .flags = htobe16(flags),
            .type = htobe16(type),
            .cookie = htobe64(req->cookie),
            .length = htobe32((uint32_t)length),
        };
        memcpy(hdr, &h, sizeof(h));
        return sizeof(h);
    }
}

int prl_nbd_out_flush(struct prl_nbd_worker *w)
{
    int r = 0;

    if (w->out_n > 0) {
        r = prl_nbd_send_locked(w->conn, w->out_iov, w->out_n);
    }
    w->out_n = 0;
    w->out_used = 0;
    w->out_total = 0;
    return r;
}

int prl_nbd_out(struct prl_nbd_worker *w, const struct iovec *iov, int n)
{
    size_t copy = 0, total = 0;

    for (int i = 0; i < n; i++) {
        total += iov[i].iov_len;
        if (iov[i].iov_len <= 512) {
            copy += iov[i].iov_len;
        }
    }
    if (w->out_n + n > PRL_NBD_OUT_IOV ||
        w->out_used + copy > PRL_NBD_OUT_BYTES) {
        int r = prl_nbd_out_flush(w);
        if (r < 0) {
            return r;
        }
        if (n > PRL_NBD_OUT_IOV / 2 || copy > PRL_NBD_OUT_BYTES) {
            /* Too big to queue: straight out (iov is the caller's). */
            return prl_nbd_send_locked(w->conn, (struct iovec *)iov, n);
        }
    }
    for (int i = 0; i < n; i++) {
        size_t len = iov[i].iov_len;
        struct iovec *last = w->out_n ? &w->out_iov[w->out_n - 1] : NULL;

        if (len == 0) {
            continue;
        }
        if (len > 512) {
            w->out_iov[w->out_n++] = iov[i];
            continue;
        }
        memcpy(w->out_bytes + w->out_used, iov[i].iov_base, len);
        if (last && (uint8_t *)last->iov_base + last->iov_len ==
                        w->out_bytes + w->out_used) {
            last->iov_len += len; /* extends the previous small piece */
        } else {
            w->out_iov[w->out_n].iov_base = w->out_bytes + w->out_used;
            w->out_iov[w->out_n++].iov_len = len;
        }
        w->out_used += len;
    }
    w->out_total += total;
    if (w->out_total >= PRL_NBD_OUT_FLUSH) {
        return prl_nbd_out_flush(w);
    }
    return 0;
}

static int reply_simple(struct prl_nbd_worker *w, const struct prl_nbd_req *req,
                        uint32_t error)
{
    struct prl_nbd_simple_reply h = {
        .magic = htobe32(PRL_NBD_MAGIC_SIMPLE_REPLY),
        .error = htobe32(error),
        .cookie = htobe64(req->cookie),
    };
    struct iovec iov = {.iov_base = &h, .iov_len = sizeof(h)};

    return prl_nbd_out(w, &iov, 1);
}

int prl_nbd_reply_ok(struct prl_nbd_worker *w, const struct prl_nbd_req *req)
{
    struct prl_nbd_conn *conn = w->conn;
    uint8_t hdr[32];
    struct iovec iov;

    /* Structured clients accept a simple reply without payload (shorter
     * to send); extended ones must get a chunk. */
    if (!conn->extended) {
        return reply_simple(w, req, 0);
    }
    iov.iov_base = hdr;
    iov.iov_len = prl_nbd_chunk_header(conn, hdr, req, PRL_NBD_REPLY_FLAG_DONE,
                                       PRL_NBD_REPLY_TYPE_NONE, 0);
    return prl_nbd_out(w, &iov, 1);
}

int prl_nbd_reply_error(struct prl_nbd_worker *w, const struct prl_nbd_req *req,
                        uint32_t error, const char *msg)
{
    struct prl_nbd_conn *conn = w->conn;
    uint8_t hdr[32];
    struct prl_nbd_chunk_error ce;
    struct iovec iov[3];
    size_t mlen = msg ? strlen(msg) : 0;

    if (!conn->structured && !conn->extended) {
        return reply_simple(w, req, error);
    }
    if (mlen > 512 - sizeof(struct prl_nbd_chunk_error)) {
        mlen = 512 - sizeof(struct prl_nbd_chunk_error);
    }
    ce.error = htobe32(error);
    ce.msg_length = htobe16((uint16_t)mlen);
    iov[0].iov_base = hdr;
    iov[0].iov_len =
        prl_nbd_chunk_header(conn, hdr, req, PRL_NBD_REPLY_FLAG_DONE,
                             PRL_NBD_REPLY_TYPE_ERROR, sizeof(ce) + mlen);
    iov[1].iov_base = &ce;
    iov[1].iov_len = sizeof(ce);
    iov[2].iov_base = (void *)msg;
    iov[2].iov_len = mlen;
    return prl_nbd_out(w, iov, mlen ? 3 : 2);
}
