/* SPDX-License-Identifier: MIT */
/* Unit tests of lib/common/opts.c: size strings and option lists. */
#include "testutil.h"

#include "common/opts.h"
#include "prl/error.h"

#include <errno.h>
#include <string.h>

static void expect_size(const char *s, uint64_t want)
{
    uint64_t v = 0xdeadbeef;
    int r = prl_parse_size(s, "size", &v);

    if (r != 0) {
        fail_msg("prl_parse_size(\"%s\") = %d (%s), want %llu", s, r,
                 prl_error_message(), (unsigned long long)want);
    }
    if (v != want) {
        fail_msg("prl_parse_size(\"%s\") gave %llu, want %llu", s,
                 (unsigned long long)v, (unsigned long long)want);
    }
}

static void expect_bad_size(const char *s, int err)
{
    uint64_t v = 12345;
    int r;

    prl_error_clear();
    r = prl_parse_size(s, "cluster_size", &v);
    if (r != -err) {
        fail_msg("prl_parse_size(\"%s\") = %d, want %d", s ? s : "(null)", r,
                 -err);
    }
    /* Nothing is stored on failure, and the message names what was
     * parsed. */
    assert_int_equal(v, 12345);
    assert_non_null(strstr(prl_error_message(), "cluster_size"));
}

static void test_size_plain(void **state)
{
    (void)state;
    expect_size("0", 0);
    expect_size("1", 1);
    expect_size("512", 512);
    expect_size("32256", 32256);
    expect_size("18446744073709551615", UINT64_MAX);
}

static void test_size_suffixes(void **state)
{
    (void)state;
    expect_size("1b", 1);
    expect_size("7B", 7);
    expect_size("1k", 1024);
    expect_size("1K", 1024);
    expect_size("4k", 4096);
    expect_size("1M", 1u << 20);
    expect_size("1m", 1u << 20);
    expect_size("10G", 10ull << 30);
    expect_size("16T", 16ull << 40);
    expect_size("3P", 3ull << 50);
    expect_size("1E", 1ull << 60);
    expect_size("15E", 15ull << 60);
    expect_size("1KiB", 1024);
    expect_size("2MiB", 2u << 20);
    expect_size("63k", 63 * 1024);
}

static void test_size_fractions(void **state)
{
    (void)state;
    expect_size("1.5M", 3u << 19);
    expect_size("0.5K", 512);
    expect_size("0.25G", 1u << 28);
    expect_size("1.5k", 1536);
    /* Rounded down to whole bytes: 0.1 KiB = 102.4 bytes. */
    expect_size("0.1K", 102);
    expect_size("2.75T", (11ull << 40) / 4);
}

static void test_size_overflow(void **state)
{
    (void)state;
    expect_bad_size("18446744073709551616", ERANGE);
    expect_bad_size("99999999999999999999999", ERANGE);
    expect_bad_size("16E", ERANGE);
    expect_bad_size("16384P", ERANGE);
    expect_bad_size("17179869184G", ERANGE);
    expect_bad_size("16.0E", ERANGE);
    expect_size("15.5E", 31ull << 59);
}

static void test_size_garbage(void **state)
{
    (void)state;
    expect_bad_size(NULL, EINVAL);
    expect_bad_size("", EINVAL);
    expect_bad_size("abc", EINVAL);
    expect_bad_size("-1", EINVAL);
    expect_bad_size("+1", EINVAL);
    expect_bad_size(" 1", EINVAL);
    expect_bad_size("1 ", EINVAL);
    expect_bad_size("1 K", EINVAL);
    expect_bad_size("1X", EINVAL);
    expect_bad_size("1KB", EINVAL);
    expect_bad_size("1Kx", EINVAL);
    expect_bad_size("1.5.5M", EINVAL);
    expect_bad_size("0x10", EINVAL);
    expect_bad_size(".5M", EINVAL);
    expect_bad_size("1.5", EINVAL); /* fractional bytes */
    expect_bad_size("1.5b", EINVAL);
    expect_bad_size("M", EINVAL);
}

static void test_opts_parse(void **state)
{
    struct prl_opts o;

    (void)state;
    assert_int_equal(prl_opts_parse(&o, NULL), 0);
    assert_int_equal(o.n, 0);
    prl_opts_free(&o);
    assert_int_equal(prl_opts_parse(&o, ""), 0);
    assert_int_equal(o.n, 0);
    prl_opts_free(&o);

    assert_int_equal(prl_opts_parse(&o, "cluster_size=1M,subformat=ext,"
                                        "flag"),
                     0);
    assert_int_equal(o.n, 3);
    assert_string_equal(o.v[0].key, "cluster_size");
    assert_string_equal(o.v[0].value, "1M");
    assert_string_equal(o.v[1].key, "subformat");
    assert_string_equal(o.v[1].value, "ext");
    assert_string_equal(o.v[2].key, "flag");
    assert_string_equal(o.v[2].value, "");
    for (size_t i = 0; i < o.n; i++) {
        assert_false(o.v[i].used);
    }
    prl_opts_free(&o);
    assert_int_equal(o.n, 0);
    assert_null(o.v);

    /* A value may itself contain '='. */
    assert_int_equal(prl_opts_parse(&o, "a=b=c"), 0);
    assert_int_equal(o.n, 1);
    assert_string_equal(o.v[0].key, "a");
    assert_string_equal(o.v[0].value, "b=c");
    prl_opts_free(&o);

    /* Empty items between commas are skipped. */
    assert_int_equal(prl_opts_parse(&o, "a=1,"), 0);
    assert_int_equal(o.n, 1);
    prl_opts_free(&o);
}

