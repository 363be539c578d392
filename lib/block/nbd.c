/* SPDX-License-Identifier: MIT */
/* The NBD driver: an export on an NBD server, named by an NBD URI, as a
 * block device (lib/nbd/client does the protocol). */
#include "block/driver.h"
#include "common/util.h"
#include "nbd/client/client.h"
#include "nbd/uri.h"
#include "nbd/wire.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

/* Most extents of one context taken from one block status reply. */
#define NBD_STATUS_MAX 1024
/* Most connections to a server that allows several
 * (NBD_FLAG_CAN_MULTI_CONN), as nbdcopy opens by default; never more than
 * the processors, as each keeps one busy taking replies apart (with TLS,
 * 4 connections on 2 processors made a copy 15-25% slower than 1). */
#define NBD_MAX_CONNS 4
/* The handshake of an extra connection may take this long: a server at
 * its connection limit (qemu-nbd -e) leaves it waiting unanswered. */
#define NBD_EXTRA_TIMEOUT_MS 2000

/* A run of uniform status, from the previous segment's end (or
 * cache_start) to end. */
struct nbd_seg {
    uint64_t end;
    uint32_t flags; /* PRL_EXT_* */
    uint32_t depth;
};

/* One connection and how many requests use it now. */
struct nbd_conn {
    struct prl_nbd_client *c;
    unsigned busy;
};

struct nbd_state {
    /* The first connection: block status, bitmaps and flush go there,
     * and its handshake describes the export. */
    struct prl_nbd_client *c;
    /*
     * Reads, writes, zeroes and trims take the least busy connection.
     * When the server allows several and every one has a request in
     * flight, the request opens another (up to NBD_MAX_CONNS): replies
     * then come in and are taken apart (and decrypted) on several
     * sockets at once, as nbdcopy does.  The spec makes a flush on any
     * connection cover writes completed on all of them.
     */
    pthread_mutex_t pool_lock;
    struct nbd_conn conns[NBD_MAX_CONNS]; /* conns[0].c == c */
    unsigned n_conns;
    unsigned max_conns;     /* what the server and the processors allow */
    bool opening;           /* a request is connecting the next one */
    struct prl_nbd_uri uri; /* to connect again */
    /* The export's minimum block size: requests to the server are
     * multiples of it; the ends of other requests go through a bounce
     * block (read, and for writes read-modify-write under rmw_lock, so
     * that two writes into one block do not undo each other). */
    uint32_t align;
    pthread_mutex_t rmw_lock;
    /* Block status of the last reply, which describes far more than
     * the one extent asked for (map would otherwise ask once per
     * extent).  Every write, zero and trim empties it, before and after
     * the request, and bumps gen, so that an answer older than a write
     * is never kept. */
    pthread_mutex_t cache_lock;
    uint64_t gen;
    uint64_t cache_start;
    struct nbd_seg *cache; /* NBD_STATUS_MAX entries */
    size_t cache_n;
};

/* Forget the cached block status (a write is about to change it, or
 * just did). */
static void nbd_invalidate(struct nbd_state *s)
{
    pthread_mutex_lock(&s->cache_lock);
    s->gen++;
    s->cache_n = 0;
    pthread_mutex_unlock(&s->cache_lock);
}

/* Whether the export behind extra connection |c| is the one the first
 * connection found. */
static bool same_export(const struct prl_nbd_export *a,
                        const struct prl_nbd_export *b)
{
    return a->size == b->size && a->tflags == b->tflags &&
           a->min_block == b->min_block && a->max_block == b->max_block &&
           a->extended == b->extended && a->structured == b->structured;
}

/* Take the connection for a data request; give it back with conn_put. */
static struct nbd_conn *conn_get(struct nbd_state *s)
{
    struct nbd_conn *best;

