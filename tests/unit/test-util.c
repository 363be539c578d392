/* SPDX-License-Identifier: MIT */
/* Unit tests of lib/common/util: the zero test, rounding, checked
 * arithmetic and the allocation wrappers. */
#include "testutil.h"

#include "common/util.h"

#include <string.h>
#include <unistd.h>

static void test_is_zero_small(void **state)
{
    /* Every length 0..40, every position of a single non-zero byte, at
     * every alignment 0..7 of the buffer start. */
    uint8_t raw[64 + 8];

    (void)state;
    for (size_t align = 0; align < 8; align++) {
        uint8_t *buf = raw + align;
        for (size_t len = 0; len <= 40; len++) {
            memset(raw, 0, sizeof(raw));
            /* Bytes just outside the range must not matter. */
            if (align > 0) {
                buf[-1] = 0xff;
            }
            buf[len] = 0xff;
            if (!prl_is_zero(buf, len)) {
                fail_msg("zero buffer of %zu bytes (align %zu) reported "
                         "non-zero",
                         len, align);
            }
            for (size_t pos = 0; pos < len; pos++) {
                for (unsigned v = 1; v < 256; v <<= 1) {
                    buf[pos] = (uint8_t)v;
                    if (prl_is_zero(buf, len)) {
                        fail_msg("byte %zu = 0x%02x of %zu (align %zu) "
                                 "missed",
                                 pos, v, len, align);
                    }
                    buf[pos] = 0;
                }
            }
        }
    }
}

static void test_is_zero_large(void **state)
{
    size_t len = 1 << 20;
    uint8_t *buf = calloc(1, len + 1);

    (void)state;
    assert_non_null(buf);
    buf[len] = 1;
    assert_true(prl_is_zero(buf, len));
    size_t positions[] = {0,       15,       16,       17,      4095,   4096,
                          len / 2, len - 17, len - 16, len - 2, len - 1};
    for (size_t i = 0; i < PRL_ARRAY_SIZE(positions); i++) {
        buf[positions[i]] = 0x80;
        if (prl_is_zero(buf, len)) {
            fail_msg("non-zero byte at %zu of %zu missed", positions[i], len);
        }
        buf[positions[i]] = 0;
    }
    free(buf);
}

static void test_rounding(void **state)
{
    (void)state;
    assert_int_equal(prl_round_down(0, 512), 0);
    assert_int_equal(prl_round_down(511, 512), 0);
    assert_int_equal(prl_round_down(512, 512), 512);
    assert_int_equal(prl_round_down(1000, 512), 512);
    assert_int_equal(prl_round_up(0, 512), 0);
    assert_int_equal(prl_round_up(1, 512), 512);
    assert_int_equal(prl_round_up(512, 512), 512);
    assert_int_equal(prl_round_up(513, 512), 1024);
    /* Not a power of two: the 63-sector cluster. */
    assert_int_equal(prl_round_down(70000, 32256), 64512);
    assert_int_equal(prl_round_up(70000, 32256), 96768);
    assert_int_equal(prl_round_up(64512, 32256), 64512);
    assert_int_equal(prl_round_up(10, 3), 12);
    assert_int_equal(prl_round_down(UINT64_MAX, 1), UINT64_MAX);
    assert_int_equal(prl_round_down(UINT64_MAX, 512), UINT64_MAX - 511);

    assert_int_equal(prl_div_round_up(0, 512), 0);
    assert_int_equal(prl_div_round_up(1, 512), 1);
    assert_int_equal(prl_div_round_up(512, 512), 1);
    assert_int_equal(prl_div_round_up(513, 512), 2);
    assert_int_equal(prl_div_round_up(UINT64_MAX, 2), 1ull << 63);
    assert_int_equal(prl_div_round_up(UINT64_MAX, 1), UINT64_MAX);
    assert_int_equal(prl_div_round_up(100000, 32256), 4);
}

static void test_round_up_checked(void **state)
{
    uint64_t r = 0;

    (void)state;
    assert_true(prl_round_up_checked(1, 512, &r));
    assert_int_equal(r, 512);
    assert_true(prl_round_up_checked(0, 512, &r));
    assert_int_equal(r, 0);
    assert_true(prl_round_up_checked(UINT64_MAX - 511, 512, &r));
    assert_int_equal(r, UINT64_MAX - 511);
    assert_false(prl_round_up_checked(UINT64_MAX - 510, 512, &r));
    assert_false(prl_round_up_checked(UINT64_MAX, 2, &r));
    assert_true(prl_round_up_checked(UINT64_MAX, 1, &r));
    assert_int_equal(r, UINT64_MAX);
}

