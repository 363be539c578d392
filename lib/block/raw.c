/* SPDX-License-Identifier: MIT */
/* The raw driver: guest offset = file offset. */
#include "block/driver.h"
#include "common/util.h"
#include "io/extent-map.h"
#include "io/file.h"
#include "prl/error.h"

#include <errno.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <string.h>

struct raw_state {
    struct prl_file file;
    /* Block status from FIEMAP windows; every change of the file through
     * this driver invalidates it once done. */
    struct prl_extent_map map;
    /* Large writes at or past this offset reserve their blocks first (a
     * file with no blocks at open, as a new convert target, fills in
     * order; any other file is never assumed to be a hole).  A hint,
     * raced on harmlessly. */
    _Atomic uint64_t reserve_from;
};

/* Writes at least this large may reserve their blocks first. */
#define RAW_RESERVE_MIN ((uint64_t)1 << 20)

static int raw_open(struct prl_block *bs)
{
    bool rw = bs->open_flags & PRL_OPEN_RDWR;
    struct raw_state *s = prl_calloc(1, sizeof(*s));
    int r;

    if (!s) {
        return -ENOMEM;
    }
    r = prl_file_open(&s->file, bs->filename, rw, false);
    if (r < 0) {
        free(s);
        return r;
    }
    s->file.no_sync = bs->open_flags & PRL_OPEN_NO_FLUSH;
    r = prl_file_size(&s->file, &bs->size);
    if (r < 0) {
        prl_file_close(&s->file);
        free(s);
        return r;
    }
    prl_extent_map_init(&s->map);
    uint64_t blocks = 1;
    atomic_init(&s->reserve_from,
                rw && prl_file_allocated(&s->file, &blocks) == 0 && blocks == 0
                    ? 0
                    : UINT64_MAX);
    bs->opaque = s;
    bs->caps = PRL_CAP_PARALLEL | PRL_CAP_ZERO | PRL_CAP_TRIM |
               (rw ? PRL_CAP_WRITE : 0);
    bs->request_alignment = 1;
    bs->preferred_size = 4096;
    return 0;
}

static int raw_close(struct prl_block *bs)
{
    struct raw_state *s = bs->opaque;
    int r = 0;

    if (s->file.writable) {
        r = prl_file_sync(&s->file);
    }
    int r2 = prl_file_close(&s->file);
    prl_extent_map_destroy(&s->map);
    free(s);
    return r < 0 ? r : r2;
}

static int raw_pread(struct prl_block *bs, void *buf, uint64_t length,
                     uint64_t offset)
{
    struct raw_state *s = bs->opaque;
    return prl_file_pread(&s->file, buf, (size_t)length, offset);
}

static int raw_pwrite(struct prl_block *bs, const void *buf, uint64_t length,
                      uint64_t offset, unsigned flags)
{
    struct raw_state *s = bs->opaque;
    int r;

    if (length >= RAW_RESERVE_MIN && offset >= atomic_load(&s->reserve_from)) {
        /* Into a hole: one fallocate costs less than the file system
         * allocating page by page behind the page cache. */
        prl_file_reserve(&s->file, offset, length);
        atomic_store(&s->reserve_from, offset + length);
    }
    r = prl_file_pwrite(&s->file, buf, (size_t)length, offset);
    prl_extent_map_invalidate(&s->map);
    if (r == 0 && (flags & PRL_REQ_FUA)) {
        r = prl_file_sync(&s->file);
    }
    return r;
}

static int raw_zero(struct prl_block *bs, uint64_t length, uint64_t offset,
                    unsigned flags)
{
    struct raw_state *s = bs->opaque;
    int r = prl_file_zero(&s->file, offset, length, flags & PRL_REQ_NO_UNMAP,
                          flags & PRL_REQ_FAST_ZERO);

    prl_extent_map_invalidate(&s->map);
    if (r == 0 && (flags & PRL_REQ_FUA)) {
        r = prl_file_sync(&s->file);
    }
    return r;
}

