/* SPDX-License-Identifier: MIT */
/* Unit tests of the Parallels driver through the public block API on temp
 * files: create, I/O, zero/trim, open-time validation, the Empty flag,
 * in_use, resize, cluster reuse and concurrent writers. */
#include "testutil.h"

#include "prl/block.h"
#include "prl/error.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KiB 1024u
#define MiB (1u << 20)
#define CLEAN 0x312e3276u
#define DIRTY 0x746F6E59u

/* Header offsets from parallels.rst. */
#define OFF_TRACKS 28
#define OFF_BAT_ENTRIES 32
#define OFF_NB_SECTORS 36
#define OFF_IN_USE 44
#define OFF_DATA_OFF 48
#define OFF_FLAGS 52

/* An image shape every I/O test runs on. */
struct cfg {
    bool ext;
    uint32_t tracks;
    bool data_off_zero; /* legacy, built by hand with data_off = 0 */
};

static const struct cfg cfg_ext64k = {true, 128, false};
static const struct cfg cfg_ext1m = {true, 2048, false};
static const struct cfg cfg_legacy63 = {false, 63, true};
static const struct cfg cfg_legacy4k = {false, 8, false};
static const struct cfg cfg_ext4k = {true, 8, false};

static uint64_t cfg_cs(const struct cfg *c)
{
    return (uint64_t)c->tracks * 512;
}

static void make_image(const struct cfg *c, const char *path, uint64_t size)
{
    char opts[128];

    if (c->data_off_zero) {
        struct tu_par p;
        tu_par_init(&p, false, c->tracks, size);
        p.data_off = 0;
        tu_par_write(path, &p, NULL, 0, 0);
        return;
    }
    snprintf(opts, sizeof(opts), "cluster_size=%llu,subformat=%s",
             (unsigned long long)cfg_cs(c), c->ext ? "ext" : "legacy");
    tu_create(path, "parallels", size, opts);
}

/* Host byte offset that the file's BAT gives guest cluster |c|, 0 when
 * unallocated. */
static uint64_t file_host(const char *path, uint64_t c)
{
    uint32_t e = tu_file_le32(path, 64 + 4 * c);
    uint8_t magic[16];

    tu_read_at(path, magic, 16, 0);
    if (memcmp(magic, "WithouFreSpacExt", 16) == 0) {
        return (uint64_t)e * tu_file_le32(path, OFF_TRACKS) * 512;
    }
    return (uint64_t)e * 512;
}

/* Effective data offset of the file, in bytes. */
static uint64_t file_data_off(const char *path)
{
    uint32_t d = tu_file_le32(path, OFF_DATA_OFF);
    uint64_t bat_end = 64 + 4ull * tu_file_le32(path, OFF_BAT_ENTRIES);

    return d ? (uint64_t)d * 512 : (bat_end + 511) / 512 * 512;
}

static uint8_t *xmalloc(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);

    assert_non_null(p);
    return p;
}

/* The whole guest image equals |want|. */
static void expect_contents(struct prl_block *bs, const uint8_t *want,
                            uint64_t size)
{
    uint8_t *got = xmalloc(size);

    assert_int_equal(prl_block_size(bs), size);
    assert_int_equal(prl_block_pread(bs, got, size, 0, 0), 0);
    for (uint64_t i = 0; i < size; i++) {
        if (got[i] != want[i]) {
            fail_msg("guest byte %llu is 0x%02x, want 0x%02x",
                     (unsigned long long)i, got[i], want[i]);
        }
    }
    free(got);
}

static void test_create_default(void **state)
{
    const char *p = tu_path("default.hdd");
    uint8_t h[64];
    uint8_t *all;
    size_t len;

    (void)state;
    tu_create(p, "parallels", 10 * MiB + 512, NULL);
    tu_read_at(p, h, 64, 0);
    assert_memory_equal(h, "WithouFreSpacExt", 16);
    assert_int_equal(tu_get_le32(h, 16), 2);
    assert_int_equal(tu_get_le32(h, 20), 16);
    assert_int_equal(tu_get_le32(h, 24), (10 * 2048 + 1) / 512);
    assert_int_equal(tu_get_le32(h, OFF_TRACKS), 2048);
    assert_int_equal(tu_get_le32(h, OFF_BAT_ENTRIES), 11);
    assert_int_equal(tu_get_le64(h, OFF_NB_SECTORS), 10 * 2048 + 1);
    assert_int_equal(tu_get_le32(h, OFF_IN_USE), CLEAN);
    assert_int_equal(tu_get_le32(h, OFF_DATA_OFF), 2048);
    assert_int_equal(tu_get_le32(h, OFF_FLAGS), 0);
    assert_int_equal(tu_get_le64(h, 56), 0);
    /* Nothing allocated: the file ends at the data area, BAT all zero. */
    all = tu_read_file(p, &len);
    assert_int_equal(len, MiB);
    assert_true(tu_all(all + 64, len - 64, 0));
    free(all);

    /* Sizes round up to whole sectors. */
    tu_create(p, "parallels", 1000, NULL);
    assert_int_equal(tu_file_le32(p, OFF_NB_SECTORS), 2);
    struct prl_block *bs = tu_open(p, NULL, 0);
    assert_int_equal(prl_block_size(bs), 1024);
    tu_close(bs);
}

static void test_create_options(void **state)
{
    const char *p = tu_path("opts.hdd");
    uint8_t magic[16];
    struct prl_block *bs;
    struct prl_image_info info;

    (void)state;
    tu_create(p, "parallels", 3 * MiB, "cluster_size=32256,subformat=legacy");
    tu_read_at(p, magic, 16, 0);
    assert_memory_equal(magic, "WithoutFreeSpace", 16);
    assert_int_equal(tu_file_le32(p, OFF_TRACKS), 63);
    assert_int_equal(tu_file_le32(p, OFF_BAT_ENTRIES), 98);
    bs = tu_open(p, NULL, 0);
    assert_int_equal(prl_block_info(bs, &info), 0);
    assert_string_equal(info.format, "parallels");
    assert_true(info.has_parallels);
    assert_string_equal(info.subformat, "WithoutFreeSpace");
    assert_int_equal(info.cluster_size, 32256);
    assert_int_equal(info.tracks, 63);
    assert_int_equal(info.bat_entries, 98);
    assert_int_equal(info.virtual_size, 3 * MiB);
    assert_int_equal(info.in_use, CLEAN);
    assert_false(info.dirty);
    assert_int_equal(info.allocated_clusters, 0);
    assert_int_equal(info.data_offset, file_data_off(p));
    assert_int_equal(info.file_size, tu_file_size(p));
    assert_int_equal(prl_block_preferred_size(bs), 32256);
    tu_close(bs);

    tu_create(p, "parallels", 3 * MiB,
              "subformat=WithoutFreeSpace,cluster_size=256K");
    tu_read_at(p, magic, 16, 0);
    assert_memory_equal(magic, "WithoutFreeSpace", 16);
    assert_int_equal(tu_file_le32(p, OFF_TRACKS), 512);
    tu_create(p, "parallels", 3 * MiB, "subformat=WithouFreSpacExt");
    tu_read_at(p, magic, 16, 0);
    assert_memory_equal(magic, "WithouFreSpacExt", 16);
    tu_create(p, "parallels", 3 * MiB, "subformat=ext,cluster_size=512");
    assert_int_equal(tu_file_le32(p, OFF_TRACKS), 1);
    /* Ext data offsets are cluster aligned. */
    tu_create(p, "parallels", 3 * MiB, "cluster_size=4k");
    assert_int_equal(file_data_off(p) % 4096, 0);
    assert_true(file_data_off(p) >= 64 + 4 * 768);
}