static void test_power_of_2(void **state)
{
    (void)state;
    assert_false(prl_is_power_of_2(0));
    assert_true(prl_is_power_of_2(1));
    assert_true(prl_is_power_of_2(2));
    assert_false(prl_is_power_of_2(3));
    assert_true(prl_is_power_of_2(512));
    assert_false(prl_is_power_of_2(32256));
    assert_true(prl_is_power_of_2(1ull << 63));
    assert_false(prl_is_power_of_2(UINT64_MAX));
    for (int i = 0; i < 64; i++) {
        assert_true(prl_is_power_of_2(1ull << i));
        if (i > 1) {
            assert_false(prl_is_power_of_2((1ull << i) + 1));
            assert_false(prl_is_power_of_2((1ull << i) - 1));
        }
    }
}

static void test_overflow(void **state)
{
    uint64_t r64;
    uint32_t r32;

    (void)state;
    assert_false(prl_add_overflow((uint64_t)1, (uint64_t)2, &r64));
    assert_int_equal(r64, 3);
    assert_false(prl_add_overflow(UINT64_MAX - 1, (uint64_t)1, &r64));
    assert_int_equal(r64, UINT64_MAX);
    assert_true(prl_add_overflow(UINT64_MAX, (uint64_t)1, &r64));
    assert_true(prl_add_overflow(UINT32_MAX, 1u, &r32));
    /* The result type decides: a 64-bit sum into 32 bits overflows. */
    assert_true(prl_add_overflow((uint64_t)UINT32_MAX, (uint64_t)1, &r32));
    assert_false(prl_add_overflow((uint64_t)UINT32_MAX, (uint64_t)1, &r64));

    assert_false(prl_mul_overflow((uint64_t)1 << 31, (uint64_t)1 << 32, &r64));
    assert_int_equal(r64, 1ull << 63);
    assert_true(prl_mul_overflow((uint64_t)1 << 32, (uint64_t)1 << 32, &r64));
    assert_true(prl_mul_overflow((uint64_t)UINT32_MAX, (uint64_t)512, &r32));
    assert_false(prl_mul_overflow((uint64_t)UINT32_MAX, (uint64_t)512, &r64));
    assert_int_equal(r64, (uint64_t)UINT32_MAX * 512);

    assert_false(prl_sub_overflow((uint64_t)5, (uint64_t)5, &r64));
    assert_int_equal(r64, 0);
    assert_true(prl_sub_overflow((uint64_t)4, (uint64_t)5, &r64));
}

static void test_min_max(void **state)
{
    int a[7];

    (void)state;
    assert_int_equal(PRL_MIN(3, 4), 3);
    assert_int_equal(PRL_MAX(3, 4), 4);
    assert_int_equal(PRL_MIN(UINT64_MAX, 5ull), 5);
    assert_int_equal(PRL_ARRAY_SIZE(a), 7);
}

static void test_alloc(void **state)
{
    long page = sysconf(_SC_PAGESIZE);

    (void)state;
    void *p = prl_malloc(0);
    assert_non_null(p);
    free(p);
    uint8_t *z = prl_calloc(100, 3);
    assert_non_null(z);
    assert_true(tu_all(z, 300, 0));
    free(z);
    z = prl_calloc(0, 0);
    assert_non_null(z);
    free(z);
    for (size_t n = 0; n < 3; n++) {
        void *a = prl_alloc_aligned(n * 5000);
        assert_non_null(a);
        assert_int_equal((uintptr_t)a % (uintptr_t)page, 0);
        free(a);
    }
    {
        PRL_AUTOFREE char *s = prl_malloc(16);
        assert_non_null(s);
        strcpy(s, "freed on scope");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_is_zero_small),
        cmocka_unit_test(test_is_zero_large),
        cmocka_unit_test(test_rounding),
        cmocka_unit_test(test_round_up_checked),
        cmocka_unit_test(test_power_of_2),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_min_max),
        cmocka_unit_test(test_alloc),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