    pthread_mutex_lock(&s->pool_lock);
    best = &s->conns[0];
    for (unsigned i = 1; i < s->n_conns; i++) {
        if (s->conns[i].busy < best->busy) {
            best = &s->conns[i];
        }
    }
    if (best->busy > 0 && !s->opening && s->n_conns < s->max_conns) {
        struct prl_nbd_client_opts opts = {
            .timeout_ms = NBD_EXTRA_TIMEOUT_MS,
        };
        struct prl_nbd_client *nc = NULL;
        int r;

        s->opening = true;
        pthread_mutex_unlock(&s->pool_lock);
        r = prl_nbd_client_connect(&s->uri, &opts, &nc);
        if (r == 0 && !same_export(prl_nbd_client_export(s->c),
                                   prl_nbd_client_export(nc))) {
            r = -ESTALE;
        }
        if (r < 0) {
            /* The server took no more (a connection limit, a timeout):
             * the connections there are do the work. */
            prl_nbd_client_close(nc);
            nc = NULL;
            prl_error_clear();
        }
        pthread_mutex_lock(&s->pool_lock);
        s->opening = false;
        if (nc) {
            best = &s->conns[s->n_conns++];
            best->c = nc;
        } else {
            s->max_conns = s->n_conns;
        }
    }
    best->busy++;
    pthread_mutex_unlock(&s->pool_lock);
    return best;
}

static void conn_put(struct nbd_state *s, struct nbd_conn *cn)
{
    pthread_mutex_lock(&s->pool_lock);
    cn->busy--;
    pthread_mutex_unlock(&s->pool_lock);
}

static void nbd_free_state(struct nbd_state *s)
{
    for (unsigned i = 1; i < s->n_conns; i++) {
        prl_nbd_client_close(s->conns[i].c);
    }
    prl_nbd_client_close(s->c);
    prl_nbd_uri_free(&s->uri);
    pthread_mutex_destroy(&s->pool_lock);
    pthread_mutex_destroy(&s->cache_lock);
    pthread_mutex_destroy(&s->rmw_lock);
    free(s->cache);
    free(s);
}

/* Connect to the URI in bs->filename and negotiate; the export must be
 * writable for a read-write open.  Caps follow the transmission flags. */
static int nbd_open(struct prl_block *bs)
{
    struct prl_nbd_client_opts opts = {
        .bitmap = NULL,
        .want_depth = true,
        .all_bitmaps = bs->open_flags & PRL_OPEN_REMOTE_BITMAPS,
    };
    const struct prl_nbd_export *e;
    struct nbd_state *s;
    bool rw = bs->open_flags & PRL_OPEN_RDWR;
    int r;

    s = prl_calloc(1, sizeof(*s));
    if (!s || !(s->cache = prl_calloc(NBD_STATUS_MAX, sizeof(*s->cache)))) {
        free(s);
        return -ENOMEM;
    }
    pthread_mutex_init(&s->cache_lock, NULL);
    pthread_mutex_init(&s->rmw_lock, NULL);
    pthread_mutex_init(&s->pool_lock, NULL);
    r = prl_nbd_uri_parse(bs->filename, &s->uri);
    if (r == 0) {
        r = prl_nbd_client_connect(&s->uri, &opts, &s->c);
    }
    if (r < 0) {
        nbd_free_state(s);
        return r;
    }
    e = prl_nbd_client_export(s->c);
    if (rw && (e->tflags & PRL_NBD_FLAG_READ_ONLY)) {
        nbd_free_state(s);
        return prl_error(EROFS, "'%s': the NBD export is read-only",
                         bs->filename);
    }
    s->conns[0].c = s->c;
    s->n_conns = 1;
    s->max_conns = 1;
    if (e->tflags & PRL_NBD_FLAG_CAN_MULTI_CONN) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        s->max_conns = (unsigned)PRL_MAX(1, PRL_MIN(NBD_MAX_CONNS, cpus));
    }
    bs->opaque = s;
    bs->size = e->size;
    /* The client takes requests from several threads at once. */
    bs->caps =
        PRL_CAP_PARALLEL | (rw ? PRL_CAP_WRITE : 0) |
        ((e->tflags & PRL_NBD_FLAG_SEND_WRITE_ZEROES) ? PRL_CAP_ZERO : 0) |
        ((e->tflags & PRL_NBD_FLAG_SEND_TRIM) ? PRL_CAP_TRIM : 0) |
        ((e->tflags & PRL_NBD_FLAG_SEND_WRITE_ZEROES) &&
                 (e->tflags & PRL_NBD_FLAG_SEND_FAST_ZERO)
             ? PRL_CAP_FAST_ZERO
             : 0);
    /* Any byte range: the driver aligns what it sends. */
    s->align = e->min_block;
    bs->request_alignment = 1;
    bs->preferred_size = PRL_MAX(e->pref_block, e->min_block);
    return 0;
}

