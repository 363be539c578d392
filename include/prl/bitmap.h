/* SPDX-License-Identifier: MIT */
/* Persistent dirty bitmaps of an open image: list, add, remove, clear,
 * enable, disable, merge, and query dirty extents. */
#ifndef PRL_BITMAP_H
#define PRL_BITMAP_H

#include "prl/block.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Text form of a bitmap's UUID, which is also its name: 36 chars + NUL. */
#define PRL_BITMAP_NAME_SIZE 37

struct prl_bitmap_info {
    char name[PRL_BITMAP_NAME_SIZE]; /* canonical UUID text */
    uint64_t granularity;            /* bytes per bit */
    bool enabled;                    /* writes mark it */
    bool consistent;                 /* false after an unclean close */
    uint64_t dirty_bytes;            /* bytes covered by set bits */
};

/* The bitmaps of |bs|, in image order.  *out is the caller's to free(). */
int prl_bitmap_list(struct prl_block *bs, struct prl_bitmap_info **out,
                    size_t *n);

/* Add an enabled, empty bitmap.  |name| is a UUID ("auto" generates a
 * random one); |granularity| is bytes (0 picks 64 KiB), a power of two of
 * at least 512.  The canonical name is copied to |name_out| when not
 * NULL.  Needs a read-write handle of a format with persistent bitmaps. */
int prl_bitmap_add(struct prl_block *bs, const char *name, uint64_t granularity,
                   char name_out[PRL_BITMAP_NAME_SIZE]);
int prl_bitmap_remove(struct prl_block *bs, const char *name);
/* Clear every bit; also makes an inconsistent bitmap consistent. */
int prl_bitmap_clear(struct prl_block *bs, const char *name);
int prl_bitmap_enable(struct prl_block *bs, const char *name);
int prl_bitmap_disable(struct prl_block *bs, const char *name);
/* dst |= src, where src is bitmap |src_name| of |src_bs| (may be bs). */
int prl_bitmap_merge(struct prl_block *bs, const char *dst_name,
                     struct prl_block *src_bs, const char *src_name);

/* Dirty status of the prefix of [offset, offset+length) with uniform
 * state: *dirty and its length *pnum (1..length).  -ENOENT for an unknown
 * name, -EINVAL for an inconsistent bitmap.  On an NBD export opened
 * with PRL_OPEN_REMOTE_BITMAPS the server's qemu:dirty-bitmap:NAME
 * answers. */
int prl_bitmap_status(struct prl_block *bs, const char *name, uint64_t offset,
                      uint64_t length, bool *dirty, uint64_t *pnum);

#endif
