/* SPDX-License-Identifier: MIT */
/* Unit tests of lib/block/block.c and the raw driver through the public
 * API: create, probing, request validation and raw I/O on temp files. */
#include "testutil.h"

#include "prl/block.h"
#include "prl/error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MiB (1u << 20)

/* Whether this file system reports holes (SEEK_HOLE inside a sparse
 * file), so status tests know what to expect. */
static bool fs_has_holes(void)
{
    const char *p = tu_path("holes-probe");
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    bool holes;

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4 * MiB), 0);
    assert_int_equal(pwrite(fd, "x", 1, 0), 1);
    holes = lseek(fd, 0, SEEK_HOLE) < 4 * MiB;
    close(fd);
    unlink(p);
    return holes;
}

static void test_formats(void **state)
{
    const char *const *f = prl_block_formats();
    bool raw = false, par = false;

    (void)state;
    for (; *f; f++) {
        raw |= strcmp(*f, "raw") == 0;
        par |= strcmp(*f, "parallels") == 0;
    }
    assert_true(raw);
    assert_true(par);
}

static void test_raw_create(void **state)
{
    const char *p = tu_path("create.raw");
    struct prl_block *bs;
    struct prl_image_info info;
    uint8_t buf[4096];
    struct stat st;

    (void)state;
    tu_create(p, "raw", 3 * MiB + 5, NULL);
    assert_int_equal(tu_file_size(p), 3 * MiB + 5);
    bs = tu_open(p, NULL, 0);
    assert_string_equal(prl_block_format(bs), "raw");
    assert_string_equal(prl_block_filename(bs), p);
    assert_int_equal(prl_block_size(bs), 3 * MiB + 5);
    assert_int_equal(prl_block_info(bs, &info), 0);
    assert_string_equal(info.format, "raw");
    assert_int_equal(info.virtual_size, 3 * MiB + 5);
    assert_true(info.read_only);
    assert_false(info.has_parallels);
    assert_int_equal(
        prl_block_pread(bs, buf, sizeof(buf), 3 * MiB + 5 - sizeof(buf), 0), 0);
    assert_true(tu_all(buf, sizeof(buf), 0));
    tu_close(bs);

    /* Every preallocation mode makes a file of the right size; "full"
     * and "falloc" really allocate it. */
    const char *modes[] = {"preallocation=off", "preallocation=falloc",
                           "preallocation=full"};
    for (size_t i = 0; i < TU_COUNT(modes); i++) {
        tu_create(p, "raw", MiB, modes[i]);
        assert_int_equal(tu_file_size(p), MiB);
        assert_int_equal(stat(p, &st), 0);
        if (i > 0) {
            assert_true((uint64_t)st.st_blocks * 512 >= MiB);
        }
    }
}

static void test_create_errors(void **state)
{
    const char *p = tu_path("never.raw");

    (void)state;
    tu_expect_err(prl_block_create(p, "raw", MiB, "bogus=1"), -EINVAL, "bogus");
    assert_false(tu_exists(p));
    tu_expect_err(prl_block_create(p, "raw", MiB, "preallocation=maybe"),
                  -EINVAL, "maybe");
    assert_false(tu_exists(p));
    tu_expect_err(prl_block_create(p, "qcow9", MiB, NULL), -EINVAL, "qcow9");
    assert_false(tu_exists(p));
    tu_expect_err(prl_block_create(p, "raw", MiB, "=x"), -EINVAL, NULL);
    assert_false(tu_exists(p));
}

