/* SPDX-License-Identifier: MIT */
/* The dispatcher: probing, opening, and the one place where every request
 * is validated before it reaches a driver. */
#include "block/bitmap.h"
#include "block/driver.h"
#include "common/opts.h"
#include "common/util.h"
#include "io/file.h"
#include "nbd/uri.h"
#include "prl/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROBE_BYTES 4096

static const struct prl_driver *const drivers[] = {
    &prl_driver_parallels,
    &prl_driver_raw,
    &prl_driver_bundle,
    &prl_driver_nbd,
};

static const char *const driver_names[] = {"parallels", "raw", "bundle", "nbd",
                                           NULL};

const char *const *prl_block_formats(void)
{
    return driver_names;
}

static const struct prl_driver *find_driver(const char *name)
{
    for (size_t i = 0; i < PRL_ARRAY_SIZE(drivers); i++) {
        if (strcmp(drivers[i]->name, name) == 0) {
            return drivers[i];
        }
    }
    return NULL;
}

static int unknown_format(const char *name)
{
    return prl_error(EINVAL,
                     "unknown format '%s' (known: parallels, raw, "
                     "bundle, nbd)",
                     name);
}

static bool has_parallels_suffix(const char *path)
{
    size_t n = strlen(path);

    while (n > 1 && path[n - 1] == '/') {
        n--;
    }
    return n >= 4 && (strncasecmp(path + n - 4, ".hdd", 4) == 0 ||
                      strncasecmp(path + n - 4, ".hds", 4) == 0);
}

/* A Parallels disk: a directory holding DiskDescriptor.xml, or that file
 * itself. */
static bool is_bundle_path(const char *path, bool is_dir)
{
    const char *base = strrchr(path, '/');
    struct stat st;
    char *desc;
    bool yes;

    if (!is_dir) {
        return strcmp(base ? base + 1 : path, "DiskDescriptor.xml") == 0;
    }
    if (asprintf(&desc, "%s/DiskDescriptor.xml", path) < 0) {
        return false;
    }
    yes = stat(desc, &st) == 0 && S_ISREG(st.st_mode);
    free(desc);
    return yes;
}

static int probe(const char *path, const struct prl_driver **out)
{
    uint8_t buf[PROBE_BYTES];
    struct prl_file f;
    struct stat st;
    uint64_t size;
    int best = 0, r;

    *out = NULL;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (is_bundle_path(path, true)) {
            *out = &prl_driver_bundle;
            return 0;
        }
        return prl_error(EISDIR, "'%s' is a directory, not an image", path);
    }
    if (is_bundle_path(path, false)) {
        *out = &prl_driver_bundle;
        return 0;
    }
    r = prl_file_open(&f, path, false, false);
    if (r < 0) {
        return r;
    }
    r = prl_file_size(&f, &size);
    if (r == 0) {
        size_t n = size < sizeof(buf) ? (size_t)size : sizeof(buf);
        r = prl_file_pread(&f, buf, n, 0);
        if (r == 0) {
            for (size_t i = 0; i < PRL_ARRAY_SIZE(drivers); i++) {
                int score;
                if (!drivers[i]->probe) {
                    continue;
                }
                score = drivers[i]->probe(buf, n);
                if (score > best) {
                    best = score;
                    *out = drivers[i];
                }
            }
        }
    }
    prl_file_close(&f);
    if (r < 0) {
        return r;
    }
    if (!*out) {
        if (has_parallels_suffix(path)) {
            return prl_error(EINVAL,
                             "'%s' is not a Parallels image: it is named "
                             "like one but has no Parallels magic "
                             "(\"WithoutFreeSpace\" or \"WithouFreSpacExt\");"
                             " use -f raw to open it as raw",
                             path);
        }
        *out = &prl_driver_raw;
    }
    return 0;
}

static void free_bitmaps(struct prl_block *bs)
{
    for (size_t i = 0; i < bs->n_bitmaps; i++) {
        prl_dirty_bitmap_free(bs->bitmaps[i]);
    }
    free(bs->bitmaps);
    bs->bitmaps = NULL;
    bs->n_bitmaps = 0;
}

int prl_block_open(const char *path, const char *format, unsigned flags,
                   struct prl_block **out)
{
    const struct prl_driver *drv;
    struct prl_block *bs;
    int r;

