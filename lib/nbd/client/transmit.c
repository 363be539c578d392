/* SPDX-License-Identifier: MIT */
/* The client's transmission phase: requests (compact or extended
 * headers), and replies (simple, structured or extended) read and checked
 * against the request they answer before a byte lands in the caller's
 * buffer.  Several threads may each have a request in flight: they send
 * one at a time (send_lock), and while any of them waits, one of the
 * waiting threads reads replies for all, handing each chunk to the
 * request its cookie names ("whoever waits reads"). */
#include "nbd/client/internal.h"
#include "nbd/wire.h"
#include "common/util.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest status chunk taken: the spec's 2^20 extents, plus the header. */
#define STATUS_CHUNK_MAX (8 + 16 * ((uint64_t)1 << 20))
/* Largest error chunk: message plus fixed fields. */
#define ERROR_CHUNK_MAX (6 + 65535 + 8)

/* A byte range of a read reply already filled. */
struct span {
    uint64_t start, end;
};

/* Where the extents of one context go. */
struct ext_list {
    struct prl_nbd_extent *v; /* NULL: not wanted */
    size_t cap, n;
};

/* Descriptors read from the socket at once. */
#define DESC_BATCH 256

/* What one request expects and what its reply gave. */
struct prl_nbd_req {
    struct prl_nbd_req *next; /* in c->pending */
    uint16_t type;
    uint64_t cookie, off, len;
    uint8_t *buf; /* READ: len bytes */
    /* READ: ranges covered so far, sorted, never overlapping. */
    struct span *spans;
    size_t n_spans, cap_spans;
    uint64_t covered;
    /* BLOCK_STATUS: the extents (clamped to the request) of
     * base:allocation, the depth and bitmap number want_bitmap, as many
     * as each list holds; which contexts' chunks came. */
    struct ext_list alloc, depth, bitmap;
    size_t want_bitmap;
    /* The contexts asked for: every negotiated one, unless the server
     * takes a list of them (NBD_FLAG_BLOCK_STATUS_PAYLOAD), and the
     * ones that came. */
    bool ask_alloc, ask_depth;
    uint64_t ask_bitmaps; /* bit i: c->bitmaps[i] */
    bool seen_alloc, seen_depth;
    uint64_t seen_bitmaps;
    /* Bytes of payload when it is no write's data: the list. */
    uint32_t plen;
    /* The first error chunk (or simple error): errno and message. */
    int err;
    /* Set under c->lock by whichever thread finished the reply. */
    bool done;
    int result;    /* 0 or a negative errno */
    char msg[512]; /* the message of a failed result */
};

/* Record the server's error |e| for |rq| (the first one wins). */
static void server_error(struct prl_nbd_client *c, struct prl_nbd_req *rq,
                         uint32_t e, const char *msg)
{
    if (rq->err) {
        return;
    }
    rq->err = prl_nbd_wire_to_errno(e);
    snprintf(rq->msg, sizeof(rq->msg),
             "nbd server %s: %s of %" PRIu64 " bytes at offset %" PRIu64
             " failed: error %" PRIu32 " (%s)%s%s",
             c->name, prl_nbd_cmd_name(rq->type), rq->len, rq->off, e,
             strerror(rq->err), msg && msg[0] ? ": " : "", msg ? msg : "");
}

/* The header of |rq| (compact or extended; the cookie is set) and,
 * for a write, its payload.  The caller holds send_lock. */
static int send_request(struct prl_nbd_client *c, struct prl_nbd_req *rq,
                        uint16_t flags, const void *payload)
{
    uint8_t h[sizeof(struct prl_nbd_ext_request)];
    size_t n;
    int r;

    /* A write's payload is its data; block status's is the list of
     * contexts (extended headers only). */
    uint64_t len = rq->plen ? rq->plen : rq->len;

    if (payload && c->exp.extended) {
        /* Extended headers: the length is the payload's. */
        flags |= PRL_NBD_CMD_FLAG_PAYLOAD_LEN;
    }
    prl_be16_store(h + 4, flags);
    prl_be16_store(h + 6, rq->type);
    prl_be64_store(h + 8, rq->cookie);
    prl_be64_store(h + 16, rq->off);
    if (c->exp.extended) {
        prl_be32_store(h, PRL_NBD_MAGIC_EXT_REQUEST);
        prl_be64_store(h + 24, len);
        n = sizeof(struct prl_nbd_ext_request);
    } else {
        prl_be32_store(h, PRL_NBD_MAGIC_REQUEST);
        prl_be32_store(h + 24, (uint32_t)len);
        n = sizeof(struct prl_nbd_request);
    }
    r = prl_nbd_cl_send(c, h, n);
    if (r == 0 && payload) {
        r = prl_nbd_cl_send(c, payload, (size_t)len);
    }
    return r;
}

