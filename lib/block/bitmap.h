/* SPDX-License-Identifier: MIT */
/* Dirty bitmaps as block-layer objects: one bit per granule of the disk,
 * set by every write, zero and trim through the dispatcher. */
#ifndef PRL_BLOCK_BITMAP_H
#define PRL_BLOCK_BITMAP_H

#include "prl/bitmap.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct prl_dirty_bitmap {
    char name[PRL_BITMAP_NAME_SIZE];
    uint8_t id[16];
    uint64_t granularity; /* bytes, power of two >= 512 */
    uint64_t size;        /* disk bytes covered */
    uint64_t nbits;
    uint8_t *bits; /* ceil(nbits / 8) bytes; bit i of the disk is
                    * bit (i % 8) of byte i / 8, as on disk */
    bool enabled;
    bool consistent;
};

/* A new, all-clear bitmap for a disk of |size| bytes; NULL with a message
 * on failure. */
struct prl_dirty_bitmap *
prl_dirty_bitmap_new(const uint8_t id[16], uint64_t granularity, uint64_t size);
void prl_dirty_bitmap_free(struct prl_dirty_bitmap *b);

/* Bytes of serialized bitmap data: ceil(nbits / 8). */
uint64_t prl_dirty_bitmap_bytes(const struct prl_dirty_bitmap *b);

/* Mark [offset, offset+length) dirty.  Safe against concurrent marking
 * (atomic OR per byte). */
void prl_dirty_bitmap_set(struct prl_dirty_bitmap *b, uint64_t offset,
                          uint64_t length);
bool prl_dirty_bitmap_get(const struct prl_dirty_bitmap *b, uint64_t bit);
/* The first bit in [start, end) whose value is |set|, or |end| when there
 * is none; bits at and past nbits read as clear.  Scans 64 bits per step. */
uint64_t prl_dirty_bitmap_find(const struct prl_dirty_bitmap *b, uint64_t start,
                               uint64_t end, bool set);
uint64_t prl_dirty_bitmap_count(const struct prl_dirty_bitmap *b);

/* UUID bytes <-> canonical lower-case text.  parse returns false on bad
 * text. */
void prl_uuid_unparse(const uint8_t id[16], char out[PRL_BITMAP_NAME_SIZE]);
bool prl_uuid_parse(const char *s, uint8_t id[16]);
/* A random (version 4) UUID. */
int prl_uuid_generate(uint8_t id[16]);

#endif
