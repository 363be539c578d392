/* SPDX-License-Identifier: MIT */
/* Fuzz target for the image parsers: the input is an image file, opened
 * by probing and as Parallels, read-only (info, a block-status walk,
 * bounded reads checked against the file) and read-write on a copy
 * (write, zero, trim, resize, close, reopen, read back). */
#include "prl/bitmap.h"
#include "prl/block.h"
#include "prl/error.h"
#include "prl/log.h"

#include "fuzz-util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Whatever size a header claims, one open reads at most this many guest
 * bytes, so a 16 EiB disk costs no more than a 1 MiB one. */
#define READ_BUDGET (4u << 20)
/* Longest block-status walk per open, in extents. */
#define MAX_EXTENTS 4096
/* Largest single read, bytes. */
#define CHUNK (256u << 10)
/* The read-write pass only runs on clusters up to this size (bytes), so a
 * few allocating writes never touch gigabytes. */
#define RW_MAX_CLUSTER (1u << 20)
/* The bitmap the read-write pass adds. */
#define FUZZ_BITMAP "0f0f0f0f-1234-4abc-8def-00000000b17a"
/* Longest dirty-extent walk per bitmap. */
#define MAX_BITMAP_EXTENTS 1024

struct input {
    const uint8_t *data;
    size_t size;
};

static uint8_t *buf_a, *buf_b;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Open warnings (dirty images) are expected; keep the output quiet. */
    prl_log_set_handler(NULL, NULL, PRL_LOG_ERROR);
    fuzz_limit_files();
    buf_a = malloc(CHUNK);
    buf_b = malloc(CHUNK);
    if (!buf_a || !buf_b) {
        abort();
    }
    return 0;
}

/* FNV-1a: a stable way to derive the read-write pass's offsets from the
 * input, so the fuzzer can steer them. */
static uint64_t hash_input(const uint8_t *data, size_t size)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < size; i++) {
        h = (h ^ data[i]) * 0x100000001b3ull;
    }
    return h;
}

static uint64_t next_rand(uint64_t *state)
{
    /* splitmix64 */
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

/* Read [off, off+len) (len <= CHUNK) into buf_a, and again in two pieces
 * split at an odd point into buf_b: both must agree.  Returns false when
 * the read failed (cleanly). */
static bool read_checked(struct prl_block *bs, uint64_t off, size_t len,
                         uint64_t *budget)
{
    size_t half = len / 2 | 1;

    if (len == 0 || *budget < 2 * (uint64_t)len) {
        return false;
    }
    *budget -= 2 * (uint64_t)len;
    if (prl_block_pread(bs, buf_a, len, off, 0) < 0) {
        return false;
    }
    if (half > len) {
        half = len;
    }
    if (prl_block_pread(bs, buf_b, half, off, 0) == 0 &&
        prl_block_pread(bs, buf_b + half, len - half, off + half, 0) == 0) {
        CHECK(memcmp(buf_a, buf_b, len) == 0);
    }
    return true;
}

/* Walk block status over the whole disk (bounded), checking what each
 * extent promises against reads and against the file's bytes. */
static void walk_status(struct prl_block *bs, const struct input *in,
                        uint64_t *budget)
{
    uint64_t size = prl_block_size(bs), off = 0;

    for (int i = 0; off < size && i < MAX_EXTENTS; i++) {
        struct prl_extent ext;
        size_t n;

        if (prl_block_status(bs, off, size - off, &ext) < 0) {
            return;
        }
        CHECK(ext.length > 0 && ext.length <= size - off);
        n = ext.length < 4096 ? (size_t)ext.length : 4096;
        if (i < 64 && read_checked(bs, off, n, budget)) {
            if (ext.flags & PRL_EXT_ZERO) {
                CHECK(all_zero(buf_a, n));
            }
            if ((ext.flags & PRL_EXT_DATA) && (ext.flags & PRL_EXT_OFFSET) &&
                ext.depth == 1) {
                /* The data lives at ext.offset of this very file; bytes
                 * past its end read as zeroes. */
                for (size_t k = 0; k < n; k++) {
                    uint64_t h = ext.offset + k;
                    uint8_t want = h < in->size ? in->data[h] : 0;
                    CHECK(buf_a[k] == want);
                }
            }
        }
        off += ext.length;
    }
}

static void read_some(struct prl_block *bs, uint64_t *budget)
{
    uint64_t size = prl_block_size(bs);
    const uint64_t starts[] = {0, size / 3, size / 2 - 1000,
                               size > CHUNK ? size - CHUNK : 0, size - 1};

    for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
        uint64_t off = starts[i];
        if (off >= size) {
            continue;
        }
        uint64_t len = size - off < CHUNK ? size - off : CHUNK;
        /* The read-ahead hint walks the same extents: it may fail on a
         * damaged image, but only cleanly. */
        prl_block_cache(bs, len, off);
        read_checked(bs, off, (size_t)len, budget);
    }
    /* Past the end must fail, not read. */
    CHECK(prl_block_pread(bs, buf_a, 1, size, 0) < 0);
    CHECK(prl_block_cache(bs, 1, size) < 0);
}