/* Note [start, start+len) of a read as covered: it must lie inside the
 * request and overlap nothing covered before. */
static int cover(struct prl_nbd_client *c, struct prl_nbd_req *rq,
                 const char *what, uint64_t start, uint64_t len)
{
    uint64_t end;
    size_t lo = 0, hi = rq->n_spans;

    if (len == 0) {
        return prl_nbd_cl_proto(c, "%s chunk of length 0", what);
    }
    if (start < rq->off || prl_add_overflow(start, len, &end) ||
        end > rq->off + rq->len) {
        return prl_nbd_cl_proto(c,
                                "%s chunk at offset %" PRIu64 " length %" PRIu64
                                " lies outside the read of %" PRIu64
                                " bytes at %" PRIu64,
                                what, start, len, rq->len, rq->off);
    }
    /* First span ending after start. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rq->spans[mid].end <= start) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < rq->n_spans && rq->spans[lo].start < end) {
        return prl_nbd_cl_proto(
            c,
            "%s chunk at offset %" PRIu64 " length %" PRIu64
            " overlaps an earlier chunk (%" PRIu64 "..%" PRIu64 ")",
            what, start, len, rq->spans[lo].start, rq->spans[lo].end);
    }
    if (rq->n_spans == rq->cap_spans) {
        size_t cap = rq->cap_spans ? rq->cap_spans * 2 : 16;
        struct span *v = realloc(rq->spans, cap * sizeof(*v));
        if (!v) {
            c->dead = true;
            return prl_error(ENOMEM, "out of memory");
        }
        rq->spans = v;
        rq->cap_spans = cap;
    }
    memmove(&rq->spans[lo + 1], &rq->spans[lo],
            (rq->n_spans - lo) * sizeof(*rq->spans));
    rq->spans[lo].start = start;
    rq->spans[lo].end = end;
    rq->n_spans++;
    rq->covered += len;
    return 0;
}

/* An error chunk of |len| bytes (type |type|): record it. */
static int error_chunk(struct prl_nbd_client *c, struct prl_nbd_req *rq,
                       uint16_t type, uint64_t len)
{
    uint8_t h[6];
    char msg[256], *raw;
    uint32_t e;
    uint16_t ml;
    int r;

    if (len < 6 || len > ERROR_CHUNK_MAX) {
        return prl_nbd_cl_proto(
            c, "error chunk (type 0x%04x) has length %" PRIu64, type, len);
    }
    r = prl_nbd_cl_recv(c, h, sizeof(h));
    if (r < 0) {
        return r;
    }
    e = prl_be32_load(h);
    ml = prl_be16_load(h + 4);
    if (ml > len - 6) {
        return prl_nbd_cl_proto(c,
                                "error chunk message length %u exceeds the "
                                "chunk's %" PRIu64 " bytes",
                                ml, len - 6);
    }
    if (type == PRL_NBD_REPLY_TYPE_ERROR && len != 6u + ml) {
        return prl_nbd_cl_proto(c,
                                "NBD_REPLY_TYPE_ERROR has length %" PRIu64
                                ", want %u for a %u byte message",
                                len, 6u + ml, ml);
    }
    if (type == PRL_NBD_REPLY_TYPE_ERROR_OFFSET && len != 14u + ml) {
        return prl_nbd_cl_proto(
            c,
            "NBD_REPLY_TYPE_ERROR_OFFSET has length %" PRIu64
            ", want %u for a %u byte message",
            len, 14u + ml, ml);
    }
    raw = malloc((size_t)ml + 1);
    if (!raw) {
        c->dead = true;
        return prl_error(ENOMEM, "out of memory");
    }
    r = prl_nbd_cl_recv(c, raw, ml);
    if (r < 0) {
        free(raw);
        return r;
    }
    prl_nbd_cl_printable(msg, sizeof(msg), raw, ml);
    free(raw);
    if (e == 0) {
        return prl_nbd_cl_proto(c, "error chunk with error value 0");
    }
    if (type == PRL_NBD_REPLY_TYPE_ERROR_OFFSET) {
        uint8_t o[8];
        r = prl_nbd_cl_recv(c, o, sizeof(o));
        if (r < 0) {
            return r;
        }
        uint64_t at = prl_be64_load(o);
        if (rq->type == PRL_NBD_CMD_READ &&
            (at < rq->off || at - rq->off >= rq->len)) {
            return prl_nbd_cl_proto(c,
                                    "error offset %" PRIu64
                                    " lies outside the read of %" PRIu64
                                    " bytes at %" PRIu64,
                                    at, rq->len, rq->off);
        }
    } else if (type != PRL_NBD_REPLY_TYPE_ERROR) {
        r = prl_nbd_cl_skip(c, len - 6 - ml);
        if (r < 0) {
            return r;
        }
    }
    server_error(c, rq, e, msg);
    return 0;
}

/* A block status chunk; keeps the first extent, clamped to the request. */
static int status_chunk(struct prl_nbd_client *c, struct prl_nbd_req *rq,
                        bool ext, uint64_t len)
{
    uint8_t h[8], d[DESC_BATCH * 16];
    size_t hl = ext ? 8 : 4, dl = ext ? 16 : 8;
    uint64_t count, sum = 0;
    struct ext_list *dst;
    bool asked, twice;
    int r;

    if (rq->type != PRL_NBD_CMD_BLOCK_STATUS) {
        return prl_nbd_cl_proto(c, "block status chunk in reply to a %s",
                                prl_nbd_cmd_name(rq->type));
    }
    if (len < hl + dl || (len - hl) % dl != 0 || len > STATUS_CHUNK_MAX) {
        return prl_nbd_cl_proto(c,
                                "block status chunk has length %" PRIu64
                                " (want %zu + a multiple of %zu)",
                                len, hl, dl);
    }
    count = (len - hl) / dl;
    r = prl_nbd_cl_recv(c, h, hl);
    if (r < 0) {
        return r;
    }
    uint32_t id = prl_be32_load(h);
    if (ext && prl_be32_load(h + 4) != count) {
        return prl_nbd_cl_proto(c,
                                "block status descriptor count %" PRIu32
                                " does not match the chunk length %" PRIu64,
                                prl_be32_load(h + 4), len);
    }
    /* Which list it fills, whether the request asked for it, and
     * whether it came before. */
    if (c->exp.has_alloc && id == c->ctx_alloc) {
        dst = &rq->alloc;
        asked = rq->ask_alloc;
        twice = rq->seen_alloc;
        rq->seen_alloc = true;
    } else if (c->exp.has_depth && id == c->ctx_depth) {
        dst = &rq->depth;
        asked = rq->ask_depth;
        twice = rq->seen_depth;
        rq->seen_depth = true;
    } else {
        size_t i;
        for (i = 0; i < c->n_bitmaps && c->bitmaps[i].id != id; i++) {
        }
        if (i == c->n_bitmaps) {
            return prl_nbd_cl_proto(
                c, "block status for unknown context id %" PRIu32, id);
        }
        uint64_t bit = (uint64_t)1 << i;
        dst = i == rq->want_bitmap ? &rq->bitmap : NULL;
        asked = rq->ask_bitmaps & bit;
        twice = rq->seen_bitmaps & bit;
        rq->seen_bitmaps |= bit;
    }
    if (!asked) {
        return prl_nbd_cl_proto(c,
                                "block status for context id %" PRIu32
                                ", which the request did not list",
                                id);
    }
    if (twice) {
        return prl_nbd_cl_proto(
            c, "two block status chunks for context id %" PRIu32, id);
    }
    for (uint64_t i = 0; i < count;) {
        size_t batch = (size_t)PRL_MIN(count - i, (uint64_t)DESC_BATCH);
        r = prl_nbd_cl_recv(c, d, batch * dl);
        if (r < 0) {
            return r;
        }
        for (size_t j = 0; j < batch; j++, i++) {
            const uint8_t *p = d + j * dl;
            uint64_t l = ext ? prl_be64_load(p) : prl_be32_load(p);
            uint64_t f = ext ? prl_be64_load(p + 8) : prl_be32_load(p + 4);
            if (l == 0) {
                return prl_nbd_cl_proto(
                    c, "block status descriptor %" PRIu64 " has length 0", i);
            }
            if (sum >= rq->len) {
                return prl_nbd_cl_proto(c,
                                        "block status descriptor %" PRIu64
                                        " starts past the %" PRIu64
                                        " bytes asked for",
                                        i, rq->len);
            }
            if (dst && dst->v && dst->n < dst->cap) {
                dst->v[dst->n].length = PRL_MIN(l, rq->len - sum);
                dst->v[dst->n].flags = f;
                dst->n++;
            }
            sum = prl_add_overflow(sum, l, &sum) ? UINT64_MAX : sum;
        }
    }
    return 0;
}

/* The request in flight with |cookie| (not yet done), or NULL.  It
 * becomes c->reading_rq: its waiter stays until the reader lets go. */
static struct prl_nbd_req *find_pending(struct prl_nbd_client *c,
                                        uint64_t cookie)
{
    struct prl_nbd_req *rq;

    pthread_mutex_lock(&c->lock);
    for (rq = c->pending; rq && (rq->cookie != cookie || rq->done);
         rq = rq->next) {
    }
    c->reading_rq = rq;
    pthread_mutex_unlock(&c->lock);
    return rq;
}

/* The reply to |rq| is complete: its result, from what the chunks said.
 * 0 when the connection is still good, -EIO for a protocol violation
 * (the reply then ends the connection). */
static int finish(struct prl_nbd_client *c, struct prl_nbd_req *rq)
{
    if (rq->err) {
        rq->result = -rq->err; /* the message is in rq->msg */
    } else if (rq->type == PRL_NBD_CMD_READ && rq->covered != rq->len) {
        return prl_nbd_cl_proto(c,
                                "read reply covered %" PRIu64 " of %" PRIu64
                                " bytes at offset %" PRIu64,
                                rq->covered, rq->len, rq->off);
    } else if (rq->type == PRL_NBD_CMD_BLOCK_STATUS &&
               (rq->ask_alloc != rq->seen_alloc ||
                rq->ask_depth != rq->seen_depth ||
                rq->seen_bitmaps != rq->ask_bitmaps)) {
        return prl_nbd_cl_proto(c, "block status reply lacks a context "
                                   "that was asked for");
    }
    pthread_mutex_lock(&c->lock);
    rq->done = true;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

/* A simple reply (the magic is read): check it against its request and
 * finish that request. */
static int simple_reply(struct prl_nbd_client *c, uint8_t *h)
{
    struct prl_nbd_req *rq;
    uint64_t cookie;
    uint32_t e;
    int r = prl_nbd_cl_recv(c, h + 4, 12);

    if (r < 0) {
        return r;
    }
    e = prl_be32_load(h + 4);
    cookie = prl_be64_load(h + 8);
    rq = find_pending(c, cookie);
    if (!rq) {
        return prl_nbd_cl_proto(
            c, "reply cookie %" PRIu64 " names no request in flight", cookie);
    }
    if (rq->type == PRL_NBD_CMD_READ && c->exp.structured) {
        return prl_nbd_cl_proto(c, "simple reply to a read after structured "
                                   "replies were negotiated");
    }
    if (rq->n_spans > 0 || rq->seen_alloc || rq->seen_depth ||
        rq->seen_bitmaps || rq->err) {
        return prl_nbd_cl_proto(c, "simple reply after structured chunks of "
                                   "the same request");
    }
    if (rq->type == PRL_NBD_CMD_BLOCK_STATUS && e == 0) {
        return prl_nbd_cl_proto(c, "simple reply without error to block "
                                   "status");
    }
    if (e != 0) {
        server_error(c, rq, e, NULL);
    } else if (rq->type == PRL_NBD_CMD_READ) {
        r = prl_nbd_cl_recv(c, rq->buf, (size_t)rq->len);
        if (r < 0) {
            return r;
        }
        rq->covered = rq->len;
    }
    return finish(c, rq);
}

/* Read one reply message (a simple reply or one chunk) and hand it to
 * the request it answers, finishing that request on its last chunk.
 * 0, or a negative errno (message set) when the connection failed or
 * the server broke the protocol; the client is then dead. */
static int read_chunk(struct prl_nbd_client *c)
{
    uint8_t h[sizeof(struct prl_nbd_ext_reply)];
    struct prl_nbd_req *rq;
    uint32_t magic;
    uint16_t flags, type;
    uint64_t cookie, len, off = 0;
    int r = prl_nbd_cl_recv(c, h, 4);

    if (r < 0) {
        return r;
    }
    magic = prl_be32_load(h);
    if (magic == PRL_NBD_MAGIC_SIMPLE_REPLY && !c->exp.extended) {
        return simple_reply(c, h);
    }
    if (magic == PRL_NBD_MAGIC_STRUCT_REPLY && c->exp.structured &&
        !c->exp.extended) {
        r = prl_nbd_cl_recv(c, h + 4, 16);
        if (r < 0) {
            return r;
        }
        len = prl_be32_load(h + 16);
    } else if (magic == PRL_NBD_MAGIC_EXT_REPLY && c->exp.extended) {
        r = prl_nbd_cl_recv(c, h + 4, 28);
        if (r < 0) {
            return r;
        }
        off = prl_be64_load(h + 16);
        len = prl_be64_load(h + 24);
    } else {
        return prl_nbd_cl_proto(
            c, "reply magic 0x%08" PRIx32 " is not valid with %s", magic,
            c->exp.extended     ? "extended headers"
            : c->exp.structured ? "structured replies"
                                : "simple replies");
    }
    flags = prl_be16_load(h + 4);
    type = prl_be16_load(h + 6);
    cookie = prl_be64_load(h + 8);
    rq = find_pending(c, cookie);
    if (!rq) {
        return prl_nbd_cl_proto(
            c, "reply cookie %" PRIu64 " names no request in flight", cookie);
    }
    if (c->exp.extended && off != rq->off) {
        return prl_nbd_cl_proto(c,
                                "extended reply offset %" PRIu64
                                " is not the request's %" PRIu64,
                                off, rq->off);
    }
    switch (type) {
    case PRL_NBD_REPLY_TYPE_NONE:
        if (len != 0 || !(flags & PRL_NBD_REPLY_FLAG_DONE)) {
            return prl_nbd_cl_proto(c,
                                    "NBD_REPLY_TYPE_NONE with length "
                                    "%" PRIu64 " and flags 0x%x (want 0 "
                                    "and DONE)",
                                    len, flags);
        }
        break;
    case PRL_NBD_REPLY_TYPE_OFFSET_DATA: {
        uint8_t o[8];
        if (rq->type != PRL_NBD_CMD_READ) {
            return prl_nbd_cl_proto(c, "data chunk in reply to a %s",
                                    prl_nbd_cmd_name(rq->type));
        }
        if (len < 9) {
            return prl_nbd_cl_proto(
                c, "data chunk has length %" PRIu64 " (at least 9)", len);
        }
        r = prl_nbd_cl_recv(c, o, 8);
        if (r < 0) {
            return r;
        }
        uint64_t at = prl_be64_load(o);
        r = cover(c, rq, "data", at, len - 8);
        if (r == 0) {
            r = prl_nbd_cl_recv(c, rq->buf + (at - rq->off), (size_t)(len - 8));
        }
        if (r < 0) {
            return r;
        }
        break;
    }
    case PRL_NBD_REPLY_TYPE_OFFSET_HOLE: {
        uint8_t o[12];
        if (rq->type != PRL_NBD_CMD_READ) {
            return prl_nbd_cl_proto(c, "hole chunk in reply to a %s",
                                    prl_nbd_cmd_name(rq->type));
        }
        if (len != 12) {
            return prl_nbd_cl_proto(
                c, "hole chunk has length %" PRIu64 " (want 12)", len);
        }
        r = prl_nbd_cl_recv(c, o, 12);
        if (r < 0) {
            return r;
        }
        uint64_t at = prl_be64_load(o);
        uint32_t hl = prl_be32_load(o + 8);
        r = cover(c, rq, "hole", at, hl);
        if (r < 0) {
            return r;
        }
        memset(rq->buf + (at - rq->off), 0, hl);
        break;
    }
    case PRL_NBD_REPLY_TYPE_BLOCK_STATUS:
    case PRL_NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
        if ((type == PRL_NBD_REPLY_TYPE_BLOCK_STATUS_EXT) != c->exp.extended) {
            return prl_nbd_cl_proto(c,
                                    "block status chunk type %u with%s "
                                    "extended headers",
                                    type, c->exp.extended ? "" : "out");
        }
        r = status_chunk(c, rq, c->exp.extended, len);
        if (r < 0) {
            return r;
        }
        break;
    default:
        if (!(type & (1u << 15))) {
            return prl_nbd_cl_proto(c,
                                    "unknown reply chunk type %u "
                                    "(length %" PRIu64 ")",
                                    type, len);
        }
        r = error_chunk(c, rq, type, len);
        if (r < 0) {
            return r;
        }
        break;
    }
    if (flags & PRL_NBD_REPLY_FLAG_DONE) {
        return finish(c, rq);
    }
    return 0;
}

/* Fail every request in flight with the error that killed the
 * connection.  Called with c->lock held. */
static void fail_all_locked(struct prl_nbd_client *c, int err)
{
    for (struct prl_nbd_req *rq = c->pending; rq; rq = rq->next) {
        if (!rq->done) {
            rq->done = true;
            rq->result = err;
            snprintf(rq->msg, sizeof(rq->msg), "%s", c->dead_msg);
        }
    }
}

/* Remove |rq| from c->pending.  Called with c->lock held. */
static void unlink_locked(struct prl_nbd_client *c, struct prl_nbd_req *rq)
{
    for (struct prl_nbd_req **p = &c->pending; *p; p = &(*p)->next) {
        if (*p == rq) {
            *p = rq->next;
            break;
        }
    }
}

/* The connection failed in this thread (message set): record why for
 * the other waiters and fail them all.  Called with c->lock held. */
static void kill_locked(struct prl_nbd_client *c, int err)
{
    c->dead = true;
    snprintf(c->dead_msg, sizeof(c->dead_msg), "%s", prl_error_message());
    fail_all_locked(c, err);
    pthread_cond_broadcast(&c->cond);
}

/* Send |rq| and wait for its reply, reading replies (for any request)
 * whenever no other waiting thread does.  0, or a negative errno with a
 * message set in this thread. */
static int exchange(struct prl_nbd_client *c, struct prl_nbd_req *rq,
                    uint16_t flags, const void *payload)
{
    int r;

    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        pthread_mutex_unlock(&c->lock);
        return prl_error(EIO,
                         "nbd server %s: the connection is unusable after "
                         "an earlier error: %s",
                         c->name, c->dead_msg);
    }
    rq->cookie = c->next_cookie++;
    rq->next = c->pending;
    c->pending = rq;
    pthread_mutex_unlock(&c->lock);

    pthread_mutex_lock(&c->send_lock);
    r = send_request(c, rq, flags, payload);
    pthread_mutex_unlock(&c->send_lock);

    pthread_mutex_lock(&c->lock);
    if (r < 0) {
        kill_locked(c, r);
    }
    /* Done, and no reader still writing into this request's buffers
     * (a connection killed by another thread marks it done early). */
    while (!rq->done || c->reading_rq == rq) {
        if (c->reading) {
            pthread_cond_wait(&c->cond, &c->lock);
            continue;
        }
        c->reading = true;
        pthread_mutex_unlock(&c->lock);
        r = read_chunk(c);
        pthread_mutex_lock(&c->lock);
        c->reading = false;
        c->reading_rq = NULL;
        if (r < 0) {
            kill_locked(c, r);
        }
        pthread_cond_broadcast(&c->cond);
    }
    unlink_locked(c, rq);
    r = rq->result;
    if (r == -ESHUTDOWN) {
        /* The server is going away: no new requests. */
        c->dead = true;
        snprintf(c->dead_msg, sizeof(c->dead_msg), "%s", rq->msg);
    }
    pthread_mutex_unlock(&c->lock);
    free(rq->spans);
    rq->spans = NULL;
    rq->n_spans = rq->cap_spans = 0;
    if (r < 0) {
        prl_error(-r, "%s", rq->msg);
    }
    return r;
}

/* Split [off, off+len) into requests of at most |max| bytes. */
static int split(struct prl_nbd_client *c, uint16_t type, uint16_t flags,
                 uint8_t *buf, const uint8_t *payload, uint64_t len,
                 uint64_t off, uint64_t max)
{
    int r = 0;

    while (len > 0 && r == 0) {
        struct prl_nbd_req rq;
        memset(&rq, 0, sizeof(rq));
        rq.type = type;
        rq.off = off;
        rq.len = PRL_MIN(len, max);
        rq.buf = buf;
        r = exchange(c, &rq, flags, payload);
        off += rq.len;
        len -= rq.len;
        if (buf) {
            buf += rq.len;
        }
        if (payload) {
            payload += rq.len;
        }
    }
    return r;
}

/* Largest length of a request without payload: a 32-bit field, kept a
 * multiple of the minimum block size. */
static uint64_t max_effect(const struct prl_nbd_client *c)
{
    return prl_round_down(UINT32_MAX, c->exp.min_block);
}

int prl_nbd_client_read(struct prl_nbd_client *c, void *buf, uint64_t len,
                        uint64_t off)
{
    return split(c, PRL_NBD_CMD_READ, 0, buf, NULL, len, off, c->exp.max_block);
}

int prl_nbd_client_write(struct prl_nbd_client *c, const void *buf,
                         uint64_t len, uint64_t off, bool fua)
{
    bool send_fua = fua && (c->exp.tflags & PRL_NBD_FLAG_SEND_FUA);
    int r = split(c, PRL_NBD_CMD_WRITE, send_fua ? PRL_NBD_CMD_FLAG_FUA : 0,
                  NULL, buf, len, off, c->exp.max_block);

    if (r == 0 && fua && !send_fua) {
        r = prl_nbd_client_flush(c);
    }
    return r;
}

int prl_nbd_client_zero(struct prl_nbd_client *c, uint64_t len, uint64_t off,
                        unsigned flags)
{
    uint16_t tf = c->exp.tflags;
    int r;

    if (!(tf & PRL_NBD_FLAG_SEND_WRITE_ZEROES)) {
        return prl_error(ENOTSUP, "nbd server %s has no WRITE_ZEROES", c->name);
    }
    if ((flags & PRL_NBD_CMD_FLAG_FAST_ZERO) &&
        !(tf & PRL_NBD_FLAG_SEND_FAST_ZERO)) {
        return prl_error(ENOTSUP, "nbd server %s cannot zero fast", c->name);
    }
    bool fua = flags & PRL_NBD_CMD_FLAG_FUA;
    if (!(tf & PRL_NBD_FLAG_SEND_FUA)) {
        flags &= ~PRL_NBD_CMD_FLAG_FUA;
    }
    r = split(c, PRL_NBD_CMD_WRITE_ZEROES, (uint16_t)flags, NULL, NULL, len,
              off, max_effect(c));
    if (r == 0 && fua && !(flags & PRL_NBD_CMD_FLAG_FUA)) {
        r = prl_nbd_client_flush(c);
    }
    return r;
}

int prl_nbd_client_trim(struct prl_nbd_client *c, uint64_t len, uint64_t off,
                        bool fua)
{
    int r = 0;

    if (c->exp.tflags & PRL_NBD_FLAG_SEND_TRIM) {
        bool send_fua = fua && (c->exp.tflags & PRL_NBD_FLAG_SEND_FUA);
        r = split(c, PRL_NBD_CMD_TRIM, send_fua ? PRL_NBD_CMD_FLAG_FUA : 0,
                  NULL, NULL, len, off, max_effect(c));
        fua = fua && !send_fua;
    }
    if (r == 0 && fua) {
        r = prl_nbd_client_flush(c);
    }
    return r;
}

int prl_nbd_client_flush(struct prl_nbd_client *c)
{
    struct prl_nbd_req rq;

    if (!(c->exp.tflags & PRL_NBD_FLAG_SEND_FLUSH)) {
        return 0;
    }
    memset(&rq, 0, sizeof(rq));
    rq.type = PRL_NBD_CMD_FLUSH;
    return exchange(c, &rq, 0, NULL);
}

int prl_nbd_client_cache(struct prl_nbd_client *c, uint64_t len, uint64_t off)
{
    if (!(c->exp.tflags & PRL_NBD_FLAG_SEND_CACHE)) {
        return 0; /* a hint */
    }
    return split(c, PRL_NBD_CMD_CACHE, 0, NULL, NULL, len, off,
                 c->exp.max_block);
}

/* Send block status request |rq| for base:allocation when |alloc|,
 * qemu:allocation-depth when |depth| and bitmap |bitmap| (SIZE_MAX:
 * none), each only when negotiated; wait for its reply.  A server that
 * takes a list gets one when it leaves contexts out; others answer for
 * every negotiated context. */
static int status_exchange(struct prl_nbd_client *c, struct prl_nbd_req *rq,
                           bool alloc, bool depth, size_t bitmap)
{
    uint64_t all =
        c->n_bitmaps == 64 ? UINT64_MAX : ((uint64_t)1 << c->n_bitmaps) - 1;
    uint64_t bm = bitmap < c->n_bitmaps ? (uint64_t)1 << bitmap : 0;
    uint8_t list[8 + 3 * 4];
    size_t n = 8;

    alloc = alloc && c->exp.has_alloc;
    depth = depth && c->exp.has_depth;
    rq->type = PRL_NBD_CMD_BLOCK_STATUS;
    if (!c->exp.extended ||
        !(c->exp.tflags & PRL_NBD_FLAG_BLOCK_STATUS_PAYLOAD) ||
        (alloc == c->exp.has_alloc && depth == c->exp.has_depth && bm == all) ||
        (!alloc && !depth && !bm)) {
        rq->ask_alloc = c->exp.has_alloc;
        rq->ask_depth = c->exp.has_depth;
        rq->ask_bitmaps = all;
        return exchange(c, rq, 0, NULL);
    }
    rq->ask_alloc = alloc;
    rq->ask_depth = depth;
    rq->ask_bitmaps = bm;
    prl_be64_store(list, rq->len);
    if (alloc) {
        prl_be32_store(list + n, c->ctx_alloc);
        n += 4;
    }
    if (depth) {
        prl_be32_store(list + n, c->ctx_depth);
        n += 4;
    }
    if (bm) {
        prl_be32_store(list + n, c->bitmaps[bitmap].id);
        n += 4;
    }
    rq->plen = (uint32_t)n;
    return exchange(c, rq, 0, list);
}

int prl_nbd_client_block_status(struct prl_nbd_client *c, uint64_t len,
                                uint64_t off, struct prl_nbd_extent *alloc,
                                struct prl_nbd_extent *depth,
                                struct prl_nbd_extent *bitmap)
{
    struct prl_nbd_req rq;

    if (!c->exp.has_alloc) {
        return prl_error(ENOTSUP, "nbd server %s gave no base:allocation",
                         c->name);
    }
    memset(&rq, 0, sizeof(rq));
    rq.off = off;
    rq.len = PRL_MIN(len, max_effect(c));
    rq.alloc = (struct ext_list){alloc, 1, 0};
    rq.depth = (struct ext_list){depth, 1, 0};
    rq.bitmap = (struct ext_list){bitmap, 1, 0};
    rq.want_bitmap = 0;
    return status_exchange(c, &rq, alloc != NULL, depth != NULL,
                           bitmap ? 0 : SIZE_MAX);
}

int prl_nbd_client_block_status_list(struct prl_nbd_client *c, uint64_t len,
                                     uint64_t off, struct prl_nbd_extent *alloc,
                                     size_t *n_alloc,
                                     struct prl_nbd_extent *depth,
                                     size_t *n_depth, size_t max)
{
    struct prl_nbd_req rq;
    int r;

    if (!c->exp.has_alloc) {
        return prl_error(ENOTSUP, "nbd server %s gave no base:allocation",
                         c->name);
    }
    memset(&rq, 0, sizeof(rq));
    rq.off = off;
    rq.len = PRL_MIN(len, max_effect(c));
    rq.alloc = (struct ext_list){alloc, max, 0};
    rq.depth = (struct ext_list){depth, max, 0};
    rq.want_bitmap = SIZE_MAX;
    r = status_exchange(c, &rq, true, depth != NULL, SIZE_MAX);
    *n_alloc = rq.alloc.n;
    if (n_depth) {
        *n_depth = rq.depth.n;
    }
    return r;
}

const char *prl_nbd_client_bitmap_name(const struct prl_nbd_client *c, size_t i)
{
    return i < c->n_bitmaps ? c->bitmaps[i].name : NULL;
}

int prl_nbd_client_bitmap_status(struct prl_nbd_client *c, const char *name,
                                 uint64_t len, uint64_t off,
                                 struct prl_nbd_extent *ext)
{
    struct prl_nbd_req rq;
    size_t i;

    for (i = 0; i < c->n_bitmaps && strcmp(c->bitmaps[i].name, name); i++) {
    }
    if (i == c->n_bitmaps) {
        return prl_error(ENOENT,
                         "nbd server %s offers no dirty bitmap '%s' (the "
                         "context qemu:dirty-bitmap:%s; qemu-nbd and prl-nbd "
                         "offer one with -B NAME)",
                         c->name, name, name);
    }
    memset(&rq, 0, sizeof(rq));
    rq.off = off;
    rq.len = PRL_MIN(len, max_effect(c));
    rq.bitmap = (struct ext_list){ext, 1, 0};
    rq.want_bitmap = i;
    return status_exchange(c, &rq, false, false, i);
}
