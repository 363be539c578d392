/* SPDX-License-Identifier: MIT */
/* Format Extension parsing (see parallels-ext.h). */
#include "block/parallels-ext.h"
#include "prl/error.h"

#include <errno.h>
#include <gnutls/crypto.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int parallels_ext_checksum(const uint8_t *cluster, size_t cluster_size,
                           uint8_t md5[16])
{
    if (cluster_size < PARALLELS_EXT_HEADER) {
        return -EINVAL;
    }
    if (gnutls_hash_fast(GNUTLS_DIG_MD5, cluster + PARALLELS_EXT_HEADER,
                         cluster_size - PARALLELS_EXT_HEADER, md5) < 0) {
        return prl_error(EIO, "MD5 of the Format Extension failed");
    }
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
        snprintf(err, errlen, "cluster of %zu bytes is too small for a "
                 "Format Extension", cs);
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
            snprintf(err, errlen, "feature list has no End record inside "
                     "the cluster (stops at byte %zu of %zu)", pos, cs);
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
            snprintf(err, errlen, "feature 0x%016" PRIx64 " at byte %zu: "
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

int parallels_bitmap_decode(const uint8_t *data, uint32_t data_size,
                            struct parallels_bitmap_info *b, char *err,
                            size_t errlen)
{
    if (data_size < PARALLELS_BITMAP_FIXED) {
        snprintf(err, errlen, "dirty bitmap feature: data_size = %" PRIu32
                 " is smaller than its fixed part (%d bytes)", data_size,
                 PARALLELS_BITMAP_FIXED);
        return -EINVAL;
    }
    b->size = parallels_get_le64(data);
    memcpy(b->id, data + 8, 16);
    b->granularity = parallels_get_le32(data + 24);
    b->l1_size = parallels_get_le32(data + 28);
    if ((uint64_t)b->l1_size * 8 > data_size - PARALLELS_BITMAP_FIXED) {
        snprintf(err, errlen, "dirty bitmap feature: l1_size = %" PRIu32
                 " needs %" PRIu64 " bytes but data_size = %" PRIu32,
                 b->l1_size, (uint64_t)b->l1_size * 8 +
                 PARALLELS_BITMAP_FIXED, data_size);
        return -EINVAL;
    }
    b->l1 = data + PARALLELS_BITMAP_FIXED;
    return 0;
}