static void check_prealloc(const char *mode, bool ext)
{
    const char *p = tu_path("prealloc.hdd");
    char opts[128];
    uint64_t cs = 64 * KiB, n = 5, doff;
    struct prl_block *bs;
    struct stat st;
    uint8_t *buf;

    snprintf(opts, sizeof(opts),
             "cluster_size=64k,preallocation=%s,"
             "subformat=%s",
             mode, ext ? "ext" : "legacy");
    tu_create(p, "parallels", n * cs - 512, opts);
    doff = file_data_off(p);
    assert_int_equal(tu_file_size(p), doff + n * cs);
    for (uint64_t c = 0; c < n; c++) {
        assert_int_equal(file_host(p, c), doff + c * cs);
    }
    if (strcmp(mode, "metadata") != 0) {
        assert_int_equal(stat(p, &st), 0);
        assert_true((uint64_t)st.st_blocks * 512 >= n * cs);
    }
    bs = tu_open(p, NULL, 0);
    buf = xmalloc(n * cs - 512);
    assert_int_equal(prl_block_pread(bs, buf, n * cs - 512, 0, 0), 0);
    assert_true(tu_all(buf, n * cs - 512, 0));
    free(buf);
    tu_close(bs);
}

static void test_create_prealloc(void **state)
{
    const char *p = tu_path("prealloc-off.hdd");

    (void)state;
    check_prealloc("metadata", true);
    check_prealloc("falloc", true);
    check_prealloc("full", true);
    check_prealloc("metadata", false);
    check_prealloc("full", false);
    tu_create(p, "parallels", 5 * MiB, "preallocation=off");
    assert_int_equal(tu_file_size(p), MiB);
    assert_int_equal(file_host(p, 0), 0);
}

static void test_create_errors(void **state)
{
    const char *p = tu_path("never.hdd");

    (void)state;
    tu_expect_err(prl_block_create(p, "parallels", MiB, "cluster_size=1000"),
                  -EINVAL, "cluster_size");
    tu_expect_err(prl_block_create(p, "parallels", MiB, "cluster_size=0"),
                  -EINVAL, "cluster_size");
    tu_expect_err(prl_block_create(p, "parallels", MiB, "cluster_size=2G"),
                  -EINVAL, "cluster_size");
    tu_expect_err(prl_block_create(p, "parallels", MiB, "cluster_size=big"),
                  -EINVAL, "cluster_size");
    tu_expect_err(prl_block_create(p, "parallels", MiB, "subformat=new"),
                  -EINVAL, "subformat");
    tu_expect_err(prl_block_create(p, "parallels", MiB, "preallocation=lots"),
                  -EINVAL, "preallocation");
    tu_expect_err(prl_block_create(p, "parallels", MiB, "compat=1.1"), -EINVAL,
                  "compat");
    /* Legacy nb_sectors is 32 bits. */
    tu_expect_err(
        prl_block_create(p, "parallels", 2ull << 40, "subformat=legacy"),
        -EFBIG, NULL);
    /* 2^32 clusters of 512 bytes do not fit a BAT. */
    tu_expect_err(
        prl_block_create(p, "parallels", 2ull << 40, "cluster_size=512"),
        -EFBIG, NULL);
    assert_false(tu_exists(p));
}

/* Write, read and status on an image of shape |c|, 7 clusters and a
 * half. */
static void test_io(void **state)
{
    const struct cfg *c = *state;
    const char *p = tu_path("io.hdd");
    uint64_t cs = cfg_cs(c), size = 7 * cs + cs / 2 / 512 * 512;
    uint8_t *ref = calloc(1, size), *w = xmalloc(3 * cs);
    uint64_t seed = cs, doff;
    struct prl_block *bs;
    struct prl_extent e;

    assert_non_null(ref);
    make_image(c, p, size);
    doff = file_data_off(p);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_string_equal(prl_block_format(bs), "parallels");
    assert_int_equal(prl_block_size(bs), size);
    assert_true(prl_block_caps(bs) & PRL_CAP_WRITE);

    /* Unaligned, across a cluster boundary. */
    tu_rand_fill(&seed, w, 3 * cs);
    uint64_t off = cs - 100, len = cs + 50;
    assert_int_equal(prl_block_pwrite(bs, w, len, off, 0), 0);
    memcpy(ref + off, w, len);
    expect_contents(bs, ref, size);

    /* One byte into a fresh cluster; the rest of it reads zero. */
    assert_int_equal(prl_block_pwrite(bs, w + 7, 1, 5 * cs + 3, 0), 0);
    ref[5 * cs + 3] = w[7];
    /* The partial last cluster, to the very end. */
    assert_int_equal(prl_block_pwrite(bs, w, 1000, size - 1000, PRL_REQ_FUA),
                     0);
    memcpy(ref + size - 1000, w, 1000);
    expect_contents(bs, ref, size);

    /* Four clusters allocated, in order of first write, and the BAT in the
     * file points at the data. */
    uint64_t seen[4] = {file_host(p, 0), file_host(p, 1), file_host(p, 5),
                        file_host(p, 7)};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(seen[i], doff + (uint64_t)i * cs);
    }
    assert_int_equal(file_host(p, 2), 0);
    assert_int_equal(file_host(p, 6), 0);
    uint8_t got[300];
    tu_read_at(p, got, 300, seen[1]);
    assert_memory_equal(got, ref + cs, 300);

    /* Status: data with its host offset, holes as zero at depth 0. */
    assert_int_equal(prl_block_status(bs, cs + 10, 5 * cs, &e), 0);
    assert_int_equal(e.length, cs - 10);
    assert_int_equal(e.flags & (PRL_EXT_DATA | PRL_EXT_ALLOCATED |
                                PRL_EXT_OFFSET | PRL_EXT_ZERO),
                     PRL_EXT_DATA | PRL_EXT_ALLOCATED | PRL_EXT_OFFSET);
    assert_int_equal(e.depth, 1);
    assert_int_equal(e.offset, seen[1] + 10);
    assert_int_equal(prl_block_status(bs, 2 * cs + 1, 4 * cs, &e), 0);
    assert_int_equal(e.length, 3 * cs - 1);
    assert_true(e.flags & PRL_EXT_ZERO);
    assert_false(e.flags & (PRL_EXT_DATA | PRL_EXT_ALLOCATED));
    assert_int_equal(e.depth, 0);
    /* Clusters 0 and 1 are contiguous in the file: one extent. */
    assert_int_equal(prl_block_status(bs, 0, size, &e), 0);
    assert_int_equal(e.length, 2 * cs);
    assert_int_equal(prl_block_status(bs, 7 * cs, size - 7 * cs, &e), 0);
    assert_int_equal(e.length, size - 7 * cs);
    assert_int_equal(e.offset, seen[3]);
    tu_close(bs);

    /* Everything is still there after close and a read-only open, and
     * the image is marked clean. */
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), CLEAN);
    bs = tu_open(p, NULL, 0);
    expect_contents(bs, ref, size);
    tu_close(bs);
    free(ref);
    free(w);
}