    *out = NULL;
    if (prl_nbd_uri_is_nbd(path)) {
        /* An NBD URI: the server presents the guest data, so the only
         * format that fits is the export's own bytes. */
        if (format && strcmp(format, "nbd") != 0 &&
            strcmp(format, "raw") != 0) {
            return prl_error(EINVAL,
                             "'%s' is an NBD URI: format '%s' cannot be "
                             "read over NBD (serve the image with its "
                             "format, e.g. qemu-nbd -f %s, and open it "
                             "without -f)",
                             path, format, format);
        }
        drv = &prl_driver_nbd;
    } else if (format) {
        drv = find_driver(format);
        if (!drv) {
            return unknown_format(format);
        }
    } else {
        r = probe(path, &drv);
        if (r < 0) {
            return r;
        }
    }
    bs = prl_calloc(1, sizeof(*bs));
    if (!bs) {
        return -ENOMEM;
    }
    bs->drv = drv;
    bs->open_flags = flags;
    bs->request_alignment = 1;
    bs->preferred_size = 4096;
    bs->filename = strdup(path);
    if (!bs->filename) {
        free(bs);
        return prl_error(ENOMEM, "out of memory");
    }
    pthread_rwlock_init(&bs->bitmap_lock, NULL);
    r = drv->open(bs);
    if (r < 0) {
        free_bitmaps(bs);
        pthread_rwlock_destroy(&bs->bitmap_lock);
        free(bs->filename);
        free(bs);
        return r;
    }
    if (!(flags & PRL_OPEN_RDWR)) {
        bs->caps &= ~PRL_CAP_WRITE;
    }
    *out = bs;
    return 0;
}

int prl_block_close(struct prl_block *bs)
{
    int r;

    if (!bs) {
        return 0;
    }
    r = bs->drv->close(bs);
    free_bitmaps(bs);
    pthread_rwlock_destroy(&bs->bitmap_lock);
    free(bs->filename);
    free(bs);
    return r;
}

uint64_t prl_block_size(const struct prl_block *bs)
{
    return bs->size;
}

const char *prl_block_format(const struct prl_block *bs)
{
    return bs->drv->name;
}

const char *prl_block_filename(const struct prl_block *bs)
{
    return bs->filename;
}

unsigned prl_block_caps(const struct prl_block *bs)
{
    return bs->caps;
}

uint32_t prl_block_preferred_size(const struct prl_block *bs)
{
    return bs->preferred_size;
}

/* The checks every request passes before a driver sees it. */
static int check_request(struct prl_block *bs, const char *op, uint64_t length,
                         uint64_t offset, unsigned flags,
                         unsigned allowed_flags, bool write)
{
    uint64_t end;

    if (flags & ~allowed_flags) {
        return prl_error(EINVAL, "%s: unsupported flags 0x%x", op,
                         flags & ~allowed_flags);
    }
    if (write && !(bs->caps & PRL_CAP_WRITE)) {
        return prl_error(EROFS, "%s: '%s' is open read-only", op, bs->filename);
    }
    if (prl_add_overflow(offset, length, &end) || end > bs->size) {
        return prl_error(EINVAL,
                         "%s: range %" PRIu64 "+%" PRIu64
                         " is past the end of '%s' (%" PRIu64 " bytes)",
                         op, offset, length, bs->filename, bs->size);
    }
    if ((offset | length) & (bs->request_alignment - 1)) {
        return prl_error(EINVAL,
                         "%s: range %" PRIu64 "+%" PRIu64
                         " is not aligned to %" PRIu32 " bytes",
                         op, offset, length, bs->request_alignment);
    }
    return 0;
}

int prl_block_pread(struct prl_block *bs, void *buf, uint64_t length,
                    uint64_t offset, unsigned flags)
{
    int r = check_request(bs, "read", length, offset, flags, 0, false);
    if (r < 0 || length == 0) {
        return r;
    }
    return bs->drv->pread(bs, buf, length, offset);
}

int prl_block_pwrite(struct prl_block *bs, const void *buf, uint64_t length,
                     uint64_t offset, unsigned flags)
{
    int r =
        check_request(bs, "write", length, offset, flags, PRL_REQ_FUA, true);
    if (r < 0 || length == 0) {
        return r;
    }
    /* Mark before writing: a bitmap reader never misses a change. */
    prl_block_mark_dirty(bs, offset, length);
    return bs->drv->pwrite(bs, buf, length, offset, flags);
}