static void test_raw_io(void **state)
{
    const char *p = tu_path("io.raw");
    struct prl_block *bs;
    uint8_t w[10000], r[10000], file[10000];
    uint64_t seed = 7;

    (void)state;
    tu_create(p, "raw", 4 * MiB, NULL);
    bs = tu_open(p, "raw", PRL_OPEN_RDWR);
    assert_true(prl_block_caps(bs) & PRL_CAP_WRITE);
    tu_rand_fill(&seed, w, sizeof(w));
    /* Odd offset and length. */
    assert_int_equal(prl_block_pwrite(bs, w, 9999, 12345, 0), 0);
    assert_int_equal(prl_block_pread(bs, r, 9999, 12345, 0), 0);
    assert_memory_equal(w, r, 9999);
    /* Raw means guest offset = file offset. */
    tu_read_at(p, file, 9999, 12345);
    assert_memory_equal(w, file, 9999);

    /* FUA write, zero with and without NO_UNMAP, trim. */
    assert_int_equal(prl_block_pwrite(bs, w, 4096, 2 * MiB, PRL_REQ_FUA), 0);
    assert_int_equal(prl_block_zero(bs, 100, 12345 + 10, 0), 0);
    assert_int_equal(
        prl_block_zero(bs, 50, 12345 + 200, PRL_REQ_NO_UNMAP | PRL_REQ_FUA), 0);
    assert_int_equal(prl_block_pread(bs, r, 9999, 12345, 0), 0);
    assert_memory_equal(r, w, 10);
    assert_true(tu_all(r + 10, 100, 0));
    assert_memory_equal(r + 110, w + 110, 90);
    assert_true(tu_all(r + 200, 50, 0));
    assert_memory_equal(r + 250, w + 250, 9999 - 250);
    /* Trim of whole blocks reads back zero in prl's drivers. */
    assert_int_equal(prl_block_trim(bs, 1 * MiB, 2 * MiB, 0), 0);
    assert_int_equal(prl_block_pread(bs, r, 4096, 2 * MiB, 0), 0);
    assert_true(tu_all(r, 4096, 0));
    assert_int_equal(prl_block_flush(bs), 0);

    /* Writes up to the very last byte. */
    assert_int_equal(prl_block_pwrite(bs, w, 1, 4 * MiB - 1, 0), 0);
    assert_int_equal(prl_block_pread(bs, r, 1, 4 * MiB - 1, 0), 0);
    assert_int_equal(r[0], w[0]);
    tu_close(bs);
    assert_int_equal(tu_file_size(p), 4 * MiB);
}

static void test_raw_status(void **state)
{
    const char *p = tu_path("status.raw");
    struct prl_block *bs;
    struct prl_extent e;
    uint8_t w[4096];
    bool holes = fs_has_holes();
    uint64_t off = 0;
    int n = 0;

    (void)state;
    memset(w, 0x5a, sizeof(w));
    tu_create(p, "raw", 4 * MiB, NULL);
    tu_write_at(p, w, sizeof(w), MiB);
    bs = tu_open(p, NULL, 0);

    assert_int_equal(prl_block_status(bs, MiB, 4096, &e), 0);
    assert_int_equal(e.length, 4096);
    assert_true(e.flags & PRL_EXT_DATA);
    assert_false(e.flags & PRL_EXT_ZERO);
    assert_true(e.flags & PRL_EXT_ALLOCATED);
    assert_true(e.flags & PRL_EXT_OFFSET);
    assert_int_equal(e.offset, MiB);
    assert_int_equal(e.depth, 1);

    assert_int_equal(prl_block_status(bs, 2 * MiB, 2 * MiB, &e), 0);
    assert_true(e.length >= 1 && e.length <= 2 * MiB);
    if (holes) {
        /* A hole in a raw file reads as zeroes and is still "there". */
        assert_int_equal(e.length, 2 * MiB);
        assert_true(e.flags & PRL_EXT_ZERO);
        assert_false(e.flags & PRL_EXT_DATA);
        assert_true(e.flags & PRL_EXT_ALLOCATED);
        assert_int_equal(e.offset, 2 * MiB);
    }
    /* Walking the whole image in extents covers it exactly. */
    while (off < 4 * MiB) {
        assert_int_equal(prl_block_status(bs, off, 4 * MiB - off, &e), 0);
        assert_true(e.length > 0);
        off += e.length;
        n++;
    }
    assert_int_equal(off, 4 * MiB);
    if (holes) {
        assert_true(n >= 3);
    }
    tu_close(bs);
}