/* A writable export is flushed before the soft disconnect, as a file is
 * synced before it is closed. */
static int nbd_close(struct prl_block *bs)
{
    struct nbd_state *s = bs->opaque;
    int r = 0;

    if (bs->open_flags & PRL_OPEN_RDWR) {
        /* Every write has completed: this covers all connections. */
        r = prl_nbd_client_flush(s->c);
    }
    nbd_free_state(s);
    return r;
}

/* What to do with one partial block: |buf| (NULL: zeroes) goes to
 * |len| bytes at |skip| into the block at |blk|, or, for a read, comes
 * from there. */
static int partial_block(struct nbd_state *s, uint64_t blk, uint64_t skip,
                         uint64_t len, uint8_t *rbuf, const uint8_t *wbuf,
                         bool write, bool fua)
{
    uint8_t *b = prl_malloc(s->align);
    struct nbd_conn *cn;
    int r;

    if (!b) {
        return -ENOMEM;
    }
    if (write) {
        pthread_mutex_lock(&s->rmw_lock);
    }
    /* One connection for both halves of a read-modify-write. */
    cn = conn_get(s);
    r = prl_nbd_client_read(cn->c, b, s->align, blk);
    if (r == 0 && write) {
        if (wbuf) {
            memcpy(b + skip, wbuf, (size_t)len);
        } else {
            memset(b + skip, 0, (size_t)len);
        }
        r = prl_nbd_client_write(cn->c, b, s->align, blk, fua);
    } else if (r == 0) {
        memcpy(rbuf, b + skip, (size_t)len);
    }
    conn_put(s, cn);
    if (write) {
        pthread_mutex_unlock(&s->rmw_lock);
    }
    free(b);
    return r;
}

/* Do a read, write or zero of any range: the partial blocks at its ends
 * one by one, the aligned middle with |middle| (which gets the middle's
 * byte offset into rbuf/wbuf). */
static int unaligned(struct prl_block *bs, uint64_t length, uint64_t offset,
                     uint8_t *rbuf, const uint8_t *wbuf, bool write, bool fua,
                     int (*middle)(struct prl_block *, uint64_t, uint64_t,
                                   uint64_t, void *),
                     void *arg)
{
    struct nbd_state *s = bs->opaque;
    uint64_t a = s->align, done = 0;
    int r = 0;

    while (r == 0 && done < length) {
        uint64_t off = offset + done, skip = off % a;
        uint64_t n = length - done;
        if (skip != 0 || n < a) {
            n = PRL_MIN(n, a - skip);
            r = partial_block(s, off - skip, skip, n, rbuf ? rbuf + done : NULL,
                              wbuf ? wbuf + done : NULL, write, fua);
        } else {
            n = prl_round_down(n, a);
            r = middle(bs, n, off, done, arg);
        }
        done += n;
    }
    return r;
}

/* The aligned middles of unaligned(): straight to the server. */
static int read_middle(struct prl_block *bs, uint64_t length, uint64_t offset,
                       uint64_t at, void *buf)
{
    struct nbd_state *s = bs->opaque;
    struct nbd_conn *cn = conn_get(s);
    int r = prl_nbd_client_read(cn->c, (uint8_t *)buf + at, length, offset);

    conn_put(s, cn);
    return r;
}

