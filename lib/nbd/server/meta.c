/* SPDX-License-Identifier: MIT */
/* Metadata contexts: the table of what NBD_CMD_BLOCK_STATUS can report,
 * and how queries select entries of it. */
#include "nbd/server/internal.h"

#include <string.h>

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

/* base:allocation: a hole where no layer stores data for the range (an
 * unallocated cluster, a hole in a raw file), zero where it reads as
 * zeroes. */
static int allocation_status(struct prl_nbd_export *exp, uint64_t offset,
                             uint64_t length, uint64_t *plen, uint32_t *status)
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
static int depth_status(struct prl_nbd_export *exp, uint64_t offset,
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

/* Contexts offered.  qemu:dirty-bitmap:NAME (one per bitmap of the
 * image) joins this table with a per-export name list. */
static const struct prl_nbd_meta_def meta_defs[] = {
    {"base:allocation", always, allocation_status, allocation_merge},
    {"qemu:allocation-depth", always, depth_status, depth_merge},
};

size_t prl_nbd_meta_match(
    const struct prl_nbd_export *exp, const char *query, bool wildcards,
    void (*fn)(void *opaque, const struct prl_nbd_meta_def *def), void *opaque)
{
    size_t qlen = strlen(query), n = 0;
    bool prefix = wildcards && (qlen == 0 || query[qlen - 1] == ':');

    for (size_t i = 0; i < sizeof(meta_defs) / sizeof(meta_defs[0]); i++) {
        const struct prl_nbd_meta_def *def = &meta_defs[i];
        bool hit = prefix ? strncmp(def->name, query, qlen) == 0
                          : strcmp(def->name, query) == 0;

        if (hit && def->available(exp)) {
            fn(opaque, def);
            n++;
        }
    }
    return n;
}
