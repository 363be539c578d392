/* SPDX-License-Identifier: MIT */
/* The Parallels expandable image on disk: header codec and the layout
 * rules of parallels.rst, shared by the driver, check and the tests. */
#ifndef PRL_BLOCK_PARALLELS_FORMAT_H
#define PRL_BLOCK_PARALLELS_FORMAT_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PARALLELS_MAGIC_LEGACY "WithoutFreeSpace"
#define PARALLELS_MAGIC_EXT "WithouFreSpacExt"
#define PARALLELS_MAGIC_LEN 16
#define PARALLELS_VERSION 2
#define PARALLELS_HEADER_SIZE 64
#define PARALLELS_SECTOR 512u

#define PARALLELS_IN_USE_DIRTY 0x746F6E59u /* "Ynot": open read-write */
#define PARALLELS_IN_USE_CLEAN 0x312e3276u /* "v2.1": closed */
#define PARALLELS_FLAG_EMPTY 0x1u

/* Header field offsets, for tests and check that poke single fields. */
#define PARALLELS_OFF_VERSION 16
#define PARALLELS_OFF_HEADS 20
#define PARALLELS_OFF_CYLINDERS 24
#define PARALLELS_OFF_TRACKS 28
#define PARALLELS_OFF_BAT_ENTRIES 32
#define PARALLELS_OFF_NB_SECTORS 36
#define PARALLELS_OFF_IN_USE 44
#define PARALLELS_OFF_DATA_OFF 48
#define PARALLELS_OFF_FLAGS 52
#define PARALLELS_OFF_EXT_OFF 56

/* Largest cluster prl accepts: 1 GiB (2^21 sectors).  The format allows
 * more, but no tool ever made such images and a cluster is a unit of
 * I/O. */
#define PARALLELS_MAX_TRACKS (1u << 21)

/* The on-disk header, little-endian.  Only ever filled by memcpy from a
 * byte buffer and decoded field by field. */
struct parallels_disk_header {
    char magic[16];
    uint32_t version;
    uint32_t heads;
    uint32_t cylinders;
    uint32_t tracks;
    uint32_t bat_entries;
    uint64_t nb_sectors;
    uint32_t in_use;
    uint32_t data_off;
    uint32_t flags;
    uint64_t ext_off;
} __attribute__((packed));
static_assert(sizeof(struct parallels_disk_header) == PARALLELS_HEADER_SIZE,
              "Parallels header is 64 bytes");

/* The header in host byte order. */
struct parallels_header {
    bool ext;      /* magic is WithouFreSpacExt */
    bool magic_ok; /* magic is one of the two */
    uint32_t version;
    uint32_t heads;
    uint32_t cylinders;
    uint32_t tracks; /* cluster size in sectors */
    uint32_t bat_entries;
    uint64_t nb_sectors;
    uint32_t in_use;
    uint32_t data_off; /* sectors; 0 allowed for legacy */
    uint32_t flags;
    uint64_t ext_off; /* sectors */
};

/* Geometry derived from a header that passed parallels_layout(). */
struct parallels_layout {
    bool ext;
    uint64_t cluster_size; /* bytes */
    uint64_t entry_unit;   /* bytes per BAT entry unit: cluster or sector */
    uint64_t bat_entries;
    uint64_t bat_end;      /* byte offset just past the BAT */
    uint64_t data_off;     /* bytes, effective (computed when 0) */
    uint64_t virtual_size; /* bytes */
    uint64_t max_offset;   /* largest host offset a BAT entry can hold */
};

void parallels_header_decode(const uint8_t buf[PARALLELS_HEADER_SIZE],
                             struct parallels_header *h);
void parallels_header_encode(const struct parallels_header *h,
                             uint8_t buf[PARALLELS_HEADER_SIZE]);

/* Check every header rule of parallels.rst that does not need the BAT and
 * derive the layout.  |file_size| bounds the BAT.  On failure returns
 * -EINVAL and writes a message naming the field and value into |err|. */
int parallels_layout(const struct parallels_header *h, uint64_t file_size,
                     struct parallels_layout *lay, char *err, size_t errlen);

/* Host byte offset of a BAT entry value (non-zero). */
static inline uint64_t parallels_entry_offset(const struct parallels_layout *l,
                                              uint32_t entry)
{
    return (uint64_t)entry * l->entry_unit;
}

/* Why a non-zero entry (or ext_off, in sectors) is invalid, or NULL when
 * it is valid: below the data area, misaligned, past end of file, or only
 * partly inside the file. */
const char *parallels_offset_problem(const struct parallels_layout *l,
                                     uint64_t host_offset, uint64_t file_size);

/* parallels_offset_problem for an offset in sectors (ext_off, bitmap L1
 * entries), which may overflow a byte offset.  *off gets the byte offset
 * (0 on overflow). */
const char *parallels_sector_offset_problem(const struct parallels_layout *l,
                                            uint64_t sectors,
                                            uint64_t file_size, uint64_t *off);

/* Default geometry for a new image: heads 16, 32 sectors per track. */
uint32_t parallels_cylinders(uint64_t nb_sectors);

#endif