/* Every bitmap of the image lists with a sane granularity, and a
 * consistent one answers dirty-status queries over the whole disk. */
static void walk_bitmaps(struct prl_block *bs)
{
    struct prl_bitmap_info *bm = NULL;
    uint64_t size = prl_block_size(bs);
    size_t n = 0;

    if (prl_bitmap_list(bs, &bm, &n) < 0) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t off = 0;

        CHECK(bm[i].granularity >= 512 &&
              (bm[i].granularity & (bm[i].granularity - 1)) == 0);
        CHECK(memchr(bm[i].name, '\0', sizeof(bm[i].name)) != NULL);
        for (int k = 0; off < size && k < MAX_BITMAP_EXTENTS; k++) {
            bool dirty;
            uint64_t pnum = 0;

            if (prl_bitmap_status(bs, bm[i].name, off, size - off, &dirty,
                                  &pnum) < 0) {
                break;
            }
            CHECK(pnum > 0 && pnum <= size - off);
            off += pnum;
        }
    }
    free(bm);
}

static void exercise_ro(const struct input *in, const char *path,
                        const char *format)
{
    struct prl_block *bs;
    struct prl_image_info info;
    uint64_t budget = READ_BUDGET;

    if (prl_block_open(path, format, 0, &bs) < 0) {
        CHECK(bs == NULL);
        CHECK(prl_error_message() != NULL);
        return;
    }
    CHECK(!(prl_block_caps(bs) & PRL_CAP_WRITE));
    if (prl_block_info(bs, &info) == 0) {
        CHECK(info.virtual_size == prl_block_size(bs));
        CHECK(info.read_only);
        CHECK(info.format && strcmp(info.format, prl_block_format(bs)) == 0);
    }
    /* Writes on a read-only handle are refused. */
    CHECK(prl_block_pwrite(bs, buf_a, 1, 0, 0) < 0);
    walk_status(bs, in, &budget);
    read_some(bs, &budget);
    walk_bitmaps(bs);
    prl_block_close(bs);
}

/* Read-write on a private copy: a few changes at input-derived offsets,
 * then close.  When every step succeeded the image must reopen and hold
 * the last write; when one failed, reopening must fail or succeed
 * cleanly. */