static int nbd_pread(struct prl_block *bs, void *buf, uint64_t length,
                     uint64_t offset)
{
    return unaligned(bs, length, offset, buf, NULL, false, false, read_middle,
                     buf);
}

struct write_arg {
    const uint8_t *buf;
    bool fua;
};

static int write_middle(struct prl_block *bs, uint64_t length, uint64_t offset,
                        uint64_t at, void *arg)
{
    struct nbd_state *s = bs->opaque;
    struct write_arg *w = arg;
    struct nbd_conn *cn = conn_get(s);
    int r = prl_nbd_client_write(cn->c, w->buf + at, length, offset, w->fua);

    conn_put(s, cn);
    return r;
}

static int nbd_pwrite(struct prl_block *bs, const void *buf, uint64_t length,
                      uint64_t offset, unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    struct write_arg w = {buf, flags & PRL_REQ_FUA};
    int r;

    nbd_invalidate(s);
    r = unaligned(bs, length, offset, NULL, buf, true, w.fua, write_middle, &w);
    nbd_invalidate(s);
    return r;
}

/* The aligned middles of a zero: WRITE_ZEROES (the server has it). */
static int zero_middle(struct prl_block *bs, uint64_t length, uint64_t offset,
                       uint64_t at, void *arg)
{
    struct nbd_state *s = bs->opaque;
    unsigned flags = *(unsigned *)arg, f = 0;

    (void)at;
    f |= (flags & PRL_REQ_FUA) ? PRL_NBD_CMD_FLAG_FUA : 0;
    f |= (flags & PRL_REQ_NO_UNMAP) ? PRL_NBD_CMD_FLAG_NO_HOLE : 0;
    f |= (flags & PRL_REQ_FAST_ZERO) ? PRL_NBD_CMD_FLAG_FAST_ZERO : 0;
    struct nbd_conn *cn = conn_get(s);
    int r = prl_nbd_client_zero(cn->c, length, offset, f);

    conn_put(s, cn);
    return r;
}

static int nbd_zero(struct prl_block *bs, uint64_t length, uint64_t offset,
                    unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    uint64_t a = s->align;
    int r;

    /* Partial blocks are written, which is not fast. */
    if ((flags & PRL_REQ_FAST_ZERO) && ((offset | length) & (a - 1))) {
        return prl_error(ENOTSUP,
                         "zero: '%s' cannot zero fast outside whole %" PRIu64
                         "-byte blocks",
                         bs->filename, a);
    }
    /* Without WRITE_ZEROES the core writes zeroes (see driver.h). */
    if (!(prl_nbd_client_export(s->c)->tflags &
          PRL_NBD_FLAG_SEND_WRITE_ZEROES)) {
        return prl_error(ENOTSUP,
                         "zero: '%s': the server has no "
                         "WRITE_ZEROES",
                         bs->filename);
    }
    nbd_invalidate(s);
    r = unaligned(bs, length, offset, NULL, NULL, true, flags & PRL_REQ_FUA,
                  zero_middle, &flags);
    nbd_invalidate(s);
    return r;
}

static int nbd_trim(struct prl_block *bs, uint64_t length, uint64_t offset,
                    unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    uint64_t start = prl_round_up(offset, s->align);
    uint64_t end = prl_round_down(offset + length, s->align);
    int r = 0;

    /* Trim is advisory: only the whole blocks inside the range. */
    nbd_invalidate(s);
    if (start < end) {
        struct nbd_conn *cn = conn_get(s);
        r = prl_nbd_client_trim(cn->c, end - start, start, flags & PRL_REQ_FUA);
        conn_put(s, cn);
    } else if (flags & PRL_REQ_FUA) {
        r = prl_nbd_client_flush(s->c);
    }
    nbd_invalidate(s);
    return r;
}

/* The hint goes to the server when it takes it (NBD_FLAG_SEND_CACHE);
 * otherwise there is nothing worth doing here. */