static int raw_trim(struct prl_block *bs, uint64_t length, uint64_t offset,
                    unsigned flags)
{
    struct raw_state *s = bs->opaque;
    int r = prl_file_punch(&s->file, offset, length);

    prl_extent_map_invalidate(&s->map);
    if (r == -ENOTSUP) {
        r = 0; /* trim is advisory */
    }
    if (r == 0 && (flags & PRL_REQ_FUA)) {
        r = prl_file_sync(&s->file);
    }
    return r;
}

static int raw_flush(struct prl_block *bs)
{
    struct raw_state *s = bs->opaque;
    return s->file.writable ? prl_file_sync(&s->file) : 0;
}

static int raw_block_status(struct prl_block *bs, uint64_t offset,
                            uint64_t length, struct prl_extent *ext)
{
    struct raw_state *s = bs->opaque;
    bool data;
    int r = prl_extent_map_extent(&s->map, &s->file, offset, length, &data,
                                  &ext->length);

    if (r < 0) {
        return r;
    }
    ext->flags = PRL_EXT_ALLOCATED | PRL_EXT_OFFSET |
                 (data ? PRL_EXT_DATA : PRL_EXT_ZERO);
    ext->depth = 1;
    ext->offset = offset;
    return 0;
}

static int raw_data_fd(struct prl_block *bs, const struct prl_extent *ext)
{
    struct raw_state *s = bs->opaque;
    (void)ext;
    return s->file.fd;
}

static int raw_info(struct prl_block *bs, struct prl_image_info *info)
{
    struct raw_state *s = bs->opaque;
    int r = prl_file_allocated(&s->file, &info->actual_size);

    if (r == 0) {
        r = prl_file_size(&s->file, &info->file_size);
    }
    return r;
}

static int raw_resize(struct prl_block *bs, uint64_t new_size, bool shrink)
{
    struct raw_state *s = bs->opaque;
    int r;

    if (new_size < bs->size && !shrink) {
        /* Every byte of a raw file is guest data, as qemu-img sees it. */
        return prl_error(ENOTEMPTY,
                         "shrinking '%s' from %" PRIu64 " to %" PRIu64
                         " bytes would drop data; use --shrink",
                         bs->filename, bs->size, new_size);
    }
    r = prl_file_truncate(&s->file, new_size);
    prl_extent_map_invalidate(&s->map);
    if (r == 0) {
        bs->size = new_size;
    }
    return r;
}

static int raw_create(const char *path, uint64_t size, struct prl_opts *opts)
{
    struct prl_file f;
    const char *prealloc = prl_opts_get(opts, "preallocation");
    int r = prl_opts_check_unused(opts, "raw");

    if (r < 0) {
        return r;
    }
    if (prealloc && strcmp(prealloc, "off") != 0 &&
        strcmp(prealloc, "falloc") != 0 && strcmp(prealloc, "full") != 0) {
        return prl_error(EINVAL,
                         "raw: invalid preallocation '%s' (off, "
                         "falloc or full)",
                         prealloc);
    }
    r = prl_file_open(&f, path, true, true);
    if (r < 0) {
        return r;
    }
    r = prl_file_truncate(&f, size);
    if (r == 0 && prealloc && size > 0) {
        if (strcmp(prealloc, "falloc") == 0) {
            r = prl_file_allocate(&f, 0, size);
        } else if (strcmp(prealloc, "full") == 0) {
            r = prl_file_zero(&f, 0, size, true, false);
        }
    }
    if (r == 0) {
        r = prl_file_sync(&f);
    }
    int r2 = prl_file_close(&f);
    return r < 0 ? r : r2;
}

const struct prl_driver prl_driver_raw = {
    .name = "raw",
    .open = raw_open,
    .close = raw_close,
    .create = raw_create,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .zero = raw_zero,
    .trim = raw_trim,
    .flush = raw_flush,
    .block_status = raw_block_status,
    .data_fd = raw_data_fd,
    .info = raw_info,
    .resize = raw_resize,
};
