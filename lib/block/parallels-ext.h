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

/* prl's own feature: per-bitmap attributes the spec has no field for
 * (disabled, inconsistent).  Written with TRANSIT, and only when some
 * bitmap needs it, since QEMU refuses features with flags.  Data: u32
 * count, u32 zero, then count entries of 16-byte id, u32 flags, u32 zero,
 * all little-endian. */
#define PARALLELS_FEATURE_PRL_ATTRS 0x50524C4254414753ULL /* "PRLBTAGS" */
#define PARALLELS_ATTR_DISABLED (1u << 0)
#define PARALLELS_ATTR_INCONSISTENT (1u << 1)
#define PARALLELS_ATTR_ENTRY 24

#define PARALLELS_EXT_HEADER 24     /* magic + MD5 */
#define PARALLELS_FEATURE_HEADER 24 /* magic, flags, data_size, unused */
#define PARALLELS_BITMAP_FIXED 32   /* size, id, granularity, l1_size */

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

/* parallels_ext_parse that also requires the magic and the checksum:
 * -EINVAL with |err| saying which rule failed (nothing to free then). */
int parallels_ext_parse_valid(const uint8_t *cluster, size_t cluster_size,
                              struct parallels_ext *ext, char *err,
                              size_t errlen);

/* The entries of prl's attributes feature |f| in |cluster| and their count
 * in *n (0, and NULL returned, when the count does not fit the data). */
const uint8_t *parallels_ext_attrs(const uint8_t *cluster,
                                   const struct parallels_feature *f,
                                   uint32_t *n);

struct parallels_bitmap_info {
    uint64_t size; /* sectors */
    uint8_t id[16];
    uint32_t granularity; /* sectors per bit */
    uint32_t l1_size;
    const uint8_t *l1; /* l1_size little-endian u64 entries */
};

/* Decode a dirty-bitmap feature's data.  -EINVAL with |err| when its
 * l1 table does not fit in data_size. */
int parallels_bitmap_decode(const uint8_t *data, uint32_t data_size,
                            struct parallels_bitmap_info *b, char *err,
                            size_t errlen);

/* The rules on a decoded bitmap's shape, for a disk of |nb_sectors| in
 * clusters of |cluster_size| bytes: size equals the disk, granularity a
 * power of two whose bytes fit 32 bits, l1_size exactly the clusters its
 * bits need.  -EINVAL with |err| naming the field and value.  Its id and
 * its L1 entries are the caller's to judge. */
int parallels_bitmap_check_shape(const struct parallels_bitmap_info *b,
                                 uint64_t nb_sectors, uint64_t cluster_size,
                                 char *err, size_t errlen);

/* Building a Format Extension cluster. */
struct parallels_ext_writer {
    uint8_t *buf; /* cluster_size bytes */
    size_t cluster_size;
    size_t pos;
};

/* Zero |buf| and start a feature list. */
void parallels_ext_writer_init(struct parallels_ext_writer *w, uint8_t *buf,
                               size_t cluster_size);
/* Append one feature; -ENOSPC when it and the End record do not fit. */
int parallels_ext_writer_add(struct parallels_ext_writer *w, uint64_t magic,
                             uint64_t flags, const void *data, uint32_t size);
/* Reserve room for a feature of |size| data bytes and return where its
 * data goes (zeroed), or NULL when it does not fit. */
uint8_t *parallels_ext_writer_reserve(struct parallels_ext_writer *w,
                                      uint64_t magic, uint64_t flags,
                                      uint32_t size);
/* Write the magic and the checksum. */
int parallels_ext_writer_finish(struct parallels_ext_writer *w);

/* Copy of |old| (a valid extension cluster) whose attributes feature says
 * every bitmap is inconsistent, keeping every other feature byte for
 * byte, into |out|.  Returns 0, or -ENOSPC when it does not fit. */
int parallels_ext_mark_inconsistent(const uint8_t *old, uint8_t *out,
                                    size_t cluster_size);

static inline void parallels_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static inline void parallels_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

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
