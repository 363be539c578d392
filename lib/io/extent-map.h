/* SPDX-License-Identifier: MIT */
/* A cached window of a file's extent map, read with FIEMAP many extents
 * per call, so that a walk over a file with many extents costs one ioctl
 * per window instead of two lseeks per extent. */
#ifndef PRL_IO_EXTENT_MAP_H
#define PRL_IO_EXTENT_MAP_H

#include "io/file.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Extents one FIEMAP call asks for (56 bytes each). */
#define PRL_EXTENT_MAP_RUNS 512

struct prl_extent_run {
    uint64_t off, len; /* bytes of the file */
    bool unwritten;    /* allocated, reads as zero unless cached pages */
};

struct prl_extent_map {
    pthread_mutex_t lock;
    atomic_uint_fast64_t gen; /* bumped by prl_extent_map_invalidate */
    /* Under lock: */
    int mode;            /* 0 not decided, 1 FIEMAP, -1 lseek only */
    bool valid;          /* the window below describes generation |wgen| */
    uint64_t wgen;       /* generation the window was read in */
    int64_t stamp_ns;    /* when it was read (CLOCK_MONOTONIC_COARSE) */
    uint64_t start, end; /* the window: [start, end) of the file */
    size_t n;            /* runs of it, sorted, disjoint, coalesced */
    struct prl_extent_run runs[PRL_EXTENT_MAP_RUNS];
};

/* Set up |m| (no window yet).  prl_extent_map_destroy releases it. */
void prl_extent_map_init(struct prl_extent_map *m);
void prl_extent_map_destroy(struct prl_extent_map *m);

/* Forget the window: call after every change of the file's allocation
 * (write, zero, trim, truncate) is complete.  Thread-safe, lock-free.
 * Changes made by other processes are seen once the window is a second
 * old at the latest. */
void prl_extent_map_invalidate(struct prl_extent_map *m);

/* prl_file_extent's contract, answered from the window when it covers
 * |off|, else from a new FIEMAP of [off, off+len).  Where FIEMAP is not
 * trusted (a file system other than ext4, XFS or btrfs, which report
 * delayed allocations) or the extent is unwritten (whose data may be in
 * the page cache only), SEEK_DATA/SEEK_HOLE answers, as before. */
int prl_extent_map_extent(struct prl_extent_map *m, struct prl_file *f,
                          uint64_t off, uint64_t len, bool *is_data,
                          uint64_t *pnum);

#endif