static void test_zero_trim(void **state)
{
    const struct cfg *c = *state;
    const char *p = tu_path("zero.hdd");
    uint64_t cs = cfg_cs(c), size = 8 * cs;
    uint8_t *ref = xmalloc(size);
    uint64_t seed = 99, h2, h3;
    struct prl_block *bs;
    struct prl_extent e;
    int r;

    make_image(c, p, size);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    tu_rand_fill(&seed, ref, size);
    memset(ref + 6 * cs, 0, 2 * cs); /* clusters 6, 7 never written */
    assert_int_equal(prl_block_pwrite(bs, ref, 6 * cs, 0, 0), 0);
    h2 = file_host(p, 2);
    h3 = file_host(p, 3);

    /* Whole-cluster zero frees the cluster. */
    assert_int_equal(prl_block_zero(bs, cs, 2 * cs, 0), 0);
    memset(ref + 2 * cs, 0, cs);
    assert_int_equal(file_host(p, 2), 0);
    assert_int_equal(prl_block_status(bs, 2 * cs, cs, &e), 0);
    assert_true(e.flags & PRL_EXT_ZERO);
    assert_false(e.flags & PRL_EXT_DATA);

    /* NO_UNMAP keeps it allocated, reading zero. */
    assert_int_equal(prl_block_zero(bs, cs, 3 * cs, PRL_REQ_NO_UNMAP), 0);
    memset(ref + 3 * cs, 0, cs);
    assert_int_equal(file_host(p, 3), h3);
    assert_int_equal(prl_block_status(bs, 3 * cs, cs, &e), 0);
    assert_true(e.flags & PRL_EXT_ALLOCATED);

    /* A partial zero across a boundary keeps both clusters. */
    assert_int_equal(prl_block_zero(bs, 1000, cs - 500, PRL_REQ_FUA), 0);
    memset(ref + cs - 500, 0, 1000);
    assert_true(file_host(p, 0) != 0);
    assert_true(file_host(p, 1) != 0);
    expect_contents(bs, ref, size);

    /* Zeroing holes allocates nothing. */
    assert_int_equal(prl_block_zero(bs, 2 * cs, 6 * cs, 0), 0);
    assert_int_equal(file_host(p, 6), 0);
    assert_int_equal(file_host(p, 7), 0);

    /* Trim: whole clusters freed, partial ones read zero too. */
    assert_int_equal(prl_block_trim(bs, cs + 512, 4 * cs - 256, 0), 0);
    memset(ref + 4 * cs - 256, 0, cs + 512);
    assert_int_equal(file_host(p, 4), 0);
    assert_true(file_host(p, 3) != 0);
    assert_true(file_host(p, 5) != 0);
    expect_contents(bs, ref, size);

    /* FAST_ZERO either zeroes fast or refuses without touching data. */
    r = prl_block_zero(bs, 100, 5 * cs + 7, PRL_REQ_FAST_ZERO);
    assert_true(r == 0 || r == -ENOTSUP);
    if (r == 0) {
        memset(ref + 5 * cs + 7, 0, 100);
    }
    expect_contents(bs, ref, size);
    tu_close(bs);

    bs = tu_open(p, NULL, 0);
    expect_contents(bs, ref, size);
    tu_close(bs);
    (void)h2;
    free(ref);
}

/* A freed cluster is reused before the file grows, and the parts of it a
 * new write does not cover read as zero, not as the old data. */
static void test_trim_reuse(void **state)
{
    const struct cfg *c = *state;
    const char *p = tu_path("reuse.hdd");
    uint64_t cs = cfg_cs(c), size = 8 * cs, h1, fsize;
    uint8_t *buf = xmalloc(size), *ref = calloc(1, size);
    struct prl_block *bs;
    struct prl_extent e;

    assert_non_null(ref);
    make_image(c, p, size);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    memset(ref, 0xa5, 4 * cs);
    assert_int_equal(prl_block_pwrite(bs, ref, 4 * cs, 0, 0), 0);
    h1 = file_host(p, 1);
    fsize = tu_file_size(p);
    assert_int_equal(prl_block_trim(bs, cs, cs, 0), 0);
    memset(ref + cs, 0, cs);
    assert_int_equal(file_host(p, 1), 0);

    memset(buf, 0x3c, 4096);
    assert_int_equal(
        prl_block_pwrite(bs, buf, 4096 < cs ? 4096 : cs - 1, 7 * cs + 1, 0), 0);
    memset(ref + 7 * cs + 1, 0x3c, 4096 < cs ? 4096 : cs - 1);
    assert_int_equal(file_host(p, 7), h1);
    assert_int_equal(tu_file_size(p), fsize);
    assert_int_equal(prl_block_status(bs, 7 * cs, cs, &e), 0);
    assert_int_equal(e.offset, h1);
    expect_contents(bs, ref, size);

    /* Freeing the last clusters gives the space back on close. */
    assert_int_equal(prl_block_trim(bs, cs, 3 * cs, 0), 0);
    assert_int_equal(prl_block_trim(bs, cs, 7 * cs, 0), 0);
    memset(ref + 3 * cs, 0, cs);
    memset(ref + 7 * cs, 0, cs);
    tu_close(bs);
    assert_int_equal(tu_file_size(p), file_data_off(p) + 3 * cs);
    bs = tu_open(p, NULL, 0);
    expect_contents(bs, ref, size);
    tu_close(bs);
    free(buf);
    free(ref);
}

/* A write over several unallocated clusters: appended as one run of
 * consecutive host clusters; a freed cluster in the middle of the file
 * is reused first; prl_block_data_fd gives the file holding the data. */