static void test_validation(void **state)
{
    const char *p = tu_path("valid.raw");
    struct prl_block *bs;
    struct prl_extent e;
    uint8_t buf[512];
    uint8_t *all;
    size_t len;

    (void)state;
    memset(buf, 1, sizeof(buf));
    tu_create(p, "raw", MiB, NULL);

    bs = tu_open(p, NULL, 0);
    assert_false(prl_block_caps(bs) & PRL_CAP_WRITE);
    tu_expect_err(prl_block_pwrite(bs, buf, 512, 0, 0), -EROFS, p);
    tu_expect_err(prl_block_zero(bs, 512, 0, 0), -EROFS, NULL);
    tu_expect_err(prl_block_trim(bs, 512, 0, 0), -EROFS, NULL);
    tu_expect_err(prl_block_resize(bs, 2 * MiB, false), -EROFS, NULL);
    /* Reads work, and nothing reached the file. */
    assert_int_equal(prl_block_pread(bs, buf, 512, 0, 0), 0);
    assert_true(tu_all(buf, 512, 0));
    tu_close(bs);

    memset(buf, 1, sizeof(buf));
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    /* Past the end, straddling the end, and wrapping around. */
    tu_expect_err(prl_block_pread(bs, buf, 512, MiB, 0), -EINVAL,
                  "past the end");
    tu_expect_err(prl_block_pread(bs, buf, 2, MiB - 1, 0), -EINVAL, NULL);
    tu_expect_err(prl_block_pwrite(bs, buf, 512, MiB - 511, 0), -EINVAL, NULL);
    tu_expect_err(prl_block_pwrite(bs, buf, 512, UINT64_MAX - 100, 0), -EINVAL,
                  NULL);
    tu_expect_err(prl_block_zero(bs, UINT64_MAX, 2, 0), -EINVAL, NULL);
    tu_expect_err(prl_block_trim(bs, MiB + 1, 0, 0), -EINVAL, NULL);
    tu_expect_err(prl_block_status(bs, MiB, 1, &e), -EINVAL, NULL);
    tu_expect_err(prl_block_status(bs, 0, 0, &e), -EINVAL, NULL);
    tu_expect_err(prl_block_pread(bs, buf, 0, MiB + 1, 0), -EINVAL, NULL);
    /* Length 0 inside the image is a no-op. */
    assert_int_equal(prl_block_pread(bs, buf, 0, MiB, 0), 0);
    assert_int_equal(prl_block_pwrite(bs, buf, 0, 0, 0), 0);
    assert_int_equal(prl_block_zero(bs, 0, 0, 0), 0);
    assert_int_equal(prl_block_trim(bs, 0, 0, 0), 0);

    /* Flags not meaningful to the call. */
    tu_expect_err(prl_block_pread(bs, buf, 512, 0, PRL_REQ_FUA), -EINVAL,
                  "flags");
    tu_expect_err(prl_block_pwrite(bs, buf, 512, 0, PRL_REQ_NO_UNMAP), -EINVAL,
                  "flags");
    tu_expect_err(prl_block_pwrite(bs, buf, 512, 0, PRL_REQ_FAST_ZERO), -EINVAL,
                  "flags");
    tu_expect_err(prl_block_trim(bs, 512, 0, PRL_REQ_NO_UNMAP), -EINVAL,
                  "flags");
    tu_expect_err(prl_block_zero(bs, 512, 0, 1u << 7), -EINVAL, "flags");
    tu_expect_err(prl_block_pwrite(bs, buf, 512, 0, 1u << 31), -EINVAL,
                  "flags");
    /* None of the refused writes reached the file. */
    all = tu_read_file(p, &len);
    assert_int_equal(len, MiB);
    assert_true(tu_all(all, len, 0));
    free(all);
    tu_close(bs);
}

