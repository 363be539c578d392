/* SPDX-License-Identifier: MIT */
/* Parallels header codec and layout rules (see parallels-format.h). */
#include "block/parallels-format.h"
#include "common/util.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

void parallels_header_decode(const uint8_t buf[PARALLELS_HEADER_SIZE],
                             struct parallels_header *h)
{
    struct parallels_disk_header d;

    memcpy(&d, buf, sizeof(d));
    h->ext = memcmp(d.magic, PARALLELS_MAGIC_EXT, PARALLELS_MAGIC_LEN) == 0;
    h->magic_ok = h->ext || memcmp(d.magic, PARALLELS_MAGIC_LEGACY,
                                   PARALLELS_MAGIC_LEN) == 0;
    h->version = le32toh(d.version);
    h->heads = le32toh(d.heads);
    h->cylinders = le32toh(d.cylinders);
    h->tracks = le32toh(d.tracks);
    h->bat_entries = le32toh(d.bat_entries);
    h->nb_sectors = le64toh(d.nb_sectors);
    h->in_use = le32toh(d.in_use);
    h->data_off = le32toh(d.data_off);
    h->flags = le32toh(d.flags);
    h->ext_off = le64toh(d.ext_off);
}

void parallels_header_encode(const struct parallels_header *h,
                             uint8_t buf[PARALLELS_HEADER_SIZE])
{
    struct parallels_disk_header d;

    memcpy(d.magic, h->ext ? PARALLELS_MAGIC_EXT : PARALLELS_MAGIC_LEGACY,
           PARALLELS_MAGIC_LEN);
    d.version = htole32(h->version);
    d.heads = htole32(h->heads);
    d.cylinders = htole32(h->cylinders);
    d.tracks = htole32(h->tracks);
    d.bat_entries = htole32(h->bat_entries);
    d.nb_sectors = htole64(h->nb_sectors);
    d.in_use = htole32(h->in_use);
    d.data_off = htole32(h->data_off);
    d.flags = htole32(h->flags);
    d.ext_off = htole64(h->ext_off);
    memcpy(buf, &d, sizeof(d));
}

#define FAIL(...)                                                              \
    do {                                                                       \
        snprintf(err, errlen, __VA_ARGS__);                                    \
        return -EINVAL;                                                        \
    } while (0)

int parallels_layout(const struct parallels_header *h, uint64_t file_size,
                     struct parallels_layout *lay, char *err, size_t errlen)
{
    uint64_t bat_bytes, need, data_off;

    memset(lay, 0, sizeof(*lay));
    if (!h->magic_ok) {
        FAIL("magic is neither \"" PARALLELS_MAGIC_LEGACY
             "\" nor \"" PARALLELS_MAGIC_EXT "\"");
    }
    if (h->version != PARALLELS_VERSION) {
        FAIL("header field version = %" PRIu32 " (must be 2)", h->version);
    }
    if (h->tracks == 0) {
        FAIL("header field tracks = 0 (the cluster size in sectors must be "
             "at least 1)");
    }
    if (h->tracks > PARALLELS_MAX_TRACKS) {
        FAIL("header field tracks = %" PRIu32 " (a cluster of %" PRIu64
             " bytes; prl accepts at most %u sectors)",
             h->tracks, (uint64_t)h->tracks * PARALLELS_SECTOR,
             PARALLELS_MAX_TRACKS);
    }
    lay->ext = h->ext;
    lay->cluster_size = (uint64_t)h->tracks * PARALLELS_SECTOR;
    lay->entry_unit = h->ext ? lay->cluster_size : PARALLELS_SECTOR;
    lay->bat_entries = h->bat_entries;

    if (!h->ext && (h->nb_sectors >> 32) != 0) {
        FAIL("header field nb_sectors = %" PRIu64 " has its upper 32 bits "
             "set, which \"" PARALLELS_MAGIC_LEGACY "\" images must clear",
             h->nb_sectors);
    }
    if (h->nb_sectors > UINT64_MAX / PARALLELS_SECTOR) {
        FAIL("header field nb_sectors = %" PRIu64 " overflows a byte size",
             h->nb_sectors);
    }
    lay->virtual_size = h->nb_sectors * PARALLELS_SECTOR;
    /* bat_entries * tracks fits in 64 bits: both are 32-bit. */
    if ((uint64_t)h->bat_entries * h->tracks < h->nb_sectors) {
        FAIL("header field nb_bat_entries = %" PRIu32 " covers only %" PRIu64
             " sectors, but nb_sectors = %" PRIu64,
             h->bat_entries, (uint64_t)h->bat_entries * h->tracks,
             h->nb_sectors);
    }
    bat_bytes = (uint64_t)h->bat_entries * 4;
    lay->bat_end = PARALLELS_HEADER_SIZE + bat_bytes;
    if (lay->bat_end > file_size) {
        FAIL("header field nb_bat_entries = %" PRIu32 ": the BAT ends at "
             "byte %" PRIu64 ", past the end of the file (%" PRIu64 " bytes)",
             h->bat_entries, lay->bat_end, file_size);
    }

    if (h->data_off == 0) {
        if (h->ext) {
            FAIL("header field data_off = 0, but \"" PARALLELS_MAGIC_EXT
                 "\" images need a non-zero, cluster-aligned data offset");
        }
        data_off = prl_round_up(lay->bat_end, PARALLELS_SECTOR);
    } else {
        data_off = (uint64_t)h->data_off * PARALLELS_SECTOR;
        if (data_off < lay->bat_end) {
            FAIL("header field data_off = %" PRIu32 " (byte %" PRIu64
                 ") lies inside the BAT, which ends at byte %" PRIu64,
                 h->data_off, data_off, lay->bat_end);
        }
        if (h->ext && data_off % lay->cluster_size != 0) {
            FAIL("header field data_off = %" PRIu32 " (byte %" PRIu64
                 ") is not aligned to the cluster size %" PRIu64,
                 h->data_off, data_off, lay->cluster_size);
        }
    }
    lay->data_off = data_off;
    /* A BAT entry is 32 bits of entry units. */
    need = (uint64_t)UINT32_MAX * lay->entry_unit;
    lay->max_offset = need;
    return 0;
}

const char *parallels_offset_problem(const struct parallels_layout *l,
                                     uint64_t off, uint64_t file_size)
{
    if (off < l->data_off) {
        return off < l->bat_end ? "lies inside the header or BAT"
                                : "lies below the data area";
    }
    if ((off - l->data_off) % l->cluster_size != 0) {
        return "is not aligned to a cluster of the data area";
    }
    if (off >= file_size) {
        return "is past the end of the file";
    }
    if (file_size - off < l->cluster_size) {
        return "has its cluster only partly inside the file";
    }
    return NULL;
}

const char *parallels_sector_offset_problem(const struct parallels_layout *l,
                                            uint64_t sectors,
                                            uint64_t file_size, uint64_t *off)
{
    if (sectors > UINT64_MAX / PARALLELS_SECTOR) {
        *off = 0;
        return "overflows a byte offset";
    }
    *off = sectors * PARALLELS_SECTOR;
    return parallels_offset_problem(l, *off, file_size);
}

uint32_t parallels_cylinders(uint64_t nb_sectors)
{
    uint64_t c = nb_sectors / (16 * 32);

    return c > UINT32_MAX ? UINT32_MAX : (uint32_t)c;
}
