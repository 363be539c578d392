/* SPDX-License-Identifier: MIT */
/* Fuzz target for the Format Extension: the input is one extension
 * cluster (after a 5-byte prefix choosing the image around it), given to
 * the parser, the bitmap decoder and the rewrite that marks bitmaps
 * inconsistent, then carried by a valid image as its extension and opened
 * read-only and read-write, written, closed and reopened.
 *
 * Input: byte 0 flags (FX_*), bytes 1..4 the disk size in sectors
 * (little-endian, modulo MAX_SECTORS, 0 meaning MAX_SECTORS), then the
 * cluster, cut or zero-padded to the cluster size.  The image: header and
 * BAT, then the data area (cluster index: what it holds) 0: guest cluster
 * 0, all 0xA5; 1: the extension; 2..5: clusters filled with 0xff, 0x0f,
 * 0x00, 0x5a for bitmap L1 entries to point at; 6: the last guest
 * cluster, 0x3C. */
#include "block/parallels-ext.h"
#include "prl/bitmap.h"
#include "prl/block.h"
#include "prl/check.h"
#include "prl/error.h"
#include "prl/log.h"

#include "fuzz-util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FX_KEEP_MAGIC (1u << 0) /* else the right magic is written */
#define FX_KEEP_MD5 (1u << 1)   /* else the right checksum is written */
#define FX_DIRTY (1u << 2)      /* in_use = DIRTY: not closed cleanly */
#define FX_CLUSTER_SHIFT 3      /* bits 3-4: cluster size, see sizes[] */
#define FX_FIX_SIZES (1u << 5)  /* bitmap size fields := disk sectors */

#define PREFIX 5
#define MAX_SECTORS (1u << 17) /* 64 MiB disks: small BATs and bitmaps */
#define N_DATA 7               /* data-area clusters of the image */
#define MAX_STATUS 256         /* dirty-status steps per bitmap */
#define GUEST0 0xA5
#define GUEST_LAST 0x3C

static const uint32_t sizes[4] = {512, 4096, 32256, 65536};
static const uint8_t fills[4] = {0xff, 0x0f, 0x00, 0x5a};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Dropped features and bitmaps are logged; that is expected. */
    prl_log_set_handler(NULL, NULL, PRL_LOG_ERROR);
    fuzz_limit_files();
    return 0;
}

struct image {
    uint8_t *bytes;
    size_t len;
    uint32_t cs;
    bool legacy;
    uint64_t sectors, bat_entries, data_off; /* data_off in bytes */
};

static void put32(uint8_t *p, uint32_t v)
{
    parallels_put_le32(p, v);
}

/* Header, BAT and data area from parallels.rst, byte by byte. */
static bool build_image(struct image *im, const uint8_t *cluster,
                        unsigned flags)
{
    uint32_t cs = im->cs;
    uint64_t bat_end, host;

    im->bat_entries = (im->sectors + cs / 512 - 1) / (cs / 512);
    bat_end = 64 + 4 * im->bat_entries;
    im->data_off = (bat_end + cs - 1) / cs * cs;
    im->len = (size_t)(im->data_off + N_DATA * (uint64_t)cs);
    im->bytes = calloc(1, im->len);
    if (!im->bytes) {
        return false;
    }
    uint8_t *h = im->bytes;
    memcpy(h, im->legacy ? "WithoutFreeSpace" : "WithouFreSpacExt", 16);
    put32(h + 16, 2);
    put32(h + 20, 16);
    put32(h + 24, (uint32_t)(im->sectors / (16 * (cs / 512))));
    put32(h + 28, cs / 512);
    put32(h + 32, (uint32_t)im->bat_entries);
    parallels_put_le64(h + 36, im->sectors);
    put32(h + 44, (flags & FX_DIRTY) ? 0x746F6E59u : 0x312e3276u);
    put32(h + 48, (uint32_t)(im->data_off / 512));
    put32(h + 52, 0);
    parallels_put_le64(h + 56, (im->data_off + cs) / 512);
    /* Guest cluster 0 at index 0, the last one at index 6. */
    host = im->data_off;
    put32(h + 64, (uint32_t)(host / (im->legacy ? 512 : cs)));
    memset(im->bytes + host, GUEST0, cs);
    if (im->bat_entries > 1) {
        host = im->data_off + 6 * (uint64_t)cs;
        put32(h + 64 + 4 * (im->bat_entries - 1),
              (uint32_t)(host / (im->legacy ? 512 : cs)));
        memset(im->bytes + host, GUEST_LAST, cs);
    }
    memcpy(im->bytes + im->data_off + cs, cluster, cs);
    for (int i = 0; i < 4; i++) {
        memset(im->bytes + im->data_off + (2 + i) * (uint64_t)cs, fills[i], cs);
    }
    return true;
}

