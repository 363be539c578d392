/* SPDX-License-Identifier: MIT */
/* The block layer: open an image of any supported format and do guest I/O
 * on it in bytes.  Every request is validated here once (range, flags,
 * capabilities); drivers never re-check. */
#ifndef PRL_BLOCK_H
#define PRL_BLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct prl_block;

/* Open flags. */
#define PRL_OPEN_RDWR (1u << 0)   /* read-write; default read-only */
#define PRL_OPEN_UNSAFE (1u << 1) /* skip image validation (check, repair) */
/* Never sync to stable storage: flush and FUA only order writes, as with
 * qemu's cache=unsafe.  For a target that is useless until complete. */
#define PRL_OPEN_NO_FLUSH (1u << 2)
/* NBD: also negotiate every dirty bitmap the server lists, for
 * prl_bitmap_status (costs a round trip at open; other drivers ignore
 * it). */
#define PRL_OPEN_REMOTE_BITMAPS (1u << 3)
/* Bundles: let DiskDescriptor.xml name image files outside the bundle
 * directory (absolute paths, "..", symlinks out). */
#define PRL_OPEN_BUNDLE_EXTERNAL (1u << 16)

/* Request flags. */
#define PRL_REQ_FUA (1u << 0)       /* write/zero/trim: stable on return */
#define PRL_REQ_NO_UNMAP (1u << 1)  /* zero: keep the space allocated */
#define PRL_REQ_FAST_ZERO (1u << 2) /* zero: -ENOTSUP unless it is fast */

/* Capabilities, from prl_block_caps(). */
#define PRL_CAP_WRITE (1u << 0)     /* opened read-write */
#define PRL_CAP_ZERO (1u << 1)      /* zero is cheaper than writing zeroes */
#define PRL_CAP_TRIM (1u << 2)      /* trim frees space */
#define PRL_CAP_PARALLEL (1u << 3)  /* requests may run concurrently */
#define PRL_CAP_FAST_ZERO (1u << 4) /* zero never falls back to writing */

/* Extent flags from prl_block_status(). */
#define PRL_EXT_DATA (1u << 0)      /* reads come from stored data */
#define PRL_EXT_ZERO (1u << 1)      /* reads return zeroes */
#define PRL_EXT_ALLOCATED (1u << 2) /* provided by some layer (depth > 0) */
#define PRL_EXT_OFFSET (1u << 3)    /* offset is valid */

struct prl_extent {
    uint64_t length; /* bytes from the queried offset, > 0 */
    uint32_t flags;  /* PRL_EXT_* */
    uint32_t depth;  /* layer that provides it: 1 = top, 0 = none */
    uint64_t offset; /* byte offset in the layer's file (PRL_EXT_OFFSET) */
};

/* What `prl-img info` shows.  Strings point into the handle and live as
 * long as it. */
struct prl_image_info {
    const char *format; /* driver name: "raw", "parallels" */
    const char *filename;
    uint64_t virtual_size; /* bytes */
    uint64_t actual_size;  /* bytes the file occupies on the host */
    uint64_t cluster_size; /* bytes, 0 when the format has none */
    bool read_only;
    /* Parallels only (has_parallels): */
    bool has_parallels;
    const char *subformat; /* the magic: "WithouFreSpacExt", ... */
    uint32_t in_use;       /* raw header value */
    bool dirty;            /* in_use says not closed cleanly */
    bool empty_flag;       /* header flag bit 0 */
    uint32_t flags;        /* whole header flags field */
    uint32_t heads, cylinders, tracks;
    uint64_t data_offset; /* bytes */
    uint64_t ext_offset;  /* bytes, 0 when none */
    uint64_t bat_entries;
    uint64_t allocated_clusters;
    uint64_t file_size; /* bytes */
};

/* Open |path|.  |format| NULL probes by content; otherwise the driver of
 * that name is used ("raw", "parallels").  A name ending in .hdd/.hds that
 * probes as no known format is an error, never raw.  On success *out is a
 * handle the caller closes with prl_block_close. */
int prl_block_open(const char *path, const char *format, unsigned flags,
                   struct prl_block **out);