static void test_run_writes(void **state)
{
    const struct cfg *c = *state;
    const char *p = tu_path("runs.hdd");
    uint64_t cs = cfg_cs(c), size = 16 * cs, h0, h2, seed = 7;
    uint8_t *buf = xmalloc(size), *ref = calloc(1, size);
    struct prl_block *bs;
    struct prl_extent e;
    int fd;

    assert_non_null(ref);
    make_image(c, p, size);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    tu_rand_fill(&seed, buf, size);

    /* 5.5 clusters from 0: clusters 0..5 get consecutive hosts. */
    assert_int_equal(prl_block_pwrite(bs, buf, 5 * cs + cs / 2, 0, 0), 0);
    memcpy(ref, buf, 5 * cs + cs / 2);
    h0 = file_host(p, 0);
    assert_true(h0 != 0);
    for (uint64_t i = 1; i < 6; i++) {
        assert_int_equal(file_host(p, i), h0 + i * cs);
    }
    assert_int_equal(prl_block_status(bs, 0, size, &e), 0);
    assert_int_equal(e.length, 6 * cs);
    assert_int_equal(e.offset, h0);
    fd = prl_block_data_fd(bs, &e);
    assert_true(fd >= 0);
    uint8_t *got = xmalloc(2 * cs);
    assert_int_equal(pread(fd, got, 2 * cs, (off_t)(e.offset + 3 * cs)),
                     (ssize_t)(2 * cs));
    assert_memory_equal(got, ref + 3 * cs, 2 * cs);
    free(got);

    /* Free cluster 2; a 3-cluster write reuses it, appends the rest. */
    h2 = file_host(p, 2);
    assert_int_equal(prl_block_trim(bs, cs, 2 * cs, 0), 0);
    memset(ref + 2 * cs, 0, cs);
    assert_int_equal(prl_block_pwrite(bs, buf + 8 * cs, 3 * cs, 8 * cs, 0), 0);
    memcpy(ref + 8 * cs, buf + 8 * cs, 3 * cs);
    assert_int_equal(file_host(p, 8), h2);
    assert_int_equal(file_host(p, 9), h0 + 6 * cs);
    assert_int_equal(file_host(p, 10), h0 + 7 * cs);

    /* Unaligned start and end over four clusters. */
    assert_int_equal(
        prl_block_pwrite(bs, buf + 11 * cs + 512, 3 * cs, 11 * cs + 512, 0), 0);
    memcpy(ref + 11 * cs + 512, buf + 11 * cs + 512, 3 * cs);
    for (uint64_t i = 11; i < 15; i++) {
        assert_int_equal(file_host(p, i), h0 + (i - 3) * cs);
    }
    expect_contents(bs, ref, size);
    tu_close(bs);
    assert_int_equal(tu_file_size(p), h0 + 12 * cs);
    bs = tu_open(p, NULL, 0);
    expect_contents(bs, ref, size);
    tu_close(bs);
    free(buf);
    free(ref);
}

static void test_legacy_data_off_zero(void **state)
{
    const char *p = tu_path("legacy0.hdd");
    const uint64_t cs = 32256;
    struct tu_par par;
    uint8_t w[1000], got[1000];
    struct prl_block *bs;

    (void)state;
    memset(w, 0x77, sizeof(w));
    tu_par_init(&par, false, 63, 100 * cs);
    par.data_off = 0;
    tu_par_write(p, &par, NULL, 0, 0);
    /* 100 entries end at byte 464: the data area starts at 512. */
    assert_int_equal(tu_file_size(p), 512);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_pwrite(bs, w, 1000, 3 * cs - 500, 0), 0);
    tu_close(bs);
    /* Entries count sectors from the start of the file. */
    assert_int_equal(tu_file_le32(p, 64 + 4 * 2), 1);
    assert_int_equal(tu_file_le32(p, 64 + 4 * 3), (512 + cs) / 512);
    assert_int_equal(tu_file_le32(p, OFF_DATA_OFF), 0);
    assert_int_equal(tu_file_size(p), 512 + 2 * cs);
    tu_read_at(p, got, 500, 512 + cs - 500);
    assert_memory_equal(got, w, 500);
    bs = tu_open(p, NULL, 0);
    assert_int_equal(prl_block_pread(bs, got, 1000, 3 * cs - 500, 0), 0);
    assert_memory_equal(got, w, 1000);
    tu_close(bs);
}

/* One malformed image: how to break it and what the error must name. */
struct bad_case {
    const char *name;
    void (*make)(const char *path);
    const char *want1, *want2;
};

/* Ext, 4 KiB clusters, 16 entries, data at 4096, clusters 0..2 allocated
 * at data-area indices 0..2 (the file holds 3 data clusters). */
static void base_ext(struct tu_par *p, uint32_t bat[16])
{
    tu_par_init(p, true, 8, 16 * 4096);
    memset(bat, 0, 16 * 4);
    for (int i = 0; i < 3; i++) {
        bat[i] = tu_par_entry(p, (uint64_t)i);
    }
}

static void write_ext(const char *path, struct tu_par *p, uint32_t bat[16])
{
    tu_par_write(path, p, bat, 16, tu_par_data_off(p) + 3 * 4096);
}

/* Legacy, 4 KiB clusters, 16 entries, data_off 8 sectors (the BAT ends at
 * 128), 3 clusters. */
static void base_legacy(struct tu_par *p, uint32_t bat[16])
{
    tu_par_init(p, false, 8, 16 * 4096);
    p->data_off = 8;
    memset(bat, 0, 16 * 4);
    for (int i = 0; i < 3; i++) {
        bat[i] = tu_par_entry(p, (uint64_t)i);
    }
}

#define BAD_EXT(fn, body)                                                      \
    static void fn(const char *path)                                           \
    {                                                                          \
        struct tu_par p;                                                       \
        uint32_t bat[16];                                                      \
        base_ext(&p, bat);                                                     \
        body;                                                                  \
        write_ext(path, &p, bat);                                              \
    }
#define BAD_LEGACY(fn, body)                                                   \
    static void fn(const char *path)                                           \
    {                                                                          \
        struct tu_par p;                                                       \
        uint32_t bat[16];                                                      \
        base_legacy(&p, bat);                                                  \
        body;                                                                  \
        tu_par_write(path, &p, bat, 16, 4096 + 3 * 4096);                      \
    }