static int nbd_cache(struct prl_block *bs, uint64_t length, uint64_t offset)
{
    struct nbd_state *s = bs->opaque;
    uint64_t start = prl_round_down(offset, s->align);
    uint64_t end = PRL_MIN(prl_round_up(offset + length, s->align), bs->size);
    struct nbd_conn *cn;
    int r;

    if (!(prl_nbd_client_export(s->c)->tflags & PRL_NBD_FLAG_SEND_CACHE)) {
        return 0;
    }
    cn = conn_get(s);
    r = prl_nbd_client_cache(cn->c, end - start, start);
    conn_put(s, cn);
    return r;
}

static int nbd_flush(struct prl_block *bs)
{
    struct nbd_state *s = bs->opaque;
    return prl_nbd_client_flush(s->c);
}

/* The PRL_EXT_* flags of a base:allocation status and a depth. */
static uint32_t ext_flags(uint64_t alloc, uint32_t depth)
{
    return (!(alloc & PRL_NBD_STATE_HOLE) ? PRL_EXT_DATA : 0) |
           ((alloc & PRL_NBD_STATE_ZERO) ? PRL_EXT_ZERO : 0) |
           (depth > 0 ? PRL_EXT_ALLOCATED : 0);
}

/* Fill *ext from segment |g| (which holds |offset|) for the range at
 * |offset| of at most |length| bytes. */
static void seg_extent(const struct nbd_seg *g, uint64_t offset,
                       uint64_t length, struct prl_extent *ext)
{
    ext->length = PRL_MIN(g->end - offset, length);
    ext->flags = g->flags;
    ext->depth = g->depth;
    /* The export is its own "file": guest offset = export offset, as
     * qemu-img map shows an NBD export. */
    ext->flags |= PRL_EXT_OFFSET;
    ext->offset = offset;
}

/* The cached segment holding |offset|, or NULL.  Caller holds the
 * cache lock. */
static const struct nbd_seg *cache_find_locked(struct nbd_state *s,
                                               uint64_t offset)
{
    size_t lo = 0, hi = s->cache_n;

    if (s->cache_n == 0 || offset < s->cache_start ||
        offset >= s->cache[s->cache_n - 1].end) {
        return NULL;
    }
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->cache[mid].end <= offset) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return &s->cache[lo];
}

/* Merge the extent lists |a| (base:allocation, na >= 1) and |d| (depth,
 * nd >= 1, or NULL) from |offset| into segments, as far as both reach.
 * Returns the count, at least 1. */
static size_t merge_segs(const struct prl_nbd_extent *a, size_t na,
                         const struct prl_nbd_extent *d, size_t nd,
                         uint64_t offset, struct nbd_seg *out)
{
    uint64_t a_end = offset + a[0].length;
    uint64_t d_end = d ? offset + d[0].length : UINT64_MAX;
    size_t i = 0, j = 0, n = 0;

    while (i < na && (!d || j < nd)) {
        uint32_t depth = 1;
        if (d) {
            depth = d[j].flags > UINT32_MAX ? UINT32_MAX : (uint32_t)d[j].flags;
        }
        uint32_t flags = ext_flags(a[i].flags, depth);
        uint64_t end = PRL_MIN(a_end, d_end);
        if (n > 0 && out[n - 1].flags == flags && out[n - 1].depth == depth) {
            out[n - 1].end = end;
        } else if (n < NBD_STATUS_MAX) {
            out[n++] = (struct nbd_seg){end, flags, depth};
        } else {
            break;
        }
        if (end == a_end && ++i < na) {
            a_end += a[i].length;
        }
        if (d && end == d_end && ++j < nd) {
            d_end += d[j].length;
        }
    }
    return n;
}

/* base:allocation gives data/zero; qemu:allocation-depth, when the
 * server has it, the layer (0 = unallocated).  Without it the export
 * itself provides every byte (depth 1), as for any protocol.  One reply
 * describes many extents: they are kept for the next questions. */
