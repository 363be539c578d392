/* SPDX-License-Identifier: MIT */
/* Unit tests of lib/block/bitmap.c: the word-at-a-time scan and
 * prl_bitmap_status against a naive bit-by-bit reference, on random
 * bitmaps with odd sizes, starts and lengths. */
#include "testutil.h"

#include "block/bitmap.h"
#include "common/util.h"
#include "prl/bitmap.h"
#include "prl/block.h"

#include <stdio.h>
#include <string.h>

static const uint8_t test_id[16] = {1, 2,  3,  4,  5,  6,  7,  8,
                                    9, 10, 11, 12, 13, 14, 15, 16};

/* The first bit in [start, end) equal to |set|, one bit at a time. */
static uint64_t naive_find(const struct prl_dirty_bitmap *b, uint64_t start,
                           uint64_t end, bool set)
{
    for (uint64_t i = start; i < end; i++) {
        if (prl_dirty_bitmap_get(b, i) == set) {
            return i;
        }
    }
    return end;
}

/* Fill |b| with runs of random lengths (short and long, so that whole
 * words of 0 and of 1 occur as well as mixed ones). */
static void random_runs(struct prl_dirty_bitmap *b, uint64_t *rng)
{
    uint64_t i = 0;

    memset(b->bits, 0, (size_t)prl_dirty_bitmap_bytes(b));
    while (i < b->nbits) {
        uint64_t r = tu_rand(rng);
        uint64_t len = r % 4 == 0 ? r % 300 : r % 9 + 1;
        bool set = (r >> 20) & 1;

        for (uint64_t j = i; j < i + len && j < b->nbits; j++) {
            if (set) {
                b->bits[j / 8] |= (uint8_t)(1u << (j % 8));
            }
        }
        i += len;
    }
    /* Bits past nbits in the last byte are set: a bitmap loaded from disk
     * may have them, and they must read as clear. */
    if (b->nbits % 8) {
        b->bits[b->nbits / 8] |= (uint8_t)(0xff << (b->nbits % 8));
    }
}

static void test_find_random(void **state)
{
    uint64_t rng = 0x5eed;

    (void)state;
    for (int round = 0; round < 200; round++) {
        /* nbits from 1 to ~2000: tails of every length past a word. */
        uint64_t nbits = tu_rand(&rng) % 2000 + 1;
        struct prl_dirty_bitmap *b =
            prl_dirty_bitmap_new(test_id, 512, nbits * 512 - 7);

        assert_non_null(b);
        assert_int_equal(b->nbits, nbits);
        random_runs(b, &rng);
        for (int q = 0; q < 200; q++) {
            uint64_t start = tu_rand(&rng) % (nbits + 70);
            uint64_t end = start + tu_rand(&rng) % (nbits + 70);
            bool set = tu_rand(&rng) & 1;
            uint64_t want = naive_find(b, start, end, set);
            uint64_t got = prl_dirty_bitmap_find(b, start, end, set);

            if (got != want) {
                fail_msg("nbits %llu: find(%llu, %llu, %d) = %llu, want %llu",
                         (unsigned long long)nbits, (unsigned long long)start,
                         (unsigned long long)end, set, (unsigned long long)got,
                         (unsigned long long)want);
            }
        }
        prl_dirty_bitmap_free(b);
    }
}

