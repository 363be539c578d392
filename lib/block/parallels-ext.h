/* SPDX-License-Identifier: MIT */
/* The Parallels Format Extension cluster: magic, MD5 checksum, feature
 * list, and the dirty-bitmap feature's fixed part (parallels.rst). */
#ifndef PRL_BLOCK_PARALLELS_EXT_H
#define PRL_BLOCK_PARALLELS_EXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PARALLELS_EXT_MAGIC 0xAB234CEF23DCEA87ULL
#define PARALLELS_FEATURE_END 0x0ULL
#define PARALLELS_FEATURE_DIRTY_BITMAP 0x20385FAE252CB34AULL
#define PARALLELS_FEATURE_NECESSARY (1ULL << 0)
#define PARALLELS_FEATURE_TRANSIT (1ULL << 1)

#define PARALLELS_EXT_HEADER 24      /* magic + MD5 */
#define PARALLELS_FEATURE_HEADER 24  /* magic, flags, data_size, unused */
#define PARALLELS_BITMAP_FIXED 32    /* size, id, granularity, l1_size */

struct parallels_feature {
    uint64_t magic;
    uint64_t flags;
    uint32_t data_size;
    size_t data_pos; /* byte position of the data inside the cluster */
};

struct parallels_ext {
    bool magic_ok;
    bool checksum_ok;
    struct parallels_feature *features; /* without the End record */
    size_t n_features;
};

/* MD5 of the cluster from byte 24 to its end. */
int parallels_ext_checksum(const uint8_t *cluster, size_t cluster_size,
                           uint8_t md5[16]);

/* Parse the cluster.  Returns 0 with *ext filled (check magic_ok and
 * checksum_ok), or -EINVAL with |err| naming the field and value when the
 * feature list runs past the cluster or lacks its End record.  Free with
 * parallels_ext_free. */
int parallels_ext_parse(const uint8_t *cluster, size_t cluster_size,
                        struct parallels_ext *ext, char *err, size_t errlen);
void parallels_ext_free(struct parallels_ext *ext);

struct parallels_bitmap_info {
    uint64_t size;          /* sectors */
    uint8_t id[16];
    uint32_t granularity;   /* sectors per bit */
    uint32_t l1_size;
    const uint8_t *l1;      /* l1_size little-endian u64 entries */
};

/* Decode a dirty-bitmap feature's data.  -EINVAL with |err| when its
 * l1 table does not fit in data_size. */
int parallels_bitmap_decode(const uint8_t *data, uint32_t data_size,
                            struct parallels_bitmap_info *b, char *err,
                            size_t errlen);

static inline uint64_t parallels_get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static inline uint32_t parallels_get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

#endif