static void test_opts_comma_escape(void **state)
{
    struct prl_opts o;

    (void)state;
    assert_int_equal(prl_opts_parse(&o, "file=a,,b,x=1"), 0);
    assert_int_equal(o.n, 2);
    assert_string_equal(o.v[0].key, "file");
    assert_string_equal(o.v[0].value, "a,b");
    assert_string_equal(o.v[1].key, "x");
    assert_string_equal(o.v[1].value, "1");
    prl_opts_free(&o);

    assert_int_equal(prl_opts_parse(&o, "v=,,,,"), 0);
    assert_int_equal(o.n, 1);
    assert_string_equal(o.v[0].value, ",,");
    prl_opts_free(&o);

    /* ",,," is an escaped comma followed by a separator. */
    assert_int_equal(prl_opts_parse(&o, "a=x,,,b=2"), 0);
    assert_int_equal(o.n, 2);
    assert_string_equal(o.v[0].value, "x,");
    assert_string_equal(o.v[1].key, "b");
    assert_string_equal(o.v[1].value, "2");
    prl_opts_free(&o);
}

static void test_opts_empty_name(void **state)
{
    struct prl_opts o;

    (void)state;
    assert_int_equal(prl_opts_parse(&o, "=1"), -EINVAL);
    assert_int_equal(o.n, 0);
    assert_int_equal(prl_opts_parse(&o, "a=1,=2"), -EINVAL);
    assert_int_equal(o.n, 0);
    assert_null(o.v);
}

static void test_opts_get_and_unused(void **state)
{
    struct prl_opts o;
    uint64_t v = 77;

    (void)state;
    assert_int_equal(prl_opts_parse(&o, "a=1,cluster_size=64k,a=2,"
                                        "bogus=3,c=x"),
                     0);
    /* The last occurrence wins, and both copies count as used. */
    assert_string_equal(prl_opts_get(&o, "a"), "2");
    assert_true(o.v[0].used);
    assert_true(o.v[2].used);
    assert_null(prl_opts_get(&o, "missing"));

    assert_int_equal(prl_opts_get_size(&o, "nothere", &v), 0);
    assert_int_equal(v, 77);
    assert_int_equal(prl_opts_get_size(&o, "cluster_size", &v), 1);
    assert_int_equal(v, 65536);

    prl_error_clear();
    assert_int_equal(prl_opts_check_unused(&o, "parallels"), -EINVAL);
    assert_non_null(strstr(prl_error_message(), "'bogus'"));
    assert_non_null(strstr(prl_error_message(), "parallels"));

    assert_non_null(prl_opts_get(&o, "bogus"));
    assert_int_equal(prl_opts_check_unused(&o, "parallels"), -EINVAL);
    assert_non_null(strstr(prl_error_message(), "'c'"));
    assert_non_null(prl_opts_get(&o, "c"));
    assert_int_equal(prl_opts_check_unused(&o, "parallels"), 0);
    prl_opts_free(&o);
}

static void test_opts_get_size_malformed(void **state)
{
    struct prl_opts o;
    uint64_t v = 77;

    (void)state;
    assert_int_equal(prl_opts_parse(&o, "cluster_size=12Q"), 0);
    prl_error_clear();
    assert_int_equal(prl_opts_get_size(&o, "cluster_size", &v), -EINVAL);
    assert_int_equal(v, 77);
    assert_non_null(strstr(prl_error_message(), "cluster_size"));
    assert_non_null(strstr(prl_error_message(), "12Q"));
    /* A malformed option was still asked for, so it is not "unused". */
    assert_int_equal(prl_opts_check_unused(&o, "x"), 0);
    prl_opts_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_plain),
        cmocka_unit_test(test_size_suffixes),
        cmocka_unit_test(test_size_fractions),
        cmocka_unit_test(test_size_overflow),
        cmocka_unit_test(test_size_garbage),
        cmocka_unit_test(test_opts_parse),
        cmocka_unit_test(test_opts_comma_escape),
        cmocka_unit_test(test_opts_empty_name),
        cmocka_unit_test(test_opts_get_and_unused),
        cmocka_unit_test(test_opts_get_size_malformed),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