static int nbd_block_status(struct prl_block *bs, uint64_t offset,
                            uint64_t length, struct prl_extent *ext)
{
    struct nbd_state *s = bs->opaque;
    const struct prl_nbd_export *e = prl_nbd_client_export(s->c);
    struct prl_nbd_extent *a, *d = NULL;
    const struct nbd_seg *g;
    struct nbd_seg *segs;
    size_t na = 0, nd = 0, n;
    uint64_t gen;
    int r;

    if (!e->has_alloc) {
        struct nbd_seg all = {offset + length, PRL_EXT_DATA | PRL_EXT_ALLOCATED,
                              1};
        seg_extent(&all, offset, length, ext);
        return 0;
    }
    pthread_mutex_lock(&s->cache_lock);
    g = cache_find_locked(s, offset);
    if (g) {
        seg_extent(g, offset, length, ext);
    }
    gen = s->gen;
    pthread_mutex_unlock(&s->cache_lock);
    if (g) {
        return 0;
    }

    a = prl_calloc(NBD_STATUS_MAX * 2, sizeof(*a));
    segs = prl_calloc(NBD_STATUS_MAX, sizeof(*segs));
    if (!a || !segs) {
        free(a);
        free(segs);
        return -ENOMEM;
    }
    if (e->has_depth) {
        d = a + NBD_STATUS_MAX;
    }
    /* The server is asked from the block that holds |offset|. */
    uint64_t q_off = prl_round_down(offset, s->align);
    uint64_t q_end = PRL_MIN(prl_round_up(offset + length, s->align), bs->size);
    r = prl_nbd_client_block_status_list(s->c, q_end - q_off, q_off, a, &na, d,
                                         &nd, NBD_STATUS_MAX);
    if (r == 0) {
        n = merge_segs(a, na, d, nd, q_off, segs);
        pthread_mutex_lock(&s->cache_lock);
        if (s->gen == gen) {
            memcpy(s->cache, segs, n * sizeof(*segs));
            s->cache_n = n;
            s->cache_start = q_off;
        }
        /* The reply may end before |offset| when the server described
         * less than one block. */
        g = segs[n - 1].end > offset ? &segs[0] : NULL;
        for (size_t i = 0; g && segs[i].end <= offset; i++) {
            g = &segs[i + 1];
        }
        if (g) {
            seg_extent(g, offset, length, ext);
        } else {
            /* Reported no further than the block start: call the rest
             * of the block data, which is never wrong. */
            struct nbd_seg rest = {PRL_MIN(q_off + s->align, offset + length),
                                   PRL_EXT_DATA | PRL_EXT_ALLOCATED, 1};
            seg_extent(&rest, offset, length, ext);
        }
        pthread_mutex_unlock(&s->cache_lock);
    }
    free(a);
    free(segs);
    return r;
}

/* The server's qemu:dirty-bitmap:NAME (negotiated at open with
 * PRL_OPEN_REMOTE_BITMAPS). */
static int nbd_bitmap_status(struct prl_block *bs, const char *name,
                             uint64_t offset, uint64_t length, bool *dirty,
                             uint64_t *pnum)
{
    struct nbd_state *s = bs->opaque;
    struct prl_nbd_extent ext = {0, 0};
    int r = prl_nbd_client_bitmap_status(s->c, name, length, offset, &ext);

    if (r == -ENOENT && !(bs->open_flags & PRL_OPEN_REMOTE_BITMAPS)) {
        return prl_error(ENOENT,
                         "'%s': bitmaps of an NBD export need "
                         "PRL_OPEN_REMOTE_BITMAPS at open",
                         bs->filename);
    }
    if (r < 0) {
        return r;
    }
    *dirty = ext.flags & PRL_NBD_STATE_DIRTY;
    *pnum = ext.length;
    return 0;
}

const struct prl_driver prl_driver_nbd = {
    .name = "nbd",
    .open = nbd_open,
    .close = nbd_close,
    .pread = nbd_pread,
    .pwrite = nbd_pwrite,
    .zero = nbd_zero,
    .trim = nbd_trim,
    .flush = nbd_flush,
    .cache = nbd_cache,
    .block_status = nbd_block_status,
    .bitmap_status = nbd_bitmap_status,
};