BAD_EXT(bad_version, p.version = 3)
BAD_EXT(bad_magic, p.magic = "WithoutFreeSpacX")
BAD_EXT(bad_tracks0, p.tracks = 0)
BAD_EXT(bad_tracks_huge, p.tracks = 1u << 22)
BAD_EXT(bad_bat_past_eof, p.bat_entries = 5000; p.nb_sectors = 8)
BAD_EXT(bad_bat_short, p.nb_sectors = 16 * 8 + 1)
BAD_EXT(bad_ext_data_off0, p.data_off = 0)
BAD_EXT(bad_ext_data_off_misaligned, p.data_off = 9)
BAD_EXT(bad_entry_past_eof, bat[5] = tu_par_entry(&p, 3))
BAD_EXT(bad_entry_far, bat[5] = 0xffffffffu)
BAD_EXT(bad_duplicate, bat[9] = bat[1])
BAD_EXT(bad_ext_off_collides, p.ext_off = (uint64_t)bat[2] * 8)
BAD_EXT(bad_ext_off_past_eof, p.ext_off = 4096 / 512 * 40)
BAD_LEGACY(bad_legacy_high_bits, p.nb_sectors |= 1ull << 32)
BAD_LEGACY(bad_legacy_data_off_in_bat, p.bat_entries = 200; p.data_off = 1)
BAD_LEGACY(bad_legacy_entry_below_data, bat[8] = 4)
BAD_LEGACY(bad_legacy_misaligned, bat[2] = bat[1] + 1)

/* A BAT of 200 entries ends at byte 864, so an entry of 1 (byte 512)
 * points into it.  Ext with 512-byte clusters, and legacy. */
static void bad_entry_in_bat(const char *path, bool ext)
{
    struct tu_par p;
    uint32_t bat[8] = {0};

    tu_par_init(&p, ext, 1, 200 * 512);
    bat[0] = tu_par_entry(&p, 0);
    bat[5] = 1;
    tu_par_write(path, &p, bat, 8, tu_par_data_off(&p) + 512);
}

static void bad_ext_entry_in_bat(const char *path)
{
    bad_entry_in_bat(path, true);
}

static void bad_legacy_entry_in_bat(const char *path)
{
    bad_entry_in_bat(path, false);
}

static void bad_legacy_partly(const char *path)
{
    struct tu_par p;
    uint32_t bat[16];

    base_legacy(&p, bat);
    tu_par_write(path, &p, bat, 16, 4096 + 3 * 4096 - 512);
}

static void bad_short_header(const char *path)
{
    struct tu_par p;
    uint32_t bat[16];

    base_ext(&p, bat);
    write_ext(path, &p, bat);
    tu_truncate(path, 40);
}

static void bad_partly_inside(const char *path)
{
    struct tu_par p;
    uint32_t bat[16];

    base_ext(&p, bat);
    write_ext(path, &p, bat);
    tu_truncate(path, tu_par_data_off(&p) + 3 * 4096 - 1);
}

static const struct bad_case bad_cases[] = {
    {"version", bad_version, "version", "3"},
    {"magic", bad_magic, "magic", NULL},
    {"tracks 0", bad_tracks0, "tracks", "0"},
    {"tracks too big", bad_tracks_huge, "tracks", "4194304"},
    {"BAT past EOF", bad_bat_past_eof, "nb_bat_entries", "5000"},
    {"BAT short of nb_sectors", bad_bat_short, "nb_bat_entries", "129"},
    {"ext data_off 0", bad_ext_data_off0, "data_off", "0"},
    {"ext data_off misaligned", bad_ext_data_off_misaligned, "data_off", "9"},
    {"entry past EOF", bad_entry_past_eof, "BAT entry 5", "past the end"},
    {"entry far past EOF", bad_entry_far, "BAT entry 5", "4294967295"},
    {"entry inside the BAT", bad_ext_entry_in_bat, "BAT entry 5",
     "inside the header or BAT"},
    {"duplicate entries", bad_duplicate, "BAT entries 1 and 9", NULL},
    {"ext_off on a data cluster", bad_ext_off_collides, "ext_off", "24"},
    {"ext_off past EOF", bad_ext_off_past_eof, "ext_off", "320"},
    {"legacy nb_sectors high bits", bad_legacy_high_bits, "nb_sectors",
     "4294967424"},
    {"legacy data_off in BAT", bad_legacy_data_off_in_bat, "data_off", "1"},
    {"legacy entry inside the BAT", bad_legacy_entry_in_bat, "BAT entry 5",
     "inside the header or BAT"},
    {"legacy entry below data", bad_legacy_entry_below_data, "BAT entry 8",
     "below the data area"},
    {"legacy entry misaligned", bad_legacy_misaligned, "BAT entry 2",
     "aligned"},
    {"legacy entry partly inside", bad_legacy_partly, "BAT entry 2", "partly"},
    {"short header", bad_short_header, "40", "64"},
    {"cluster partly inside the file", bad_partly_inside, "BAT entry 2",
     "partly"},
};

static void test_open_rejects(void **state)
{
    const char *p = tu_path("bad.hdd");

    (void)state;
    for (size_t i = 0; i < TU_COUNT(bad_cases); i++) {
        const struct bad_case *bc = &bad_cases[i];
        unsigned modes[] = {0, PRL_OPEN_RDWR};
        uint8_t *before, *after;
        size_t n1, n2;

        bc->make(p);
        before = tu_read_file(p, &n1);
        for (size_t m = 0; m < 2; m++) {
            const char *fmts[] = {NULL, "parallels"};
            for (size_t f = 0; f < 2; f++) {
                struct prl_block *bs = (struct prl_block *)1;
                int r;
                prl_error_clear();
                r = prl_block_open(p, fmts[f], modes[m], &bs);
                if (r != -EINVAL) {
                    fail_msg("%s: open gave %d (%s), want -EINVAL", bc->name, r,
                             r ? prl_error_message() : "");
                }
                assert_null(bs);
                const char *msg = prl_error_message();
                if (!strstr(msg, bc->want1) ||
                    (bc->want2 && !strstr(msg, bc->want2))) {
                    fail_msg("%s: message '%s' lacks '%s' / '%s'", bc->name,
                             msg, bc->want1, bc->want2 ? bc->want2 : "");
                }
            }
        }
        after = tu_read_file(p, &n2);
        assert_int_equal(n1, n2);
        if (memcmp(before, after, n1) != 0) {
            fail_msg("%s: a refused open changed the file", bc->name);
        }
        free(before);
        free(after);
    }
}

/* The bad-case builders produce valid images when left alone. */
static void test_open_base_images(void **state)
{
    const char *p = tu_path("good.hdd");
    struct tu_par par;
    uint32_t bat[16];
    struct prl_block *bs;

    (void)state;
    base_ext(&par, bat);
    write_ext(p, &par, bat);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    tu_close(bs);
    base_legacy(&par, bat);
    tu_par_write(p, &par, bat, 16, 4096 + 3 * 4096);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    tu_close(bs);
}