static void exercise_rw(const struct input *in)
{
    char path[64];
    struct prl_block *bs;
    struct prl_image_info info;
    uint64_t rng = hash_input(in->data, in->size), size, cs;
    uint64_t w_off = 0, w_len = 0, budget = READ_BUDGET;
    uint8_t pattern = 0;
    bool ok = true;
    int fd = fuzz_memfd("prl-fuzz-rw", in->data, in->size, path, sizeof(path));

    if (prl_block_open(path, "parallels", PRL_OPEN_RDWR, &bs) < 0) {
        close(fd);
        return;
    }
    size = prl_block_size(bs);
    if (prl_block_info(bs, &info) < 0 || info.cluster_size == 0 ||
        info.cluster_size > RW_MAX_CLUSTER || size == 0) {
        prl_block_close(bs);
        close(fd);
        return;
    }
    cs = info.cluster_size;

    /* Three rounds of write / zero / trim at random places; each length
     * stays under CHUNK. */
    for (int round = 0; round < 3 && ok; round++) {
        uint64_t off = next_rand(&rng) % size;
        uint64_t len = 1 + next_rand(&rng) % (2 * cs);
        unsigned flags = (next_rand(&rng) & 1) ? PRL_REQ_FUA : 0;

        len = len > CHUNK ? CHUNK : len;
        len = len > size - off ? size - off : len;
        pattern = (uint8_t)(0x41 + round);
        memset(buf_a, pattern, (size_t)len);
        ok = prl_block_pwrite(bs, buf_a, len, off, flags) == 0;
        if (!ok) {
            break;
        }
        if (prl_block_pread(bs, buf_b, len, off, 0) == 0) {
            CHECK(memcmp(buf_a, buf_b, (size_t)len) == 0);
        }
        off = next_rand(&rng) % size;
        len = 1 + next_rand(&rng) % (3 * cs);
        len = len > size - off ? size - off : len;
        flags = (next_rand(&rng) & 1) ? PRL_REQ_NO_UNMAP : 0;
        ok = prl_block_zero(bs, len, off, flags) == 0;
        if (ok) {
            /* A zeroed range reads back as zeroes at once. */
            size_t n = len > CHUNK ? CHUNK : (size_t)len;
            if (prl_block_pread(bs, buf_b, n, off, 0) == 0) {
                CHECK(all_zero(buf_b, n));
            }
        }
        off = next_rand(&rng) % size;
        len = 1 + next_rand(&rng) % (3 * cs);
        len = len > size - off ? size - off : len;
        ok = ok && prl_block_trim(bs, len, off, 0) == 0;
    }

    /* Grow by two clusters and shrink back: the original range keeps its
     * contents. */
    if (ok && size <= UINT64_MAX - 4 * cs) {
        size_t n = size < CHUNK ? (size_t)size : CHUNK;
        bool before = prl_block_pread(bs, buf_b, n, 0, 0) == 0;

        ok = prl_block_resize(bs, size + 2 * cs, false) == 0;
        if (ok) {
            CHECK(prl_block_size(bs) >= size + 2 * cs);
            ok = prl_block_resize(bs, size, true) == 0;
            ok = ok && prl_block_size(bs) == size;
        }
        if (ok && before && prl_block_pread(bs, buf_a, n, 0, 0) == 0) {
            CHECK(memcmp(buf_a, buf_b, n) == 0);
        }
    }

    /* A bitmap added now must see the last write; adding may fail
     * cleanly (no room in the Format Extension, or a name clash). */
    bool bitmap = ok && prl_bitmap_add(bs, FUZZ_BITMAP, 0, NULL) == 0;

    /* The last write, remembered for the reopen. */
    if (ok) {
        w_off = next_rand(&rng) % size;
        w_len = 1 + next_rand(&rng) % cs;
        w_len = w_len > CHUNK ? CHUNK : w_len;
        w_len = w_len > size - w_off ? size - w_off : w_len;
        pattern = 0x5a;
        memset(buf_a, pattern, (size_t)w_len);
        ok = prl_block_pwrite(bs, buf_a, w_len, w_off, 0) == 0;
    }
    ok = ok && prl_block_flush(bs) == 0;
    if (prl_block_close(bs) < 0) {
        ok = false;
    }

    if (prl_block_open(path, "parallels", 0, &bs) < 0) {
        /* A clean close of a valid image leaves a valid image. */
        if (ok) {
            fprintf(stderr, "reopen failed: %s\n", prl_error_message());
        }
        CHECK(!ok);
        close(fd);
        return;
    }
    if (ok) {
        CHECK(prl_block_size(bs) == size);
        CHECK(prl_block_pread(bs, buf_b, w_len, w_off, 0) == 0);
        for (uint64_t k = 0; k < w_len; k++) {
            CHECK(buf_b[k] == pattern);
        }
        if (bitmap) {
            bool dirty = false;
            uint64_t pnum = 0;
            int r =
                prl_bitmap_status(bs, FUZZ_BITMAP, w_off, w_len, &dirty, &pnum);
            if (r < 0) {
                fprintf(stderr, "bitmap after reopen: %s\n",
                        prl_error_message());
            }
            CHECK(r == 0 && dirty);
        }
    }
    read_some(bs, &budget);
    prl_block_close(bs);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = {data, size};
    char path[64];
    int fd;

    if (!buf_a) {
        LLVMFuzzerInitialize(NULL, NULL);
    }
    fd = fuzz_memfd("prl-fuzz-ro", data, size, path, sizeof(path));
    exercise_ro(&in, path, NULL);
    exercise_ro(&in, path, "parallels");
    close(fd);
    exercise_rw(&in);
    prl_error_clear();
    return 0;
}
