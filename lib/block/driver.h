/* SPDX-License-Identifier: MIT */
/* The driver interface: what a format implements and what the core
 * (block.c) guarantees before calling it. */
#ifndef PRL_BLOCK_DRIVER_H
#define PRL_BLOCK_DRIVER_H

#include "prl/block.h"
#include "prl/check.h"
#include "common/opts.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct prl_dirty_bitmap;

struct prl_block {
    const struct prl_driver *drv;
    void *opaque; /* the driver's state */
    char *filename;
    unsigned open_flags;        /* PRL_OPEN_* */
    uint64_t size;              /* guest bytes; drivers update it on resize */
    unsigned caps;              /* PRL_CAP_*, set by the driver's open */
    uint32_t request_alignment; /* bytes, power of two; 1 = any */
    uint32_t preferred_size;    /* bytes */
    /* Dirty bitmaps (block/bitmap.h).  The driver fills the list on open
     * when its format stores bitmaps and stores it on close; the core
     * marks enabled bitmaps on every write, zero and trim and frees them
     * after close.  bitmap_lock guards the list and the bits' metadata. */
    struct prl_dirty_bitmap **bitmaps;
    size_t n_bitmaps;
    pthread_rwlock_t bitmap_lock;
    bool bitmaps_changed; /* added, removed, cleared, merged... */
};

/* Mark every enabled bitmap of |bs| dirty over [offset, offset+length). */
void prl_block_mark_dirty(struct prl_block *bs, uint64_t offset,
                          uint64_t length);

/*
 * The core guarantees, for every call below:
 *  - bs was opened by this driver and is not closed;
 *  - offset + length <= bs->size without overflow, length > 0, and
 *    offset and length are multiples of bs->request_alignment;
 *  - writing calls (pwrite, zero, trim, resize) only when PRL_CAP_WRITE
 *    is in bs->caps;
 *  - flags hold only the PRL_REQ_* bits meaningful to the call:
 *    pwrite FUA; zero FUA, NO_UNMAP, FAST_ZERO; trim FUA;
 *  - requests run concurrently only when PRL_CAP_PARALLEL is set, so a
 *    driver without it needs no locking.
 * Every op returns 0 or a negative errno with a prl_error message set.
 */
struct prl_driver {
    const char *name;

    /* The format stores dirty bitmaps: prl_bitmap_add/remove/... work on
     * read-write handles, and close must store bs->bitmaps. */
    bool persistent_bitmaps;

    /* Score how sure we are that |buf| (the first |len| bytes of the file,
     * len may be short) is this format: 0 no, 100 certain.  Optional. */
    int (*probe)(const uint8_t *buf, size_t len);

    /* Open |bs->filename| with bs->open_flags; set bs->size, bs->caps,
     * bs->request_alignment, bs->preferred_size and bs->opaque. */
    int (*open)(struct prl_block *bs);

    /* Write back metadata, mark closed cleanly, free bs->opaque. */
    int (*close)(struct prl_block *bs);

    /* Create |path| of |size| bytes.  Take the options it knows from
     * |opts| with prl_opts_get*, then call prl_opts_check_unused before
     * touching the file, so an unknown option changes nothing. */
    int (*create)(const char *path, uint64_t size, struct prl_opts *opts);

    int (*pread)(struct prl_block *bs, void *buf, uint64_t length,
                 uint64_t offset);
    int (*pwrite)(struct prl_block *bs, const void *buf, uint64_t length,
                  uint64_t offset, unsigned flags);
    /* Optional: the core writes zeroes through pwrite without it (or
     * answers -ENOTSUP to FAST_ZERO), and also when it returns -ENOTSUP
     * to a request without FAST_ZERO (this handle cannot zero). */
    int (*zero)(struct prl_block *bs, uint64_t length, uint64_t offset,
                unsigned flags);
    /* Optional: trim is then a no-op. */
    int (*trim)(struct prl_block *bs, uint64_t length, uint64_t offset,
                unsigned flags);
    int (*flush)(struct prl_block *bs);
    /* Optional: without it the core reads ahead the host files that
     * block_status and data_fd name. */
    int (*cache)(struct prl_block *bs, uint64_t length, uint64_t offset);

    /* Fill *ext for the prefix of [offset, offset+length) (see
     * prl_block_status); ext->length in 1..length.  Optional: without it
     * everything is allocated data at depth 1. */
    int (*block_status)(struct prl_block *bs, uint64_t offset, uint64_t length,
                        struct prl_extent *ext);

    /* The descriptor of the file holding |ext| (see prl_block_data_fd);
     * ext came from this driver's block_status with PRL_EXT_OFFSET.
     * Optional: -ENOTSUP without it. */
    int (*data_fd)(struct prl_block *bs, const struct prl_extent *ext);

    /* Fill the format-specific part of *info; the core has set format,
     * filename, virtual_size and read_only.  Optional. */
    int (*info)(struct prl_block *bs, struct prl_image_info *info);

    /* Dirty status of bitmap |name| kept outside bs->bitmaps (an NBD
     * server's), as prl_bitmap_status; the range is inside the disk.
     * Optional: without it prl_bitmap_status reads bs->bitmaps. */
    int (*bitmap_status)(struct prl_block *bs, const char *name,
                         uint64_t offset, uint64_t length, bool *dirty,
                         uint64_t *pnum);

    /* new_size != bs->size.  Optional: -ENOTSUP without it. */
    int (*resize)(struct prl_block *bs, uint64_t new_size, bool shrink);

    /* Check the image at |path| (not open through this driver: the check
     * must work on images open refuses) and repair what |fix| asks.
     * res->filename and res->format are set by the core.  Optional: the
     * core answers -ENOTSUP. */
    int (*check)(const char *path, unsigned fix, struct prl_check_result *res);
};

extern const struct prl_driver prl_driver_raw;
extern const struct prl_driver prl_driver_parallels;
extern const struct prl_driver prl_driver_bundle;
extern const struct prl_driver prl_driver_nbd;

#endif
