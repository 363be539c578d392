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
#include <string.h>

struct nbd_state {
    struct prl_nbd_client *c;
};

static int nbd_open(struct prl_block *bs)
{
    struct prl_nbd_client_opts opts = {
        .bitmap = NULL,
        .want_depth = true,
        .all_bitmaps = bs->open_flags & PRL_OPEN_REMOTE_BITMAPS,
    };
    const struct prl_nbd_export *e;
    struct prl_nbd_uri uri;
    struct nbd_state *s;
    bool rw = bs->open_flags & PRL_OPEN_RDWR;
    int r = prl_nbd_uri_parse(bs->filename, &uri);

    if (r < 0) {
        return r;
    }
    s = prl_calloc(1, sizeof(*s));
    if (!s) {
        prl_nbd_uri_free(&uri);
        return -ENOMEM;
    }
    r = prl_nbd_client_connect(&uri, &opts, &s->c);
    prl_nbd_uri_free(&uri);
    if (r < 0) {
        free(s);
        return r;
    }
    e = prl_nbd_client_export(s->c);
    if (rw && (e->tflags & PRL_NBD_FLAG_READ_ONLY)) {
        prl_nbd_client_close(s->c);
        free(s);
        return prl_error(EROFS, "'%s': the NBD export is read-only",
                         bs->filename);
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
    bs->request_alignment = e->min_block;
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
        r = prl_nbd_client_flush(s->c);
    }
    prl_nbd_client_close(s->c);
    free(s);
    return r;
}

static int nbd_pread(struct prl_block *bs, void *buf, uint64_t length,
                     uint64_t offset)
{
    struct nbd_state *s = bs->opaque;
    return prl_nbd_client_read(s->c, buf, length, offset);
}

static int nbd_pwrite(struct prl_block *bs, const void *buf, uint64_t length,
                      uint64_t offset, unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    return prl_nbd_client_write(s->c, buf, length, offset, flags & PRL_REQ_FUA);
}

/* Servers without WRITE_ZEROES get zeroes written. */
static int nbd_zero(struct prl_block *bs, uint64_t length, uint64_t offset,
                    unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    const struct prl_nbd_export *e = prl_nbd_client_export(s->c);
    unsigned f = 0;
    int r = 0;

    if (e->tflags & PRL_NBD_FLAG_SEND_WRITE_ZEROES) {
        f |= (flags & PRL_REQ_FUA) ? PRL_NBD_CMD_FLAG_FUA : 0;
        f |= (flags & PRL_REQ_NO_UNMAP) ? PRL_NBD_CMD_FLAG_NO_HOLE : 0;
        f |= (flags & PRL_REQ_FAST_ZERO) ? PRL_NBD_CMD_FLAG_FAST_ZERO : 0;
        return prl_nbd_client_zero(s->c, length, offset, f);
    }
    if (flags & PRL_REQ_FAST_ZERO) {
        return prl_error(ENOTSUP, "zero: '%s' cannot zero fast", bs->filename);
    }
    size_t chunk = (size_t)PRL_MIN(length, (uint64_t)e->max_block);
    void *buf = prl_calloc(1, chunk);
    if (!buf) {
        return -ENOMEM;
    }
    while (length > 0 && r == 0) {
        size_t n = (size_t)PRL_MIN(length, (uint64_t)chunk);
        r = prl_nbd_client_write(s->c, buf, n, offset, flags & PRL_REQ_FUA);
        offset += n;
        length -= n;
    }
    free(buf);
    return r;
}

static int nbd_trim(struct prl_block *bs, uint64_t length, uint64_t offset,
                    unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    return prl_nbd_client_trim(s->c, length, offset, flags & PRL_REQ_FUA);
}

static int nbd_flush(struct prl_block *bs)
{
    struct nbd_state *s = bs->opaque;
    return prl_nbd_client_flush(s->c);
}

/* base:allocation gives data/zero; qemu:allocation-depth, when the
 * server has it, the layer (0 = unallocated).  Without it the export
 * itself provides every byte (depth 1), as for any protocol. */
static int nbd_block_status(struct prl_block *bs, uint64_t offset,
                            uint64_t length, struct prl_extent *ext)
{
    struct nbd_state *s = bs->opaque;
    const struct prl_nbd_export *e = prl_nbd_client_export(s->c);
    struct prl_nbd_extent alloc = {0, 0}, depth = {0, 0};
    int r;

    if (!e->has_alloc) {
        ext->length = length;
        ext->flags = PRL_EXT_DATA | PRL_EXT_ALLOCATED | PRL_EXT_OFFSET;
        ext->depth = 1;
        ext->offset = offset;
        return 0;
    }
    r = prl_nbd_client_block_status(s->c, length, offset, &alloc,
                                    e->has_depth ? &depth : NULL, NULL);
    if (r < 0) {
        return r;
    }
    ext->length = alloc.length;
    ext->flags = 0;
    if (!(alloc.flags & PRL_NBD_STATE_HOLE)) {
        ext->flags |= PRL_EXT_DATA;
    }
    if (alloc.flags & PRL_NBD_STATE_ZERO) {
        ext->flags |= PRL_EXT_ZERO;
    }
    if (e->has_depth) {
        ext->length = PRL_MIN(ext->length, depth.length);
        ext->depth =
            depth.flags > UINT32_MAX ? UINT32_MAX : (uint32_t)depth.flags;
    } else {
        ext->depth = 1;
    }
    if (ext->depth > 0) {
        ext->flags |= PRL_EXT_ALLOCATED;
    }
    /* The core asks only at multiples of the minimum block size: an
     * extent that ends between two (a server breaking the block size
     * rule) is cut back to one, or, when shorter than a block, stretched
     * to one and called data, which is never wrong. */
    uint64_t align = bs->request_alignment, end = offset + ext->length;
    if (end % align != 0 && ext->length < length) {
        if (ext->length > align) {
            ext->length -= end % align;
        } else {
            ext->length = PRL_MIN(length, align);
            ext->flags = (ext->flags & ~PRL_EXT_ZERO) | PRL_EXT_DATA;
        }
    }
    /* The export is its own "file": guest offset = export offset, as
     * qemu-img map shows an NBD export. */
    ext->flags |= PRL_EXT_OFFSET;
    ext->offset = offset;
    return 0;
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
    .block_status = nbd_block_status,
    .bitmap_status = nbd_bitmap_status,
};