/* Zeroing for drivers without a zero op: plain writes of zeroes. */
static int zero_by_writing(struct prl_block *bs, uint64_t length,
                           uint64_t offset, unsigned flags)
{
    size_t chunk = (size_t)PRL_MIN(length, (uint64_t)1 << 20);
    void *buf = prl_calloc(1, chunk);
    int r = 0;

    if (!buf) {
        return -ENOMEM;
    }
    while (length > 0 && r == 0) {
        size_t n = (size_t)PRL_MIN(length, (uint64_t)chunk);
        r = bs->drv->pwrite(bs, buf, n, offset, flags & PRL_REQ_FUA);
        offset += n;
        length -= n;
    }
    free(buf);
    return r;
}

int prl_block_zero(struct prl_block *bs, uint64_t length, uint64_t offset,
                   unsigned flags)
{
    int r =
        check_request(bs, "zero", length, offset, flags,
                      PRL_REQ_FUA | PRL_REQ_NO_UNMAP | PRL_REQ_FAST_ZERO, true);
    if (r < 0 || length == 0) {
        return r;
    }
    prl_block_mark_dirty(bs, offset, length);
    if (bs->drv->zero) {
        r = bs->drv->zero(bs, length, offset, flags);
        /* -ENOTSUP: this handle cannot zero (an NBD server without
         * WRITE_ZEROES); plain writes of zeroes still can, slowly. */
        if (r != -ENOTSUP || (flags & PRL_REQ_FAST_ZERO)) {
            return r;
        }
    } else if (flags & PRL_REQ_FAST_ZERO) {
        return prl_error(ENOTSUP, "zero: '%s' cannot zero fast", bs->filename);
    }
    return zero_by_writing(bs, length, offset, flags);
}

int prl_block_trim(struct prl_block *bs, uint64_t length, uint64_t offset,
                   unsigned flags)
{
    int r = check_request(bs, "trim", length, offset, flags, PRL_REQ_FUA, true);
    if (r < 0 || length == 0) {
        return r;
    }
    prl_block_mark_dirty(bs, offset, length);
    if (!bs->drv->trim) {
        return (flags & PRL_REQ_FUA) ? bs->drv->flush(bs) : 0;
    }
    return bs->drv->trim(bs, length, offset, flags);
}

int prl_block_flush(struct prl_block *bs)
{
    return bs->drv->flush(bs);
}

int prl_block_status(struct prl_block *bs, uint64_t offset, uint64_t length,
                     struct prl_extent *ext)
{
    int r = check_request(bs, "block status", length, offset, 0, 0, false);
    if (r < 0) {
        return r;
    }
    if (length == 0) {
        return prl_error(EINVAL, "block status: empty range");
    }
    memset(ext, 0, sizeof(*ext));
    if (!bs->drv->block_status) {
        ext->length = length;
        ext->flags = PRL_EXT_DATA | PRL_EXT_ALLOCATED;
        ext->depth = 1;
        return 0;
    }
    r = bs->drv->block_status(bs, offset, length, ext);
    if (r < 0) {
        return r;
    }
    if (ext->length == 0 || ext->length > length) {
        return prl_error(EIO,
                         "block status: driver %s returned length %" PRIu64
                         " for a request of %" PRIu64,
                         bs->drv->name, ext->length, length);
    }
    return 0;
}

int prl_block_data_fd(struct prl_block *bs, const struct prl_extent *ext)
{
    if (!bs->drv->data_fd || (ext->flags & (PRL_EXT_DATA | PRL_EXT_OFFSET)) !=
                                 (PRL_EXT_DATA | PRL_EXT_OFFSET)) {
        return -ENOTSUP;
    }
    return bs->drv->data_fd(bs, ext);
}

int prl_block_cache(struct prl_block *bs, uint64_t length, uint64_t offset)
{
    int r = check_request(bs, "cache", length, offset, 0, 0, false);

    if (r < 0 || length == 0) {
        return r;
    }
    if (bs->drv->cache) {
        return bs->drv->cache(bs, length, offset);
    }
    while (length > 0) {
        struct prl_extent ext;
        int fd;

        r = prl_block_status(bs, offset, length, &ext);
        if (r < 0) {
            return r;
        }
        /* Holes read as zeroes without the disk; data no file holds
         * (no driver has such yet) is left to the read. */
        fd = prl_block_data_fd(bs, &ext);
        if (fd >= 0) {
            r = posix_fadvise(fd, (off_t)ext.offset, (off_t)ext.length,
                              POSIX_FADV_WILLNEED);
            if (r != 0) {
                return prl_error(r, "cache: read-ahead of '%s' failed",
                                 bs->filename);
            }
        }
        offset += ext.length;
        length -= ext.length;
    }
    return 0;
}

