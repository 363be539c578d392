/* SPDX-License-Identifier: MIT */
/* Format Extension parsing (see parallels-ext.h). */
#include "block/parallels-ext.h"
#include "block/parallels-format.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <nettle/md5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int parallels_ext_checksum(const uint8_t *cluster, size_t cluster_size,
                           uint8_t md5[16])
{
    if (cluster_size < PARALLELS_EXT_HEADER) {
        return -EINVAL;
    }
    /* Nettle, not GnuTLS: every prl-img run would pay GnuTLS's load and
     * constructor (about 1 ms) for this one digest. */
    struct md5_ctx ctx;

    md5_init(&ctx);
    md5_update(&ctx, cluster_size - PARALLELS_EXT_HEADER,
               cluster + PARALLELS_EXT_HEADER);
    md5_digest(&ctx, MD5_DIGEST_SIZE, md5);
    return 0;
}

void parallels_ext_free(struct parallels_ext *ext)
{
    free(ext->features);
    ext->features = NULL;
    ext->n_features = 0;
}

int parallels_ext_parse(const uint8_t *cluster, size_t cs,
                        struct parallels_ext *ext, char *err, size_t errlen)
{
    uint8_t md5[16];
    size_t pos = PARALLELS_EXT_HEADER;

    memset(ext, 0, sizeof(*ext));
    if (cs < PARALLELS_EXT_HEADER + PARALLELS_FEATURE_HEADER) {
        snprintf(err, errlen,
                 "cluster of %zu bytes is too small for a "
                 "Format Extension",
                 cs);
        return -EINVAL;
    }
    ext->magic_ok = parallels_get_le64(cluster) == PARALLELS_EXT_MAGIC;
    if (parallels_ext_checksum(cluster, cs, md5) == 0) {
        ext->checksum_ok = memcmp(md5, cluster + 8, 16) == 0;
    }
    for (;;) {
        struct parallels_feature f;
        struct parallels_feature *n;
        size_t end;

        if (cs - pos < PARALLELS_FEATURE_HEADER) {
            snprintf(err, errlen,
                     "feature list has no End record inside "
                     "the cluster (stops at byte %zu of %zu)",
                     pos, cs);
            parallels_ext_free(ext);
            return -EINVAL;
        }
        f.magic = parallels_get_le64(cluster + pos);
        f.flags = parallels_get_le64(cluster + pos + 8);
        f.data_size = parallels_get_le32(cluster + pos + 16);
        f.data_pos = pos + PARALLELS_FEATURE_HEADER;
        if (f.magic == PARALLELS_FEATURE_END) {
            break;
        }
        if (f.data_size > cs - f.data_pos) {
            snprintf(err, errlen,
                     "feature 0x%016" PRIx64 " at byte %zu: "
                     "data_size = %" PRIu32 " runs past the cluster end",
                     f.magic, pos, f.data_size);
            parallels_ext_free(ext);
            return -EINVAL;
        }
        n = realloc(ext->features, (ext->n_features + 1) * sizeof(*n));
        if (!n) {
            parallels_ext_free(ext);
            return prl_error(ENOMEM, "out of memory");
        }
        ext->features = n;
        ext->features[ext->n_features++] = f;
        end = f.data_pos + f.data_size;
        end = (end + 7) & ~(size_t)7;
        if (end > cs) {
            end = cs;
        }
        pos = end;
    }
    return 0;
}

int parallels_ext_parse_valid(const uint8_t *cluster, size_t cs,
                              struct parallels_ext *ext, char *err,
                              size_t errlen)
{
    int r = parallels_ext_parse(cluster, cs, ext, err, errlen);

    if (r < 0) {
        return r;
    }
    if (!ext->magic_ok) {
        snprintf(err, errlen,
                 "its magic is 0x%016" PRIx64 ", not "
                 "0xAB234CEF23DCEA87",
                 parallels_get_le64(cluster));
    } else if (!ext->checksum_ok) {
        snprintf(err, errlen, "its MD5 checksum does not match");
    } else {
        return 0;
    }
    parallels_ext_free(ext);
    return -EINVAL;
}