static void test_probe(void **state)
{
    struct prl_block *bs;
    uint8_t junk[4096];
    const char *names[] = {"junk.hdd", "junk.HDS", "junk.Hdd"};
    const char *p, *pp;

    (void)state;
    memset(junk, 0x42, sizeof(junk));

    /* Named like a Parallels image, but no magic: an error, never raw. */
    for (size_t i = 0; i < TU_COUNT(names); i++) {
        p = tu_path(names[i]);
        tu_write_file(p, junk, sizeof(junk));
        tu_expect_err(prl_block_open(p, NULL, 0, &bs), -EINVAL, "magic");
        assert_null(bs);
        assert_non_null(strstr(prl_error_message(), "-f raw"));
        /* Explicitly raw works. */
        bs = tu_open(p, "raw", 0);
        assert_string_equal(prl_block_format(bs), "raw");
        assert_int_equal(prl_block_size(bs), sizeof(junk));
        tu_close(bs);
    }
    /* Empty and tiny .hdd files too. */
    p = tu_path("empty.hdd");
    tu_write_file(p, "", 0);
    tu_expect_err(prl_block_open(p, NULL, 0, &bs), -EINVAL, NULL);
    tu_write_file(p, "Without", 7);
    tu_expect_err(prl_block_open(p, NULL, 0, &bs), -EINVAL, NULL);

    /* Other names without magic probe as raw. */
    p = tu_path("junk.img");
    tu_write_file(p, junk, sizeof(junk));
    bs = tu_open(p, NULL, 0);
    assert_string_equal(prl_block_format(bs), "raw");
    tu_close(bs);

    /* The Parallels magic wins whatever the name. */
    pp = tu_path("image.raw");
    tu_create(pp, "parallels", MiB, NULL);
    bs = tu_open(pp, NULL, 0);
    assert_string_equal(prl_block_format(bs), "parallels");
    assert_int_equal(prl_block_size(bs), MiB);
    tu_close(bs);
    /* ... unless raw is asked for. */
    bs = tu_open(pp, "raw", 0);
    assert_string_equal(prl_block_format(bs), "raw");
    assert_int_equal(prl_block_size(bs), tu_file_size(pp));
    tu_close(bs);

    tu_expect_err(prl_block_open(pp, "vmdk", 0, &bs), -EINVAL, "vmdk");
    assert_null(bs);
    tu_expect_err(prl_block_open(tu_path("missing.hdd"), NULL, 0, &bs), -ENOENT,
                  "missing.hdd");
    tu_expect_err(prl_block_open(tu_dir(), NULL, 0, &bs), -EISDIR, NULL);
    /* -f parallels on a file without the magic names the magic. */
    tu_expect_err(prl_block_open(p, "parallels", 0, &bs), -EINVAL, "magic");
}

static void test_raw_resize(void **state)
{
    const char *p = tu_path("resize.raw");
    struct prl_block *bs;
    uint8_t buf[512];

    (void)state;
    memset(buf, 3, sizeof(buf));
    tu_create(p, "raw", MiB, NULL);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    assert_int_equal(prl_block_resize(bs, 3 * MiB, false), 0);
    assert_int_equal(prl_block_size(bs), 3 * MiB);
    assert_int_equal(tu_file_size(p), 3 * MiB);
    assert_int_equal(prl_block_pwrite(bs, buf, 512, 3 * MiB - 512, 0), 0);
    /* Shrinking needs the shrink flag (the errno is test_raw_shrink_errno's
     * business). */
    assert_true(prl_block_resize(bs, MiB, false) < 0);
    assert_int_equal(prl_block_size(bs), 3 * MiB);
    assert_int_equal(tu_file_size(p), 3 * MiB);
    assert_int_equal(prl_block_resize(bs, MiB, true), 0);
    assert_int_equal(prl_block_size(bs), MiB);
    assert_int_equal(tu_file_size(p), MiB);
    tu_expect_err(prl_block_pread(bs, buf, 512, MiB, 0), -EINVAL, NULL);
    tu_close(bs);
}

/* prl/block.h: "Shrinking below allocated data fails with -ENOTEMPTY
 * unless |shrink| is true" -- for raw every byte is allocated data. */
static void test_raw_shrink_errno(void **state)
{
    const char *p = tu_path("shrink.raw");
    struct prl_block *bs;

    (void)state;
    tu_create(p, "raw", 2 * MiB, NULL);
    bs = tu_open(p, NULL, PRL_OPEN_RDWR);
    tu_expect_err(prl_block_resize(bs, MiB, false), -ENOTEMPTY, "shrink");
    assert_int_equal(prl_block_size(bs), 2 * MiB);
    tu_close(bs);
    assert_int_equal(tu_file_size(p), 2 * MiB);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_raw_create),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_raw_io),
        cmocka_unit_test(test_raw_status),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_probe),
        cmocka_unit_test(test_raw_resize),
        cmocka_unit_test(test_raw_shrink_errno),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