static int image_fd(const struct image *im, char *path, size_t len)
{
    return fuzz_memfd("prl-fuzz-ext", im->bytes, im->len, path, len);
}

static bool fd_equals(int fd, const uint8_t *want, size_t len)
{
    uint8_t buf[4096];
    size_t done = 0;

    while (done < len) {
        size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);
        if (pread(fd, buf, n, (off_t)done) != (ssize_t)n ||
            memcmp(buf, want + done, n) != 0) {
            return false;
        }
        done += n;
    }
    return pread(fd, buf, 1, (off_t)len) == 0;
}

/* The parser's promises, and the decoder's on each bitmap feature. */
static int check_parse(const uint8_t *c, size_t cs, struct parallels_ext *ext)
{
    char err[256] = "";
    int r = parallels_ext_parse(c, cs, ext, err, sizeof(err));

    if (r < 0) {
        CHECK(r == -EINVAL || r == -ENOMEM);
        CHECK(r != -EINVAL || err[0] != '\0');
        CHECK(ext->features == NULL && ext->n_features == 0);
        return r;
    }
    size_t prev_end = PARALLELS_EXT_HEADER;
    for (size_t i = 0; i < ext->n_features; i++) {
        const struct parallels_feature *f = &ext->features[i];
        CHECK(f->magic != PARALLELS_FEATURE_END);
        CHECK(f->data_pos % 8 == 0);
        CHECK(f->data_pos >= prev_end + PARALLELS_FEATURE_HEADER);
        CHECK(f->data_size <= cs - f->data_pos);
        CHECK(parallels_get_le64(c + f->data_pos - 24) == f->magic);
        prev_end = f->data_pos + f->data_size;
        if (f->magic == PARALLELS_FEATURE_DIRTY_BITMAP) {
            struct parallels_bitmap_info b;
            err[0] = '\0';
            if (parallels_bitmap_decode(c + f->data_pos, f->data_size, &b, err,
                                        sizeof(err)) == 0) {
                CHECK(b.l1 == c + f->data_pos + PARALLELS_BITMAP_FIXED);
                CHECK(PARALLELS_BITMAP_FIXED + (uint64_t)b.l1_size * 8 <=
                      f->data_size);
            } else {
                CHECK(err[0] != '\0');
            }
        }
    }
    /* The End record follows the last feature, inside the cluster. */
    prev_end = (prev_end + 7) & ~(size_t)7;
    CHECK(prev_end + PARALLELS_FEATURE_HEADER <= cs);
    return 0;
}

static bool same_feature(const uint8_t *a, const struct parallels_feature *fa,
                         const uint8_t *b, const struct parallels_feature *fb)
{
    return fa->magic == fb->magic && fa->flags == fb->flags &&
           fa->data_size == fb->data_size &&
           memcmp(a + fa->data_pos, b + fb->data_pos, fa->data_size) == 0;
}

/* The rewrite for an unclean image: every feature but prl's attributes
 * kept as it was, in order, and one attributes feature (TRANSIT) naming
 * every bitmap inconsistent, with the flags it had before. */