const uint8_t *parallels_ext_attrs(const uint8_t *cluster,
                                   const struct parallels_feature *f,
                                   uint32_t *n)
{
    const uint8_t *p = cluster + f->data_pos;

    *n = 0;
    if (f->data_size < 8) {
        return NULL;
    }
    *n = parallels_get_le32(p);
    if ((uint64_t)*n * PARALLELS_ATTR_ENTRY > f->data_size - 8) {
        *n = 0;
        return NULL;
    }
    return p + 8;
}

int parallels_bitmap_decode(const uint8_t *data, uint32_t data_size,
                            struct parallels_bitmap_info *b, char *err,
                            size_t errlen)
{
    if (data_size < PARALLELS_BITMAP_FIXED) {
        snprintf(err, errlen,
                 "dirty bitmap feature: data_size = %" PRIu32
                 " is smaller than its fixed part (%d bytes)",
                 data_size, PARALLELS_BITMAP_FIXED);
        return -EINVAL;
    }
    b->size = parallels_get_le64(data);
    memcpy(b->id, data + 8, 16);
    b->granularity = parallels_get_le32(data + 24);
    b->l1_size = parallels_get_le32(data + 28);
    if ((uint64_t)b->l1_size * 8 > data_size - PARALLELS_BITMAP_FIXED) {
        snprintf(err, errlen,
                 "dirty bitmap feature: l1_size = %" PRIu32 " needs %" PRIu64
                 " bytes but data_size = %" PRIu32,
                 b->l1_size, (uint64_t)b->l1_size * 8 + PARALLELS_BITMAP_FIXED,
                 data_size);
        return -EINVAL;
    }
    b->l1 = data + PARALLELS_BITMAP_FIXED;
    return 0;
}

int parallels_bitmap_check_shape(const struct parallels_bitmap_info *b,
                                 uint64_t nb_sectors, uint64_t cluster_size,
                                 char *err, size_t errlen)
{
    uint64_t bits, bytes, want;

    if (b->size != nb_sectors) {
        snprintf(err, errlen,
                 "size = %" PRIu64 " sectors, but the disk has %" PRIu64,
                 b->size, nb_sectors);
        return -EINVAL;
    }
    if (b->granularity == 0 || (b->granularity & (b->granularity - 1)) ||
        b->granularity > UINT32_MAX / PARALLELS_SECTOR) {
        snprintf(err, errlen,
                 "granularity = %" PRIu32 " sectors is not a power of two "
                 "in 1..%u",
                 b->granularity, UINT32_MAX / PARALLELS_SECTOR);
        return -EINVAL;
    }
    /* Bits per granule of sectors, rounded up: no overflow for any
     * nb_sectors. */
    bits = nb_sectors / b->granularity + (nb_sectors % b->granularity != 0);
    bytes = bits / 8 + (bits % 8 != 0);
    want = bytes / cluster_size + (bytes % cluster_size != 0);
    if (b->l1_size != want) {
        snprintf(err, errlen,
                 "l1_size = %" PRIu32 ", but %" PRIu64 " bytes of bitmap in "
                 "clusters of %" PRIu64 " need %" PRIu64,
                 b->l1_size, bytes, cluster_size, want);
        return -EINVAL;
    }
    return 0;
}

void parallels_ext_writer_init(struct parallels_ext_writer *w, uint8_t *buf,
                               size_t cluster_size)
{
    memset(buf, 0, cluster_size);
    w->buf = buf;
    w->cluster_size = cluster_size;
    w->pos = PARALLELS_EXT_HEADER;
}