static void test_empty_flag(void **state)
{
    const char *p = tu_path("empty.hdd");
    const uint64_t cs = 4096;
    struct tu_par par;
    uint32_t bat[8] = {0};
    uint8_t *buf = xmalloc(8 * cs), w[100];
    struct prl_block *bs;
    struct prl_image_info info;
    struct prl_extent e;

    (void)state;
    tu_par_init(&par, true, 8, 8 * cs);
    par.flags = 1;
    bat[0] = tu_par_entry(&par, 0);
    bat[1] = tu_par_entry(&par, 1);
    tu_par_write(p, &par, bat, 8, tu_par_data_off(&par) + 2 * cs);
    tu_par_fill_cluster(p, &par, 0, 0xaa);
    tu_par_fill_cluster(p, &par, 1, 0xbb);

    /* The image reads as zeroes whatever the BAT holds. */
    bs = tu_open(p, NULL, 0);
    assert_int_equal(prl_block_info(bs, &info), 0);
    assert_true(info.empty_flag);
    assert_int_equal(prl_block_pread(bs, buf, 8 * cs, 0, 0), 0);
    assert_true(tu_all(buf, 8 * cs, 0));
    assert_int_equal(prl_block_status(bs, 0, 8 * cs, &e), 0);
    assert_true(e.flags & PRL_EXT_ZERO);
    assert_false(e.flags & PRL_EXT_DATA);
    tu_close(bs);
    assert_int_equal(tu_file_le32(p, OFF_FLAGS), 1);

    /* The first write clears the flag and drops the stale entries. */
    memset(w, 0x11, sizeof(w));
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_pwrite(bs, w, sizeof(w), 5 * cs + 10, 0), 0);
    assert_int_equal(tu_file_le32(p, OFF_FLAGS), 0);
    assert_int_equal(tu_file_le32(p, 64), 0);
    assert_int_equal(tu_file_le32(p, 68), 0);
    assert_int_equal(prl_block_pread(bs, buf, 8 * cs, 0, 0), 0);
    for (uint64_t i = 0; i < 8 * cs; i++) {
        uint8_t want = (i >= 5 * cs + 10 && i < 5 * cs + 110) ? 0x11 : 0;
        if (buf[i] != want) {
            fail_msg("byte %llu = 0x%02x, want 0x%02x", (unsigned long long)i,
                     buf[i], want);
        }
    }
    tu_close(bs);
    bs = tu_open(p, NULL, 0);
    assert_int_equal(prl_block_info(bs, &info), 0);
    assert_false(info.empty_flag);
    assert_int_equal(info.allocated_clusters, 1);
    assert_int_equal(prl_block_pread(bs, buf, 8 * cs, 0, 0), 0);
    assert_true(tu_all(buf, 5 * cs + 10, 0));
    assert_true(tu_all(buf + 5 * cs + 10, 100, 0x11));
    assert_true(tu_all(buf + 5 * cs + 110, 3 * cs - 110, 0));
    tu_close(bs);
    free(buf);
}

static void test_in_use(void **state)
{
    const char *p = tu_path("inuse.hdd");
    uint8_t w[512], *before, *after;
    size_t n1, n2;
    struct prl_block *bs;
    struct prl_image_info info;
    const uint32_t odd[] = {0, 0x37316470 /* "pd17" */, DIRTY};

    (void)state;
    memset(w, 0x42, sizeof(w));
    tu_create(p, "parallels", 4 * MiB, "cluster_size=64k");
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), CLEAN);

    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_pwrite(bs, w, sizeof(w), 0, 0), 0);
    /* While open after a write, the file says "in use". */
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), DIRTY);
    assert_int_equal(prl_block_pwrite(bs, w, sizeof(w), MiB, 0), 0);
    assert_int_equal(prl_block_flush(bs), 0);
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), DIRTY);
    tu_close(bs);
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), CLEAN);

    /* Zero and trim mark it too. */
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_trim(bs, 64 * KiB, MiB, 0), 0);
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), DIRTY);
    tu_close(bs);
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), CLEAN);

    /* Read-only opens never write: in_use stays whatever it was. */
    for (size_t i = 0; i < TU_COUNT(odd); i++) {
        tu_poke_le32(p, OFF_IN_USE, odd[i]);
        before = tu_read_file(p, &n1);
        bs = tu_open(p, NULL, 0);
        assert_int_equal(prl_block_info(bs, &info), 0);
        assert_int_equal(info.in_use, odd[i]);
        assert_int_equal(info.dirty, odd[i] == DIRTY);
        assert_int_equal(prl_block_pread(bs, w, sizeof(w), 0, 0), 0);
        tu_close(bs);
        after = tu_read_file(p, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(before, after, n1);
        free(before);
        free(after);
    }

    /* A read-write open that writes ends clean, whatever it found. */
    tu_poke_le32(p, OFF_IN_USE, 0);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_pwrite(bs, w, sizeof(w), 0, 0), 0);
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), DIRTY);
    tu_close(bs);
    assert_int_equal(tu_file_le32(p, OFF_IN_USE), CLEAN);
}

static void test_resize_grow_in_bat(void **state)
{
    const char *p = tu_path("grow-tail.hdd");
    const uint64_t cs = 4096, size = MiB + 4096;
    uint8_t w[4096], got[4096];
    struct prl_block *bs;

    (void)state;
    memset(w, 0xee, sizeof(w));
    tu_create(p, "parallels", size, "cluster_size=4k");
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_pwrite(bs, w, cs, MiB, 0), 0);
    /* Shrink into the last cluster, then grow back: the bytes past the
     * shrunk end must not come back. */
    assert_int_equal(prl_block_resize(bs, MiB + 512, true), 0);
    assert_int_equal(prl_block_size(bs), MiB + 512);
    assert_int_equal(prl_block_resize(bs, size, false), 0);
    assert_int_equal(prl_block_size(bs), size);
    assert_int_equal(prl_block_pread(bs, got, cs, MiB, 0), 0);
    assert_true(tu_all(got, 512, 0xee));
    assert_true(tu_all(got + 512, cs - 512, 0));
    tu_close(bs);
    assert_int_equal(tu_file_le32(p, OFF_NB_SECTORS), size / 512);
    bs = tu_open(p, NULL, 0);
    assert_int_equal(prl_block_size(bs), size);
    assert_int_equal(prl_block_pread(bs, got, cs, MiB, 0), 0);
    assert_true(tu_all(got, 512, 0xee));
    assert_true(tu_all(got + 512, cs - 512, 0));
    tu_close(bs);

    /* Sizes that are not whole sectors round up. */
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_resize(bs, size + 1, false), 0);
    assert_int_equal(prl_block_size(bs), size + 512);
    tu_close(bs);
}

/* A BAT may be longer than nb_sectors needs (parallels.rst only asks that
 * it cover them), and its entries past the end may point at clusters.
 * Growing over them must still show zeroes, as zero_tail_locked ensures
 * for the rest of the old last cluster. */