static void check_mark_inconsistent(const uint8_t *c, size_t cs,
                                    const struct parallels_ext *in)
{
    uint8_t *out = malloc(cs);
    struct parallels_ext ox;
    size_t j = 0, n_attrs = 0, n_bitmaps = 0;
    const struct parallels_feature *attrs = NULL;
    int r;

    CHECK(out != NULL);
    r = parallels_ext_mark_inconsistent(c, out, cs);
    if (r < 0) {
        CHECK(r == -ENOSPC || r == -ENOMEM || r == -EIO);
        free(out);
        return;
    }
    CHECK(check_parse(out, cs, &ox) == 0);
    CHECK(ox.magic_ok && ox.checksum_ok);
    for (size_t i = 0; i < in->n_features; i++) {
        const struct parallels_feature *f = &in->features[i];
        if (f->magic == PARALLELS_FEATURE_PRL_ATTRS) {
            continue;
        }
        n_bitmaps += f->magic == PARALLELS_FEATURE_DIRTY_BITMAP;
        while (j < ox.n_features &&
               ox.features[j].magic == PARALLELS_FEATURE_PRL_ATTRS) {
            j++;
        }
        CHECK(j < ox.n_features && same_feature(c, f, out, &ox.features[j]));
        j++;
    }
    for (size_t i = 0; i < ox.n_features; i++) {
        if (ox.features[i].magic == PARALLELS_FEATURE_PRL_ATTRS) {
            attrs = &ox.features[i];
            n_attrs++;
        }
    }
    CHECK(n_attrs == 1 && attrs->flags == PARALLELS_FEATURE_TRANSIT);
    CHECK(attrs->data_size >= 8);
    uint32_t count = parallels_get_le32(out + attrs->data_pos);
    CHECK(count == n_bitmaps);
    CHECK(8 + (uint64_t)count * PARALLELS_ATTR_ENTRY <= attrs->data_size);
    /* Every bitmap with an id is named inconsistent. */
    for (size_t i = 0; i < in->n_features; i++) {
        const struct parallels_feature *f = &in->features[i];
        bool found = false;
        if (f->magic != PARALLELS_FEATURE_DIRTY_BITMAP ||
            f->data_size < PARALLELS_BITMAP_FIXED) {
            continue;
        }
        for (uint32_t k = 0; k < count; k++) {
            const uint8_t *e =
                out + attrs->data_pos + 8 + (size_t)k * PARALLELS_ATTR_ENTRY;
            if (memcmp(e, c + f->data_pos + 8, 16) == 0 &&
                (parallels_get_le32(e + 16) & PARALLELS_ATTR_INCONSISTENT)) {
                found = true;
            }
        }
        CHECK(found);
    }
    parallels_ext_free(&ox);
    free(out);
}

/* What a read-write open that succeeded must leave after a write and a
 * clean close. */
struct rw_expect {
    struct prl_bitmap_info *before; /* bitmaps at the read-write open */
    size_t n_before;
    char added[PRL_BITMAP_NAME_SIZE];
    bool have_added;
    bool dropped; /* close said a bitmap did not fit */
};

static void walk_status(struct prl_block *bs, const char *name)
{
    uint64_t size = prl_block_size(bs), off = 0;

    for (int k = 0; off < size && k < MAX_STATUS; k++) {
        bool dirty;
        uint64_t pnum = 0;
        CHECK(prl_bitmap_status(bs, name, off, size - off, &dirty, &pnum) == 0);
        CHECK(pnum > 0 && pnum <= size - off);
        off += pnum;
    }
}

static void check_guest(struct prl_block *bs, const struct image *im, int first)
{
    uint8_t b[2];

    CHECK(prl_block_pread(bs, b, 2, 0, 0) == 0);
    CHECK(b[0] == first && b[1] == GUEST0);
    if (im->bat_entries > 1) {
        uint64_t off = (im->bat_entries - 1) * (uint64_t)im->cs;
        CHECK(prl_block_pread(bs, b, 1, off, 0) == 0 && b[0] == GUEST_LAST);
    }
}

/* The extension of the closed image: TRANSIT features of the input kept
 * byte for byte and in order, features with neither flag gone. */
static void check_rewritten(int fd, const struct image *im, const uint8_t *c,
                            const struct parallels_ext *in)
{
    uint8_t hdr[64];
    uint8_t *nc = malloc(im->cs);
    struct parallels_ext nx;
    uint64_t ext_off;
    size_t j = 0;

    CHECK(nc != NULL);
    CHECK(pread(fd, hdr, 64, 0) == 64);
    CHECK(parallels_get_le32(hdr + 44) == 0x312e3276u);
    ext_off = parallels_get_le64(hdr + 56) * 512;
    if (ext_off == 0) {
        /* Nothing to keep: no bitmap and no TRANSIT feature. */
        for (size_t i = 0; i < in->n_features; i++) {
            CHECK(!(in->features[i].flags & PARALLELS_FEATURE_TRANSIT) ||
                  in->features[i].magic == PARALLELS_FEATURE_PRL_ATTRS ||
                  in->features[i].magic == PARALLELS_FEATURE_DIRTY_BITMAP);
        }
        free(nc);
        return;
    }
    CHECK(pread(fd, nc, im->cs, (off_t)ext_off) == (ssize_t)im->cs);
    CHECK(check_parse(nc, im->cs, &nx) == 0);
    CHECK(nx.magic_ok && nx.checksum_ok);
    for (size_t i = 0; i < in->n_features; i++) {
        const struct parallels_feature *f = &in->features[i];
        if (f->magic == PARALLELS_FEATURE_DIRTY_BITMAP ||
            f->magic == PARALLELS_FEATURE_PRL_ATTRS) {
            continue;
        }
        if (!(f->flags &
              (PARALLELS_FEATURE_TRANSIT | PARALLELS_FEATURE_NECESSARY))) {
            continue; /* dropped, checked below */
        }
        while (j < nx.n_features && !same_feature(c, f, nc, &nx.features[j])) {
            j++;
        }
        CHECK(j < nx.n_features);
        j++;
    }
    for (size_t i = 0; i < nx.n_features; i++) {
        const struct parallels_feature *f = &nx.features[i];
        CHECK(f->magic == PARALLELS_FEATURE_DIRTY_BITMAP ||
              f->magic == PARALLELS_FEATURE_PRL_ATTRS ||
              (f->flags & PARALLELS_FEATURE_TRANSIT));
    }
    parallels_ext_free(&nx);
    free(nc);
}