int prl_block_info(struct prl_block *bs, struct prl_image_info *info)
{
    memset(info, 0, sizeof(*info));
    info->format = bs->drv->name;
    info->filename = bs->filename;
    info->virtual_size = bs->size;
    info->read_only = !(bs->caps & PRL_CAP_WRITE);
    if (bs->drv->info) {
        return bs->drv->info(bs, info);
    }
    return 0;
}

/* Bitmaps follow the disk size; new space starts clean. */
static int resize_bitmaps(struct prl_block *bs)
{
    int r = 0;

    pthread_rwlock_wrlock(&bs->bitmap_lock);
    for (size_t i = 0; i < bs->n_bitmaps && r == 0; i++) {
        struct prl_dirty_bitmap *b = bs->bitmaps[i];
        uint64_t nbits = prl_div_round_up(bs->size, b->granularity);
        uint64_t old_bytes = prl_div_round_up(b->nbits, 8);
        uint64_t bytes = prl_div_round_up(nbits, 8);
        uint8_t *nb = realloc(b->bits, (size_t)PRL_MAX(bytes, 1));
        if (!nb) {
            r = prl_error(ENOMEM, "out of memory resizing bitmaps");
            break;
        }
        if (bytes > old_bytes) {
            memset(nb + old_bytes, 0, (size_t)(bytes - old_bytes));
        }
        /* Clear bits past the new end inside the last byte. */
        for (uint64_t j = nbits; j < PRL_MIN(b->nbits, bytes * 8); j++) {
            nb[j / 8] &= (uint8_t) ~(1u << (j % 8));
        }
        b->bits = nb;
        b->nbits = nbits;
        b->size = bs->size;
        bs->bitmaps_changed = true;
    }
    pthread_rwlock_unlock(&bs->bitmap_lock);
    return r;
}

int prl_block_resize(struct prl_block *bs, uint64_t new_size, bool shrink)
{
    if (!(bs->caps & PRL_CAP_WRITE)) {
        return prl_error(EROFS, "resize: '%s' is open read-only", bs->filename);
    }
    if (new_size == bs->size) {
        return 0;
    }
    if (!bs->drv->resize) {
        return prl_error(ENOTSUP, "resize: format %s cannot be resized",
                         bs->drv->name);
    }
    int r;
    r = bs->drv->resize(bs, new_size, shrink);
    if (r == 0) {
        r = resize_bitmaps(bs);
    }
    return r;
}

int prl_block_check(const char *path, const char *format, unsigned fix,
                    struct prl_check_result *res)
{
    const struct prl_driver *drv;
    int r;

    memset(res, 0, sizeof(*res));
    res->filename = strdup(path);
    if (!res->filename) {
        return prl_error(ENOMEM, "out of memory");
    }
    if (prl_nbd_uri_is_nbd(path)) {
        res->format = prl_driver_nbd.name;
        return prl_error(ENOTSUP,
                         "'%s': check is not supported for nbd (check the "
                         "image where the server reads it)",
                         path);
    }
    if (format) {
        drv = find_driver(format);
        if (!drv) {
            return unknown_format(format);
        }
    } else {
        r = probe(path, &drv);
        if (r < 0) {
            return r;
        }
    }
    res->format = drv->name;
    if (!drv->check) {
        return prl_error(ENOTSUP, "format '%s' does not support checks",
                         drv->name);
    }
    /* Only bundles resolve other files; the rest see the repair bits. */
    if (drv != &prl_driver_bundle) {
        fix &= PRL_CHECK_FIX_ALL;
    }
    return drv->check(path, fix, res);
}

void prl_check_result_free(struct prl_check_result *res)
{
    for (size_t i = 0; i < res->n_findings; i++) {
        free(res->findings[i].message);
        free(res->findings[i].action);
    }
    free(res->findings);
    free(res->filename);
    memset(res, 0, sizeof(*res));
}

int prl_block_create(const char *path, const char *format, uint64_t size,
                     const char *options)
{
    const struct prl_driver *drv = find_driver(format);
    struct prl_opts opts;
    int r;

    if (!drv) {
        return unknown_format(format);
    }
    if (prl_nbd_uri_is_nbd(path)) {
        return prl_error(ENOTSUP,
                         "'%s': cannot create an NBD export; to write into "
                         "an existing one, skip creation (convert -n)",
                         path);
    }
    if (!drv->create) {
        return prl_error(ENOTSUP, "format %s cannot create images", drv->name);
    }
    r = prl_opts_parse(&opts, options);
    if (r < 0) {
        return r;
    }
    r = drv->create(path, size, &opts);
    prl_opts_free(&opts);
    return r;
}