static void test_find_edges(void **state)
{
    struct prl_dirty_bitmap *b = prl_dirty_bitmap_new(test_id, 512, 130 * 512);

    (void)state;
    assert_non_null(b);
    /* All clear: no set bit anywhere; the first clear bit is the start. */
    assert_int_equal(prl_dirty_bitmap_find(b, 0, 130, true), 130);
    assert_int_equal(prl_dirty_bitmap_find(b, 5, 130, false), 5);
    assert_int_equal(prl_dirty_bitmap_find(b, 7, 7, false), 7);
    /* Bits past nbits read as clear. */
    memset(b->bits, 0xff, (size_t)prl_dirty_bitmap_bytes(b));
    assert_int_equal(prl_dirty_bitmap_find(b, 0, 200, false), 130);
    assert_int_equal(prl_dirty_bitmap_find(b, 63, 64, true), 63);
    assert_int_equal(prl_dirty_bitmap_find(b, 64, 130, false), 130);
    /* One clear bit at each word boundary. */
    b->bits[63 / 8] &= (uint8_t) ~(1u << (63 % 8));
    b->bits[128 / 8] &= (uint8_t) ~(1u << (128 % 8));
    assert_int_equal(prl_dirty_bitmap_find(b, 0, 130, false), 63);
    assert_int_equal(prl_dirty_bitmap_find(b, 64, 130, false), 128);
    assert_int_equal(prl_dirty_bitmap_find(b, 64, 128, false), 128);
    assert_int_equal(prl_dirty_bitmap_find(b, 129, 130, false), 130);
    prl_dirty_bitmap_free(b);

    /* A last word of 63 bits, its padding bit set. */
    b = prl_dirty_bitmap_new(test_id, 512, 127 * 512);
    assert_non_null(b);
    memset(b->bits, 0xff, (size_t)prl_dirty_bitmap_bytes(b));
    assert_int_equal(prl_dirty_bitmap_find(b, 64, 128, false), 127);
    assert_int_equal(prl_dirty_bitmap_find(b, 0, 1000, false), 127);
    prl_dirty_bitmap_free(b);
}

/* prl_bitmap_status on a Parallels image against the same walk made one
 * granule at a time through prl_dirty_bitmap_get's view of the writes. */
static void test_status_random(void **state)
{
    static const uint64_t grans[] = {512, 4096, 65536};
    uint64_t rng = 0xb17;

    (void)state;
    for (size_t g = 0; g < PRL_ARRAY_SIZE(grans); g++) {
        uint64_t gran = grans[g];
        /* An odd disk size: the last granule is partial. */
        uint64_t size = gran * 700 + 4608;
        uint64_t nbits = (size + gran - 1) / gran;
        bool *dirty = calloc(nbits, sizeof(*dirty));
        char path[64], name[PRL_BITMAP_NAME_SIZE];
        struct prl_block *bs;
        uint8_t buf[512] = {1};

        assert_non_null(dirty);
        snprintf(path, sizeof(path), "st%zu.hdd", g);
        tu_create(tu_path(path), "parallels", size, "cluster_size=1M");
        bs = tu_open(tu_path(path), "parallels", PRL_OPEN_RDWR);
        assert_int_equal(prl_bitmap_add(bs, "auto", gran, name), 0);
        /* Writes of 512 bytes at sector offsets mark one granule; zero
         * requests of random odd lengths mark runs. */
        for (int i = 0; i < 120; i++) {
            uint64_t off = tu_rand(&rng) % (size / 512) * 512;
            uint64_t len = 512;

            if (i % 3 == 0) {
                len = PRL_MIN(size - off, tu_rand(&rng) % (gran * 90) + 1);
                len = (len + 511) / 512 * 512;
                len = PRL_MIN(len, size - off);
                assert_int_equal(prl_block_zero(bs, len, off, 0), 0);
            } else {
                assert_int_equal(prl_block_pwrite(bs, buf, len, off, 0), 0);
            }
            for (uint64_t k = off / gran; k <= (off + len - 1) / gran; k++) {
                dirty[k] = true;
            }
        }
        for (int q = 0; q < 400; q++) {
            uint64_t off = tu_rand(&rng) % size;
            uint64_t len = tu_rand(&rng) % (size - off) + 1;
            uint64_t pnum, want = 0;
            bool d;
            bool first = dirty[off / gran];

            assert_int_equal(prl_bitmap_status(bs, name, off, len, &d, &pnum),
                             0);
            /* Naive: extend granule by granule while the state holds. */
            for (uint64_t pos = off; pos < off + len;) {
                uint64_t next = (pos / gran + 1) * gran;

                if (dirty[pos / gran] != first) {
                    break;
                }
                want += PRL_MIN(next, off + len) - pos;
                pos = next;
            }
            if (d != first || pnum != want) {
                fail_msg("gran %llu: status(%llu, %llu) = %d %llu, want %d "
                         "%llu",
                         (unsigned long long)gran, (unsigned long long)off,
                         (unsigned long long)len, d, (unsigned long long)pnum,
                         first, (unsigned long long)want);
            }
        }
        tu_close(bs);
        free(dirty);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find_edges),
        cmocka_unit_test(test_find_random),
        cmocka_unit_test(test_status_random),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