static void test_resize_grow_stale_entries(void **state)
{
    const char *p = tu_path("stale.hdd");
    const uint64_t cs = 4096;
    struct tu_par par;
    uint32_t bat[4] = {0};
    uint8_t *buf = xmalloc(4 * cs);
    struct prl_block *bs;

    (void)state;
    tu_par_init(&par, true, 8, 2 * cs);
    par.bat_entries = 4;
    bat[0] = tu_par_entry(&par, 0);
    bat[3] = tu_par_entry(&par, 1);
    tu_par_write(p, &par, bat, 4, tu_par_data_off(&par) + 2 * cs);
    tu_par_fill_cluster(p, &par, 0, 0x61);
    tu_par_fill_cluster(p, &par, 1, 0xee);

    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_size(bs), 2 * cs);
    assert_int_equal(prl_block_resize(bs, 4 * cs, false), 0);
    assert_int_equal(prl_block_pread(bs, buf, 4 * cs, 0, 0), 0);
    assert_true(tu_all(buf, cs, 0x61));
    if (!tu_all(buf + cs, 3 * cs, 0)) {
        fail_msg("the grown area shows stale data of a BAT entry past the "
                 "old end");
    }
    tu_close(bs);
    free(buf);
}

/* Grow an image of |cs|-byte clusters from |from| to |to| bytes so far
 * that the BAT outgrows the space before the data area and data clusters
 * must move; |nwrite| clusters are written first. */
static void check_grow_moves(const char *opts, uint64_t cs, uint64_t from,
                             uint64_t to, uint64_t nwrite, bool by_hand)
{
    const char *p = tu_path("grow.hdd");
    uint8_t *ref = calloc(1, to);
    uint64_t seed = from ^ to, doff_before, doff_after;
    struct prl_block *bs;

    assert_non_null(ref);
    if (by_hand) {
        struct tu_par par;
        tu_par_init(&par, false, (uint32_t)(cs / 512), from);
        par.data_off = 0;
        tu_par_write(p, &par, NULL, 0, 0);
    } else {
        tu_create(p, "parallels", from, opts);
    }
    doff_before = file_data_off(p);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    /* Write clusters in reverse, so host order differs from guest
     * order, and leave a hole in the middle. */
    for (uint64_t i = 0; i < nwrite; i++) {
        uint64_t c = (nwrite - 1 - i) * (from / cs) / nwrite;
        uint64_t len = cs - 17 * (i % 3);
        tu_rand_fill(&seed, ref + c * cs, len);
        assert_int_equal(prl_block_pwrite(bs, ref + c * cs, len, c * cs, 0), 0);
    }
    assert_int_equal(prl_block_resize(bs, to, false), 0);
    assert_int_equal(prl_block_size(bs), to);
    expect_contents(bs, ref, to);
    /* The grown area is writable. */
    tu_rand_fill(&seed, ref + to - 3 * cs, 3 * cs);
    assert_int_equal(
        prl_block_pwrite(bs, ref + to - 3 * cs, 3 * cs, to - 3 * cs, 0), 0);
    expect_contents(bs, ref, to);
    tu_close(bs);
    doff_after = file_data_off(p);
    if (doff_after <= doff_before) {
        fail_msg("%s: data_off %llu -> %llu; the test should make the BAT "
                 "cross it",
                 opts, (unsigned long long)doff_before,
                 (unsigned long long)doff_after);
    }
    assert_int_equal(tu_file_le32(p, OFF_BAT_ENTRIES), (to + cs - 1) / cs);
    assert_true(64 + 4 * ((to + cs - 1) / cs) <= doff_after);
    /* Reopening validates every BAT entry against the new layout. */
    bs = tu_open(p, NULL, 0);
    expect_contents(bs, ref, to);
    tu_close(bs);
    free(ref);
}

static void test_resize_grow_moves(void **state)
{
    (void)state;
    /* 4 KiB clusters: 256 entries fit the first 4 KiB, 1024 do not. */
    check_grow_moves("cluster_size=4k", 4096, MiB, 4 * MiB, 8, false);
    /* 512-byte clusters: data_off 8704, the new BAT ends at 16448, so
     * 16 clusters move. */
    check_grow_moves("cluster_size=512", 512, MiB, 2 * MiB, 40, false);
    check_grow_moves("cluster_size=512,subformat=legacy", 512, MiB, 3 * MiB, 64,
                     false);
    /* Legacy with data_off 0 (computed 512): any growth of the BAT past
     * the first sector moves data. */
    check_grow_moves("legacy data_off=0", 32256, 100 * 32256, 300 * 32256, 20,
                     true);
}

static void test_resize_shrink(void **state)
{
    const char *p = tu_path("shrink.hdd");
    const uint64_t cs = 64 * KiB, size = 16 * cs;
    uint8_t *buf = xmalloc(size), w[1000];
    struct prl_block *bs;

    (void)state;
    memset(w, 0x99, sizeof(w));
    tu_create(p, "parallels", size, "cluster_size=64k");
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_pwrite(bs, w, 1000, 0, 0), 0);
    assert_int_equal(prl_block_pwrite(bs, w, 1000, 12 * cs + 5, 0), 0);
    assert_int_equal(prl_block_pwrite(bs, w, 10, 4 * cs + 600, 0), 0);

    /* Dropping an allocated cluster needs shrink = true. */
    tu_expect_err(prl_block_resize(bs, 8 * cs, false), -ENOTEMPTY, NULL);
    assert_int_equal(prl_block_size(bs), size);
    assert_int_equal(prl_block_zero(bs, cs, 12 * cs, 0), 0);
    /* So does cutting data inside the last cluster kept. */
    tu_expect_err(prl_block_resize(bs, 4 * cs + 512, false), -ENOTEMPTY, NULL);
    assert_int_equal(prl_block_size(bs), size);
    /* Cutting only zeroes is fine. */
    assert_int_equal(prl_block_resize(bs, 4 * cs + 1024, false), 0);
    assert_int_equal(prl_block_size(bs), 4 * cs + 1024);
    assert_int_equal(prl_block_resize(bs, 4 * cs + 512, true), 0);
    assert_int_equal(prl_block_size(bs), 4 * cs + 512);
    /* The cut bytes do not come back when growing again. */
    assert_int_equal(prl_block_resize(bs, size, false), 0);
    assert_int_equal(prl_block_pread(bs, buf, cs, 4 * cs, 0), 0);
    assert_true(tu_all(buf, cs, 0));
    /* Unallocated clusters go without the flag. */
    assert_int_equal(prl_block_resize(bs, 5 * cs, false), 0);

    assert_int_equal(prl_block_pwrite(bs, w, 1000, 4 * cs + 600, 0), 0);
    assert_int_equal(prl_block_resize(bs, 2 * cs, true), 0);
    assert_int_equal(prl_block_size(bs), 2 * cs);
    tu_expect_err(prl_block_pread(bs, buf, 1, 2 * cs, 0), -EINVAL, NULL);
    tu_close(bs);
    assert_int_equal(tu_file_le32(p, OFF_NB_SECTORS), 2 * cs / 512);
    assert_int_equal(tu_file_le32(p, OFF_BAT_ENTRIES), 2);
    /* The dropped clusters' space is gone from the file. */
    assert_int_equal(tu_file_size(p), file_data_off(p) + cs);

    /* Growing again shows zeroes where data was dropped. */
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_resize(bs, size, false), 0);
    assert_int_equal(prl_block_pread(bs, buf, size, 0, 0), 0);
    assert_true(tu_all(buf, 1000, 0x99));
    assert_true(tu_all(buf + 1000, size - 1000, 0));
    tu_close(bs);
    free(buf);
}