uint8_t *parallels_ext_writer_reserve(struct parallels_ext_writer *w,
                                      uint64_t magic, uint64_t flags,
                                      uint32_t size)
{
    size_t need = PARALLELS_FEATURE_HEADER + (((size_t)size + 7) & ~7ul);
    uint8_t *p;

    /* The End record must still fit behind. */
    if (need > w->cluster_size ||
        w->pos + need + PARALLELS_FEATURE_HEADER > w->cluster_size) {
        return NULL;
    }
    p = w->buf + w->pos;
    parallels_put_le64(p, magic);
    parallels_put_le64(p + 8, flags);
    parallels_put_le32(p + 16, size);
    w->pos += need;
    return p + PARALLELS_FEATURE_HEADER;
}

int parallels_ext_writer_add(struct parallels_ext_writer *w, uint64_t magic,
                             uint64_t flags, const void *data, uint32_t size)
{
    uint8_t *p = parallels_ext_writer_reserve(w, magic, flags, size);

    if (!p) {
        return prl_error(ENOSPC,
                         "the Format Extension features do not fit "
                         "in one cluster of %zu bytes",
                         w->cluster_size);
    }
    memcpy(p, data, size);
    return 0;
}

int parallels_ext_writer_finish(struct parallels_ext_writer *w)
{
    parallels_put_le64(w->buf, PARALLELS_EXT_MAGIC);
    return parallels_ext_checksum(w->buf, w->cluster_size, w->buf + 8);
}

int parallels_ext_mark_inconsistent(const uint8_t *old, uint8_t *out, size_t cs)
{
    struct parallels_ext ext;
    struct parallels_ext_writer w;
    uint8_t *attrs = NULL;
    uint32_t n_bitmaps = 0, n_old = 0;
    const uint8_t *old_attrs = NULL;
    char err[128];
    int r;

    r = parallels_ext_parse(old, cs, &ext, err, sizeof(err));
    if (r < 0) {
        return prl_error(EINVAL, "Format Extension: %s", err);
    }
    parallels_ext_writer_init(&w, out, cs);
    for (size_t i = 0; i < ext.n_features; i++) {
        struct parallels_feature *f = &ext.features[i];
        if (f->magic == PARALLELS_FEATURE_PRL_ATTRS) {
            old_attrs = parallels_ext_attrs(old, f, &n_old);
            continue;
        }
        if (f->magic == PARALLELS_FEATURE_DIRTY_BITMAP) {
            n_bitmaps++;
        }
        r = parallels_ext_writer_add(&w, f->magic, f->flags, old + f->data_pos,
                                     f->data_size);
        if (r < 0) {
            parallels_ext_free(&ext);
            return r;
        }
    }
    attrs = parallels_ext_writer_reserve(&w, PARALLELS_FEATURE_PRL_ATTRS,
                                         PARALLELS_FEATURE_TRANSIT,
                                         8 + n_bitmaps * PARALLELS_ATTR_ENTRY);
    if (!attrs) {
        parallels_ext_free(&ext);
        return prl_error(ENOSPC, "no room in the Format Extension to mark "
                                 "its bitmaps inconsistent");
    }
    parallels_put_le32(attrs, n_bitmaps);
    uint8_t *e = attrs + 8;
    for (size_t i = 0; i < ext.n_features; i++) {
        struct parallels_feature *f = &ext.features[i];
        uint32_t flags = PARALLELS_ATTR_INCONSISTENT;
        if (f->magic != PARALLELS_FEATURE_DIRTY_BITMAP ||
            f->data_size < PARALLELS_BITMAP_FIXED) {
            continue;
        }
        const uint8_t *id = old + f->data_pos + 8;
        for (uint32_t j = 0; old_attrs && j < n_old; j++) {
            const uint8_t *oe = old_attrs + j * PARALLELS_ATTR_ENTRY;
            if (memcmp(oe, id, 16) == 0) {
                flags |= parallels_get_le32(oe + 16);
            }
        }
        memcpy(e, id, 16);
        parallels_put_le32(e + 16, flags);
        e += PARALLELS_ATTR_ENTRY;
    }
    parallels_ext_free(&ext);
    return parallels_ext_writer_finish(&w);
}