/* Flush, write back metadata, mark the image closed cleanly and free the
 * handle.  Returns the first error met; the handle is freed regardless.
 * NULL is a no-op. */
int prl_block_close(struct prl_block *bs);

/* Guest size in bytes. */
uint64_t prl_block_size(const struct prl_block *bs);

/* Driver name; lives as long as the handle. */
const char *prl_block_format(const struct prl_block *bs);

/* Path the image was opened with; lives as long as the handle. */
const char *prl_block_filename(const struct prl_block *bs);

/* PRL_CAP_* of this handle. */
unsigned prl_block_caps(const struct prl_block *bs);

/* Preferred I/O size in bytes (the cluster size, or 4096). */
uint32_t prl_block_preferred_size(const struct prl_block *bs);

/* Guest I/O.  offset+length must lie inside the image (else -EINVAL);
 * writes need PRL_CAP_WRITE (else -EROFS).  length 0 is a no-op.  Returns
 * 0 or a negative errno with a message set.  Zero makes the range read as
 * zeroes (freeing space unless PRL_REQ_NO_UNMAP).  Trim may discard data:
 * afterwards the range reads as zeroes in Parallels images, and in raw
 * files where the file system can punch holes (elsewhere it keeps its
 * data). */
int prl_block_pread(struct prl_block *bs, void *buf, uint64_t length,
                    uint64_t offset, unsigned flags);
int prl_block_pwrite(struct prl_block *bs, const void *buf, uint64_t length,
                     uint64_t offset, unsigned flags);
int prl_block_zero(struct prl_block *bs, uint64_t length, uint64_t offset,
                   unsigned flags);
int prl_block_trim(struct prl_block *bs, uint64_t length, uint64_t offset,
                   unsigned flags);
int prl_block_flush(struct prl_block *bs);

/* A hint that [offset, offset+length) will be read soon (NBD_CMD_CACHE):
 * the host file ranges holding its data are read ahead into the page
 * cache (posix_fadvise WILLNEED; holes need nothing), and an NBD export
 * passes the hint on to its server when that takes it.  It may return
 * before the data is in.  Returns 0 or a negative errno; a failure says
 * nothing about later reads of the range. */
int prl_block_cache(struct prl_block *bs, uint64_t length, uint64_t offset);

/* Describe the range starting at |offset|: fills *ext with the longest
 * prefix (1 .. length bytes) whose status is uniform.  length > 0 and the
 * range inside the image. */
int prl_block_status(struct prl_block *bs, uint64_t offset, uint64_t length,
                     struct prl_extent *ext);

/* The file that holds the data of |ext|, an extent that
 * prl_block_status just returned with PRL_EXT_DATA and PRL_EXT_OFFSET:
 * a descriptor the handle owns (valid until prl_block_close; do not
 * close it), whose bytes ext->offset .. ext->offset + ext->length are
 * the guest data of that extent.  For readers that send the data
 * themselves (prl-nbd's sendfile replies).  With writers on the handle, a
 * write to the extent's range leaves old or new bytes there, and a trim
 * or zeroing of the range may give its space to other data (a Parallels
 * cluster freed and reused).  Returns the descriptor, or -ENOTSUP (no
 * message set) when the driver cannot say. */
int prl_block_data_fd(struct prl_block *bs, const struct prl_extent *ext);

/* Fill *info.  Returns 0 or a negative errno. */
int prl_block_info(struct prl_block *bs, struct prl_image_info *info);

/* Change the guest size.  Shrinking below allocated data fails with
 * -ENOTEMPTY unless |shrink| is true. */
int prl_block_resize(struct prl_block *bs, uint64_t new_size, bool shrink);

/* Create an image of |format| ("raw" or "parallels") and |size| bytes.
 * |options| is a qemu-img style "key=value,key=value" list or NULL; an
 * option the driver does not know is an error naming it. */
int prl_block_create(const char *path, const char *format, uint64_t size,
                     const char *options);

/* Names of the drivers, NULL-terminated; static. */
const char *const *prl_block_formats(void);

#endif