/* Concurrent requests through one handle.  In stripe mode thread i owns
 * the stripes k (an eighth of a cluster) with k % NTHREADS == i, so every
 * cluster is written
 * by all threads at once and allocations race; in region mode it owns one
 * contiguous quarter and also frees whole clusters, so frees race with
 * other threads' allocations and reuse. */
enum { NTHREADS = 4, OPS = 300 };

struct worker {
    struct prl_block *bs;
    uint8_t *ref; /* the whole image's expected contents */
    uint64_t size, cs;
    int id;
    bool stripes;
    uint64_t seed;
    int err;
};

static void worker_op(struct worker *w, uint8_t *buf, uint64_t off,
                      uint64_t len, uint64_t r)
{
    if (r % 5 == 0 && !w->stripes) {
        /* Whole clusters, so they are freed and reused. */
        off = off / w->cs * w->cs;
        len = w->cs;
        w->err = prl_block_zero(w->bs, len, off, 0);
        memset(w->ref + off, 0, len);
    } else if (r % 7 == 0) {
        w->err = w->stripes ? prl_block_zero(w->bs, len, off, PRL_REQ_NO_UNMAP)
                            : prl_block_trim(w->bs, len, off, 0);
        memset(w->ref + off, 0, len);
    } else {
        tu_rand_fill(&w->seed, buf, len);
        w->err = prl_block_pwrite(w->bs, buf, len, off,
                                  r % 11 == 0 ? PRL_REQ_FUA : 0);
        memcpy(w->ref + off, buf, len);
    }
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    uint8_t *buf = malloc(2 * w->cs);
    uint64_t region = w->size / NTHREADS;

    for (int i = 0; i < OPS && buf && !w->err; i++) {
        uint64_t r = tu_rand(&w->seed), off, len;
        if (w->stripes) {
            uint64_t stripe = w->cs / 8;
            uint64_t nstripes = w->size / stripe / NTHREADS;
            uint64_t k =
                tu_rand(&w->seed) % nstripes * NTHREADS + (uint64_t)w->id;
            uint64_t in = tu_rand(&w->seed) % stripe;
            len = 1 + tu_rand(&w->seed) % (stripe - in);
            off = k * stripe + in;
        } else {
            len = 1 + tu_rand(&w->seed) % (2 * w->cs);
            off = (uint64_t)w->id * region +
                  tu_rand(&w->seed) % (region - len + 1);
        }
        worker_op(w, buf, off, len, r);
    }
    free(buf);
    return NULL;
}

static void run_workers(struct prl_block *bs, uint8_t *ref, uint64_t size,
                        uint64_t cs, bool stripes, uint64_t seed)
{
    struct worker w[NTHREADS];
    pthread_t t[NTHREADS];

    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){
            bs, ref, size, cs, i, stripes, seed + (uint64_t)i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        if (w[i].err) {
            fail_msg("thread %d: %d %s", i, w[i].err,
                     stripes ? "(stripes)" : "(regions)");
        }
    }
}

static void test_concurrency(void **state)
{
    const struct cfg *c = *state;
    const char *p = tu_path("threads.hdd");
    const uint64_t cs = cfg_cs(c), size = 64 * cs;
    uint8_t *ref = calloc(1, size);
    struct prl_block *bs;
    struct prl_extent e;
    uint64_t *hosts = calloc(size / cs, sizeof(uint64_t)), nh = 0;

    assert_non_null(ref);
    assert_non_null(hosts);
    make_image(c, p, size);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_true(prl_block_caps(bs) & PRL_CAP_PARALLEL);
    run_workers(bs, ref, size, cs, true, 1000);
    expect_contents(bs, ref, size);
    run_workers(bs, ref, size, cs, false, 2000);
    expect_contents(bs, ref, size);
    run_workers(bs, ref, size, cs, true, 3000);
    expect_contents(bs, ref, size);
    /* No two guest clusters share a host cluster. */
    for (uint64_t off = 0; off < size; off += cs) {
        assert_int_equal(prl_block_status(bs, off, cs, &e), 0);
        if (e.flags & PRL_EXT_OFFSET) {
            for (uint64_t j = 0; j < nh; j++) {
                if (hosts[j] == e.offset) {
                    fail_msg("host offset %llu used twice",
                             (unsigned long long)e.offset);
                }
            }
            hosts[nh++] = e.offset;
        }
    }
    tu_close(bs);
    bs = tu_open(p, NULL, 0);
    expect_contents(bs, ref, size);
    tu_close(bs);
    free(hosts);
    free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_default),
        cmocka_unit_test(test_create_options),
        cmocka_unit_test(test_create_prealloc),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test_prestate(test_io, (void *)&cfg_ext64k),
        cmocka_unit_test_prestate(test_io, (void *)&cfg_ext1m),
        cmocka_unit_test_prestate(test_io, (void *)&cfg_legacy63),
        cmocka_unit_test_prestate(test_io, (void *)&cfg_legacy4k),
        cmocka_unit_test_prestate(test_zero_trim, (void *)&cfg_ext64k),
        cmocka_unit_test_prestate(test_zero_trim, (void *)&cfg_legacy63),
        cmocka_unit_test_prestate(test_trim_reuse, (void *)&cfg_ext64k),
        cmocka_unit_test_prestate(test_trim_reuse, (void *)&cfg_legacy63),
        cmocka_unit_test_prestate(test_run_writes, (void *)&cfg_ext64k),
        cmocka_unit_test_prestate(test_run_writes, (void *)&cfg_legacy63),
        cmocka_unit_test(test_legacy_data_off_zero),
        cmocka_unit_test(test_open_base_images),
        cmocka_unit_test(test_open_rejects),
        cmocka_unit_test(test_empty_flag),
        cmocka_unit_test(test_in_use),
        cmocka_unit_test(test_resize_grow_in_bat),
        cmocka_unit_test(test_resize_grow_moves),
        cmocka_unit_test(test_resize_grow_stale_entries),
        cmocka_unit_test(test_resize_shrink),
        cmocka_unit_test_prestate(test_concurrency, (void *)&cfg_ext64k),
        cmocka_unit_test_prestate(test_concurrency, (void *)&cfg_ext4k),
        cmocka_unit_test_prestate(test_concurrency, (void *)&cfg_legacy63),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
