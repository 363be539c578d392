/* SPDX-License-Identifier: MIT */
/* Metadata contexts: the table of what NBD_CMD_BLOCK_STATUS can report,
 * and how queries select entries of it. */
#include "nbd/server/internal.h"
#include "prl/bitmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BITMAP_PREFIX "qemu:dirty-bitmap:"

/* Block status of the export under its lock when the driver needs one. */
static int export_status(struct prl_nbd_export *exp, uint64_t offset,
                         uint64_t length, struct prl_extent *ext)
{
    int r;

    if (exp->serialize) {
        pthread_mutex_lock(&exp->lock);
    }
    r = prl_block_status(exp->bs, offset, length, ext);
    if (exp->serialize) {
        pthread_mutex_unlock(&exp->lock);
    }
    return r;
}

static bool always(const struct prl_nbd_export *exp)
{
    return true;
}

/* qemu:allocation-depth only where asked for, as qemu-nbd -A. */
static bool depth_offered(const struct prl_nbd_export *exp)
{
    return exp->alloc_depth;
}

/* base:allocation: a hole where no layer stores data for the range (an
 * unallocated cluster, a hole in a raw file), zero where it reads as
 * zeroes. */
static int allocation_status(struct prl_nbd_export *exp,
                             const struct prl_nbd_meta_def *def,
                             uint64_t offset, uint64_t length, uint64_t *plen,
                             uint32_t *status)
{
    struct prl_extent ext;
    int r = export_status(exp, offset, length, &ext);

    if (r < 0) {
        return r;
    }
    *plen = ext.length;
    *status = (ext.flags & PRL_EXT_DATA ? 0 : PRL_NBD_STATE_HOLE) |
              (ext.flags & PRL_EXT_ZERO ? PRL_NBD_STATE_ZERO : 0);
    return 0;
}

/* A block that is part hole, part data is data; part zero, part not is
 * not known to be zero: keep only the bits both sides have. */
static uint32_t allocation_merge(uint32_t a, uint32_t b)
{
    return a & b;
}

/* qemu:allocation-depth: 0 unallocated, 1 the image itself, 2 its first
 * backing layer, and so on. */
static int depth_status(struct prl_nbd_export *exp,
                        const struct prl_nbd_meta_def *def, uint64_t offset,
                        uint64_t length, uint64_t *plen, uint32_t *status)
{
    struct prl_extent ext;
    int r = export_status(exp, offset, length, &ext);

    if (r < 0) {
        return r;
    }
    *plen = ext.length;
    *status = ext.flags & PRL_EXT_ALLOCATED ? ext.depth : 0;
    return 0;
}

/* The shallowest allocated layer of the two provides the block's data
 * in part; 0 only when neither side is allocated. */
static uint32_t depth_merge(uint32_t a, uint32_t b)
{
    if (a == 0) {
        return b;
    }
    if (b == 0) {
        return a;
    }
    return a < b ? a : b;
}

/* qemu:dirty-bitmap:NAME: bit 0 set where the bitmap is dirty.  The
 * bitmap layer has its own lock. */
static int bitmap_status(struct prl_nbd_export *exp,
                         const struct prl_nbd_meta_def *def, uint64_t offset,
                         uint64_t length, uint64_t *plen, uint32_t *status)
{
    bool dirty;
    int r =
        prl_bitmap_status(exp->bs, def->bitmap, offset, length, &dirty, plen);

    if (r < 0) {
        return r;
    }
    *status = dirty ? PRL_NBD_STATE_DIRTY : 0;
    return 0;
}

/* A block dirty in part is dirty. */
static uint32_t bitmap_merge(uint32_t a, uint32_t b)
{
    return a | b;
}

void prl_nbd_meta_bitmap_def(struct prl_nbd_meta_def *def, const char *bitmap)
{
    size_t n = sizeof(BITMAP_PREFIX) + strlen(bitmap);
    char *name = malloc(n);

    if (name) {
        snprintf(name, n, "%s%s", BITMAP_PREFIX, bitmap);
    }
    *def = (struct prl_nbd_meta_def){
        .name = name,
        .available = always,
        .status = bitmap_status,
        .merge = bitmap_merge,
        .bitmap = name ? name + strlen(BITMAP_PREFIX) : NULL,
    };
}

void prl_nbd_meta_bitmap_free(struct prl_nbd_meta_def *def)
{
    free((char *)def->name);
    def->name = NULL;
    def->bitmap = NULL;
}

/* Contexts an export may offer (each says when); its
 * qemu:dirty-bitmap:NAME contexts follow them. */
static const struct prl_nbd_meta_def meta_defs[] = {
    {"base:allocation", always, allocation_status, allocation_merge, NULL},
    {"qemu:allocation-depth", depth_offered, depth_status, depth_merge, NULL},
};

size_t prl_nbd_meta_match(
    const struct prl_nbd_export *exp, const char *query, bool wildcards,
    void (*fn)(void *opaque, const struct prl_nbd_meta_def *def), void *opaque)
{
    size_t qlen = strlen(query), n = 0;
    bool prefix = wildcards && (qlen == 0 || query[qlen - 1] == ':');

    size_t n_static = sizeof(meta_defs) / sizeof(meta_defs[0]);

    for (size_t i = 0; i < n_static + exp->n_bitmaps; i++) {
        const struct prl_nbd_meta_def *def =
            i < n_static ? &meta_defs[i] : &exp->bitmaps[i - n_static];
        bool hit = prefix ? strncmp(def->name, query, qlen) == 0
                          : strcmp(def->name, query) == 0;

        if (hit && def->available(exp)) {
            fn(opaque, def);
            n++;
        }
    }
    return n;
}