static const struct prl_bitmap_info *find_info(const struct prl_bitmap_info *v,
                                               size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].name, name) == 0) {
            return &v[i];
        }
    }
    return NULL;
}

static void exercise_rw(const struct image *im, const uint8_t *c,
                        const struct parallels_ext *in, bool ext_ok,
                        bool necessary_unknown, unsigned flags)
{
    char path[64];
    int fd = image_fd(im, path, sizeof(path));
    struct prl_block *bs = NULL;
    struct rw_expect ex = {0};
    struct prl_bitmap_info *after = NULL;
    size_t n_after = 0;
    int r;

    r = prl_block_open(path, "parallels", PRL_OPEN_RDWR, &bs);
    if (r < 0) {
        CHECK(bs == NULL && prl_error_message() != NULL);
        if (!(flags & FX_DIRTY)) {
            /* Refused: the file is as it was. */
            CHECK(fd_equals(fd, im->bytes, im->len));
        }
        close(fd);
        return;
    }
    /* A clean image opens read-write only with a sound extension and
     * nothing NECESSARY that prl does not know. */
    CHECK((flags & FX_DIRTY) || (ext_ok && !necessary_unknown));
    CHECK(prl_bitmap_list(bs, &ex.before, &ex.n_before) == 0);
    CHECK(prl_block_pwrite(bs, "\x77", 1, 0, 0) == 0);
    ex.have_added = prl_bitmap_add(bs, "auto", 0, ex.added) == 0;
    CHECK(prl_block_pwrite(bs, "\x77", 1, 0, 0) == 0);
    r = prl_block_close(bs);
    CHECK(r == 0 || r == -ENOSPC);
    ex.dropped = r == -ENOSPC;

    /* Reopen: clean, same bitmaps, the write in every enabled consistent
     * one, the guest data intact. */
    r = prl_block_open(path, "parallels", 0, &bs);
    if (r < 0) {
        fprintf(stderr, "reopen after a clean close: %s\n",
                prl_error_message());
    }
    CHECK(r == 0);
    check_guest(bs, im, 0x77);
    CHECK(prl_bitmap_list(bs, &after, &n_after) == 0);
    for (size_t i = 0; i < ex.n_before; i++) {
        const struct prl_bitmap_info *b = &ex.before[i];
        const struct prl_bitmap_info *a = find_info(after, n_after, b->name);
        if (!a) {
            CHECK(ex.dropped);
            continue;
        }
        CHECK(a->granularity == b->granularity);
        CHECK(a->enabled == b->enabled && a->consistent == b->consistent);
        if (a->consistent) {
            bool dirty = false;
            uint64_t pnum;
            CHECK(prl_bitmap_status(bs, a->name, 0, 1, &dirty, &pnum) == 0);
            CHECK(dirty == a->enabled || (b->dirty_bytes && dirty));
            walk_status(bs, a->name);
        }
    }
    if (ex.have_added) {
        const struct prl_bitmap_info *a = find_info(after, n_after, ex.added);
        CHECK(a != NULL || ex.dropped);
        if (a) {
            bool dirty = false;
            uint64_t pnum;
            CHECK(a->enabled && a->consistent);
            CHECK(prl_bitmap_status(bs, a->name, 0, 1, &dirty, &pnum) == 0 &&
                  dirty);
        }
    }
    CHECK(n_after <= ex.n_before + ex.have_added);
    prl_block_close(bs);
    if (!(flags & FX_DIRTY)) {
        /* (The repair of an unclean image may drop a bad extension.) */
        check_rewritten(fd, im, c, in);
    }

    /* What prl wrote checks without corruption. */
    struct prl_check_result res;
    memset(&res, 0, sizeof(res));
    CHECK(prl_block_check(path, "parallels", 0, &res) == 0);
    if (res.corruptions) {
        for (size_t i = 0; i < res.n_findings; i++) {
            fprintf(stderr, "finding: %s\n", res.findings[i].message);
        }
    }
    CHECK(res.corruptions == 0);
    prl_check_result_free(&res);
    free(ex.before);
    free(after);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct image im = {0};
    struct parallels_ext ext;
    struct prl_block *bs = NULL;
    uint8_t *c;
    unsigned flags;
    char path[64];
    int fd, pr;

    if (size < PREFIX) {
        return 0;
    }
    flags = data[0];
    im.cs = sizes[(flags >> FX_CLUSTER_SHIFT) & 3];
    im.legacy = im.cs % 4096 != 0;
    im.sectors = parallels_get_le32(data + 1) % MAX_SECTORS;
    im.sectors = im.sectors ? im.sectors : MAX_SECTORS;
    c = calloc(1, im.cs);
    CHECK(c != NULL);
    memcpy(c, data + PREFIX, size - PREFIX < im.cs ? size - PREFIX : im.cs);
    if (flags & FX_FIX_SIZES) {
        struct parallels_ext e0;
        char err[256];
        if (parallels_ext_parse(c, im.cs, &e0, err, sizeof(err)) == 0) {
            for (size_t i = 0; i < e0.n_features; i++) {
                if (e0.features[i].magic == PARALLELS_FEATURE_DIRTY_BITMAP &&
                    e0.features[i].data_size >= 8) {
                    parallels_put_le64(c + e0.features[i].data_pos, im.sectors);
                }
            }
            parallels_ext_free(&e0);
        }
    }
    if (!(flags & FX_KEEP_MAGIC)) {
        parallels_put_le64(c, PARALLELS_EXT_MAGIC);
    }
    if (!(flags & FX_KEEP_MD5)) {
        CHECK(parallels_ext_checksum(c, im.cs, c + 8) == 0);
    }

    /* The codec alone. */
    pr = check_parse(c, im.cs, &ext);
    bool ext_ok = pr == 0 && ext.magic_ok && ext.checksum_ok;
    bool necessary_unknown = false;
    if (pr == 0) {
        CHECK(ext.magic_ok == (parallels_get_le64(c) == PARALLELS_EXT_MAGIC));
        check_mark_inconsistent(c, im.cs, &ext);
        for (size_t i = 0; i < ext.n_features; i++) {
            const struct parallels_feature *f = &ext.features[i];
            necessary_unknown |= (f->flags & PARALLELS_FEATURE_NECESSARY) &&
                                 f->magic != PARALLELS_FEATURE_PRL_ATTRS &&
                                 f->magic != PARALLELS_FEATURE_DIRTY_BITMAP;
        }
    }

    /* The image around it: a read-only open never fails because of the
     * extension, and reads the guest data. */
    if (build_image(&im, c, flags)) {
        fd = image_fd(&im, path, sizeof(path));
        int r = prl_block_open(path, "parallels", 0, &bs);
        if (r < 0) {
            fprintf(stderr, "read-only open: %s\n", prl_error_message());
        }
        CHECK(r == 0);
        check_guest(bs, &im, GUEST0);
        struct prl_bitmap_info *v = NULL;
        size_t n = 0;
        CHECK(prl_bitmap_list(bs, &v, &n) == 0);
        for (size_t i = 0; i < n; i++) {
            /* A name finds one bitmap. */
            CHECK(find_info(v, i, v[i].name) == NULL);
            if (v[i].consistent) {
                walk_status(bs, v[i].name);
            }
            /* Not trusted after an unclean close. */
            CHECK(!(flags & FX_DIRTY) || !v[i].consistent);
        }
        if (!ext_ok) {
            CHECK(n == 0);
        }
        free(v);
        prl_block_close(bs);
        CHECK(fd_equals(fd, im.bytes, im.len));
        close(fd);
        exercise_rw(&im, c, pr == 0 ? &ext : &(struct parallels_ext){0}, ext_ok,
                    necessary_unknown, flags);
    }
    if (pr == 0) {
        parallels_ext_free(&ext);
    }
    free(im.bytes);
    free(c);
    prl_error_clear();
    return 0;
}
