/* SPDX-License-Identifier: MIT */
/* Unit tests of lib/block/parallels-format.c: the header codec against
 * bytes laid out by hand from parallels.rst, and every layout rule. */
#include "testutil.h"

#include "block/parallels-format.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define GiB (1ull << 30)

/* A header laid out by hand, independent of the codec. */
static void hand_header(uint8_t b[64], const char *magic)
{
    memset(b, 0, 64);
    memcpy(b, magic, 16);
    tu_put_le32(b, 16, 2);
    tu_put_le32(b, 20, 16);
    tu_put_le32(b, 24, 0x01020304);
    tu_put_le32(b, 28, 2048);
    tu_put_le32(b, 32, 0x11223344);
    tu_put_le64(b, 36, 0x0000000155667788ull);
    tu_put_le32(b, 44, 0x746F6E59);
    tu_put_le32(b, 48, 0x800);
    tu_put_le32(b, 52, 0x80000001);
    tu_put_le64(b, 56, 0xa1b2c3d4e5f60718ull);
}

static void test_field_offsets(void **state)
{
    (void)state;
    /* parallels.rst, "Header": the byte offsets of each field. */
    assert_int_equal(PARALLELS_OFF_VERSION, 16);
    assert_int_equal(PARALLELS_OFF_HEADS, 20);
    assert_int_equal(PARALLELS_OFF_CYLINDERS, 24);
    assert_int_equal(PARALLELS_OFF_TRACKS, 28);
    assert_int_equal(PARALLELS_OFF_BAT_ENTRIES, 32);
    assert_int_equal(PARALLELS_OFF_NB_SECTORS, 36);
    assert_int_equal(PARALLELS_OFF_IN_USE, 44);
    assert_int_equal(PARALLELS_OFF_DATA_OFF, 48);
    assert_int_equal(PARALLELS_OFF_FLAGS, 52);
    assert_int_equal(PARALLELS_OFF_EXT_OFF, 56);
    assert_int_equal(PARALLELS_HEADER_SIZE, 64);
    assert_int_equal(PARALLELS_IN_USE_DIRTY, 0x746F6E59);
    assert_int_equal(PARALLELS_IN_USE_CLEAN, 0x312e3276);
    assert_memory_equal(PARALLELS_MAGIC_EXT, "WithouFreSpacExt", 16);
    assert_memory_equal(PARALLELS_MAGIC_LEGACY, "WithoutFreeSpace", 16);
}

static void test_decode(void **state)
{
    uint8_t b[64];
    struct parallels_header h;

    (void)state;
    hand_header(b, "WithouFreSpacExt");
    memset(&h, 0xcc, sizeof(h));
    parallels_header_decode(b, &h);
    assert_true(h.ext);
    assert_true(h.magic_ok);
    assert_int_equal(h.version, 2);
    assert_int_equal(h.heads, 16);
    assert_int_equal(h.cylinders, 0x01020304);
    assert_int_equal(h.tracks, 2048);
    assert_int_equal(h.bat_entries, 0x11223344);
    assert_int_equal(h.nb_sectors, 0x0000000155667788ull);
    assert_int_equal(h.in_use, 0x746F6E59);
    assert_int_equal(h.data_off, 0x800);
    assert_int_equal(h.flags, 0x80000001);
    assert_int_equal(h.ext_off, 0xa1b2c3d4e5f60718ull);

    hand_header(b, "WithoutFreeSpace");
    parallels_header_decode(b, &h);
    assert_false(h.ext);
    assert_true(h.magic_ok);

    /* Near misses of either magic. */
    const char *bad[] = {"WithoutFreeSpacE", "WithouFreSpacExT",
                         "withoutFreeSpace", "WithoutFreeSpac\0",
                         "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"};
    for (size_t i = 0; i < TU_COUNT(bad); i++) {
        hand_header(b, bad[i]);
        parallels_header_decode(b, &h);
        assert_false(h.magic_ok);
        assert_false(h.ext);
    }
}

static void test_encode(void **state)
{
    uint8_t want[64], got[64];
    struct parallels_header h;

    (void)state;
    hand_header(want, "WithouFreSpacExt");
    memset(&h, 0, sizeof(h));
    h.ext = true;
    h.magic_ok = true;
    h.version = 2;
    h.heads = 16;
    h.cylinders = 0x01020304;
    h.tracks = 2048;
    h.bat_entries = 0x11223344;
    h.nb_sectors = 0x0000000155667788ull;
    h.in_use = 0x746F6E59;
    h.data_off = 0x800;
    h.flags = 0x80000001;
    h.ext_off = 0xa1b2c3d4e5f60718ull;
    memset(got, 0xee, sizeof(got));
    parallels_header_encode(&h, got);
    assert_memory_equal(got, want, 64);

    h.ext = false;
    hand_header(want, "WithoutFreeSpace");
    parallels_header_encode(&h, got);
    assert_memory_equal(got, want, 64);
}

static void test_round_trip(void **state)
{
    uint64_t seed = 42;

    (void)state;
    for (int i = 0; i < 1000; i++) {
        uint8_t b[64], b2[64];
        struct parallels_header h, h2;

        tu_rand_fill(&seed, b, sizeof(b));
        memcpy(b, (i & 1) ? "WithouFreSpacExt" : "WithoutFreeSpace", 16);
        parallels_header_decode(b, &h);
        parallels_header_encode(&h, b2);
        assert_memory_equal(b, b2, 64);
        parallels_header_decode(b2, &h2);
        assert_int_equal(h.ext, h2.ext);
        assert_int_equal(h.magic_ok, h2.magic_ok);
        assert_int_equal(h.version, h2.version);
        assert_int_equal(h.heads, h2.heads);
        assert_int_equal(h.cylinders, h2.cylinders);
        assert_int_equal(h.tracks, h2.tracks);
        assert_int_equal(h.bat_entries, h2.bat_entries);
        assert_int_equal(h.nb_sectors, h2.nb_sectors);
        assert_int_equal(h.in_use, h2.in_use);
        assert_int_equal(h.data_off, h2.data_off);
        assert_int_equal(h.flags, h2.flags);
        assert_int_equal(h.ext_off, h2.ext_off);
        /* Each field sits at its spec offset. */
        assert_int_equal(h.tracks, tu_get_le32(b, 28));
        assert_int_equal(h.nb_sectors, tu_get_le64(b, 36));
        assert_int_equal(h.ext_off, tu_get_le64(b, 56));
        assert_int_equal(h.ext, i & 1);
    }
}

/* A valid header: |tracks|-sector clusters, |entries| BAT entries covering
 * nb_sectors exactly. */
static struct parallels_header make_header(bool ext, uint32_t tracks,
                                           uint32_t entries)
{
    struct parallels_header h;
    uint64_t bat_end = 64 + 4ull * entries;
    uint64_t cs = (uint64_t)tracks * 512;

    memset(&h, 0, sizeof(h));
    h.ext = ext;
    h.magic_ok = true;
    h.version = 2;
    h.heads = 16;
    h.tracks = tracks;
    h.bat_entries = entries;
    h.nb_sectors = (uint64_t)tracks * entries;
    h.in_use = PARALLELS_IN_USE_CLEAN;
    h.data_off = (uint32_t)((bat_end + cs - 1) / cs * cs / 512);
    return h;
}

static char errbuf[512];

/* parallels_layout must fail, and its message contain every |needle|. */
static void expect_layout_error(const struct parallels_header *h,
                                uint64_t file_size, const char *n1,
                                const char *n2)
{
    struct parallels_layout lay;

    errbuf[0] = '\0';
    int r = parallels_layout(h, file_size, &lay, errbuf, sizeof(errbuf));
    if (r != -EINVAL) {
        fail_msg("parallels_layout accepted a bad header (want '%s')", n1);
    }
    if (!strstr(errbuf, n1) || (n2 && !strstr(errbuf, n2))) {
        fail_msg("message '%s' lacks '%s' / '%s'", errbuf, n1, n2 ? n2 : "");
    }
}

static void expect_layout_ok(const struct parallels_header *h,
                             uint64_t file_size, struct parallels_layout *lay)
{
    errbuf[0] = '\0';
    if (parallels_layout(h, file_size, lay, errbuf, sizeof(errbuf)) != 0) {
        fail_msg("parallels_layout refused a valid header: %s", errbuf);
    }
}

static void test_layout_valid_ext(void **state)
{
    struct parallels_header h = make_header(true, 2048, 16);
    struct parallels_layout lay;

    (void)state;
    expect_layout_ok(&h, 1 << 20, &lay);
    assert_true(lay.ext);
    assert_int_equal(lay.cluster_size, 1 << 20);
    assert_int_equal(lay.entry_unit, 1 << 20);
    assert_int_equal(lay.bat_entries, 16);
    assert_int_equal(lay.bat_end, 64 + 64);
    assert_int_equal(lay.data_off, 1 << 20);
    assert_int_equal(lay.virtual_size, 16ull << 20);
    assert_int_equal(lay.max_offset, (uint64_t)UINT32_MAX << 20);
    assert_int_equal(parallels_entry_offset(&lay, 3), 3ull << 20);

    /* The BAT may end exactly at the end of the file. */
    h = make_header(true, 1, 112);
    assert_int_equal(h.data_off, 1);
    expect_layout_ok(&h, 512, &lay);
    assert_int_equal(lay.bat_end, 512);
    assert_int_equal(lay.data_off, 512);

    /* The largest cluster prl accepts. */
    h = make_header(true, PARALLELS_MAX_TRACKS, 1);
    expect_layout_ok(&h, GiB, &lay);
    assert_int_equal(lay.cluster_size, GiB);

    /* Ext images may use the upper half of nb_sectors. */
    h = make_header(true, 2048, 1u << 22);
    assert_int_equal(h.nb_sectors, 1ull << 33);
    expect_layout_ok(&h, 17 << 20, &lay);
    assert_int_equal(lay.virtual_size, 4ull << 40);

    /* A BAT longer than nb_sectors needs is fine. */
    h = make_header(true, 2048, 16);
    h.nb_sectors = 1;
    expect_layout_ok(&h, 1 << 20, &lay);
    assert_int_equal(lay.virtual_size, 512);
}

static void test_layout_legacy(void **state)
{
    struct parallels_header h = make_header(false, 63, 10);
    struct parallels_layout lay;

    (void)state;
    /* data_off 0: the BAT end (104) rounded up to a sector. */
    h.data_off = 0;
    expect_layout_ok(&h, 512, &lay);
    assert_false(lay.ext);
    assert_int_equal(lay.cluster_size, 32256);
    assert_int_equal(lay.entry_unit, 512);
    assert_int_equal(lay.bat_end, 104);
    assert_int_equal(lay.data_off, 512);
    assert_int_equal(lay.virtual_size, 630 * 512);
    assert_int_equal(lay.max_offset, (uint64_t)UINT32_MAX * 512);

    /* A BAT end already on a sector boundary stays there. */
    h = make_header(false, 8, 112);
    h.data_off = 0;
    expect_layout_ok(&h, 512, &lay);
    assert_int_equal(lay.data_off, 512);
    h = make_header(false, 8, 113);
    h.data_off = 0;
    expect_layout_ok(&h, 1024, &lay);
    assert_int_equal(lay.data_off, 1024);

    /* Legacy data_off need only be sector aligned. */
    h = make_header(false, 2048, 10);
    h.data_off = 3;
    expect_layout_ok(&h, 1536, &lay);
    assert_int_equal(lay.data_off, 1536);
}

static void test_layout_magic_version(void **state)
{
    struct parallels_header h = make_header(true, 2048, 16);

    (void)state;
    h.magic_ok = false;
    h.ext = false;
    expect_layout_error(&h, 1 << 20, "magic", NULL);

    h = make_header(true, 2048, 16);
    h.version = 3;
    expect_layout_error(&h, 1 << 20, "version", "3");
    h.version = 0;
    expect_layout_error(&h, 1 << 20, "version", "0");
    h.version = 1;
    expect_layout_error(&h, 1 << 20, "version", "1");
}

static void test_layout_tracks(void **state)
{
    struct parallels_header h = make_header(true, 2048, 16);

    (void)state;
    h.tracks = 0;
    expect_layout_error(&h, 1 << 20, "tracks", "0");
    h.tracks = PARALLELS_MAX_TRACKS + 1;
    h.nb_sectors = 1;
    expect_layout_error(&h, 1 << 20, "tracks", "2097153");
    h.tracks = UINT32_MAX;
    expect_layout_error(&h, 1 << 20, "tracks", "4294967295");
}

static void test_layout_nb_sectors(void **state)
{
    struct parallels_header h = make_header(false, 2048, 16);

    (void)state;
    /* Legacy images must clear the upper 32 bits. */
    h.nb_sectors |= 1ull << 32;
    h.bat_entries = 1u << 22;
    expect_layout_error(&h, 1ull << 30, "nb_sectors", "4295000064");

    /* A byte size that does not fit 64 bits. */
    h = make_header(true, 2048, 16);
    h.nb_sectors = UINT64_MAX;
    expect_layout_error(&h, 1 << 20, "nb_sectors", "18446744073709551615");
}

static void test_layout_bat_coverage(void **state)
{
    struct parallels_header h = make_header(true, 2048, 16);

    (void)state;
    h.nb_sectors = 16 * 2048 + 1;
    expect_layout_error(&h, 1 << 20, "nb_bat_entries", "16");
    h = make_header(false, 63, 10);
    h.nb_sectors = 631;
    expect_layout_error(&h, 1 << 20, "nb_bat_entries", "631");
}

static void test_layout_bat_past_eof(void **state)
{
    struct parallels_header h = make_header(true, 1, 1000);
    struct parallels_layout lay;

    (void)state;
    /* The BAT ends at byte 4064. */
    expect_layout_error(&h, 4063, "nb_bat_entries", "1000");
    expect_layout_error(&h, 64, "nb_bat_entries", "4064");
    expect_layout_ok(&h, 4096, &lay);

    h = make_header(true, 2048, UINT32_MAX / 2048);
    expect_layout_error(&h, 1 << 20, "nb_bat_entries", "2097151");
    h = make_header(true, 1, UINT32_MAX);
    expect_layout_error(&h, 1 << 20, "nb_bat_entries", "4294967295");
}

static void test_layout_data_off(void **state)
{
    struct parallels_header h = make_header(true, 8, 100);
    struct parallels_layout lay;

    (void)state;
    /* BAT ends at 464; the first cluster boundary is 4096 (8 sectors). */
    assert_int_equal(h.data_off, 8);
    expect_layout_ok(&h, 4096, &lay);

    h.data_off = 0;
    expect_layout_error(&h, 4096, "data_off", "0");

    h.data_off = 9;
    expect_layout_error(&h, 8192, "data_off", "9");
    h.data_off = 12;
    expect_layout_error(&h, 8192, "data_off", "12");
    h.data_off = 16;
    expect_layout_ok(&h, 8192, &lay);
    assert_int_equal(lay.data_off, 8192);

    /* Inside the BAT: byte 0 .. 463. */
    h = make_header(false, 8, 200);
    h.data_off = 0;
    expect_layout_ok(&h, 4096, &lay);
    assert_int_equal(lay.data_off, 1024);
    h.data_off = 1;
    expect_layout_error(&h, 4096, "data_off", "1");
    h = make_header(true, 1, 1000);
    h.data_off = 7;
    expect_layout_error(&h, 8192, "data_off", "7");
}

static struct parallels_layout layout_of(const struct parallels_header *h,
                                         uint64_t file_size)
{
    struct parallels_layout lay;

    expect_layout_ok(h, file_size, &lay);
    return lay;
}

static void expect_problem(const struct parallels_layout *lay, uint64_t off,
                           uint64_t file_size, const char *want)
{
    const char *why = parallels_offset_problem(lay, off, file_size);

    if (!want) {
        if (why) {
            fail_msg("offset %llu (file %llu): unexpected '%s'",
                     (unsigned long long)off, (unsigned long long)file_size,
                     why);
        }
        return;
    }
    if (!why || !strstr(why, want)) {
        fail_msg("offset %llu (file %llu): got '%s', want '%s'",
                 (unsigned long long)off, (unsigned long long)file_size,
                 why ? why : "(valid)", want);
    }
}

static void test_offset_problem(void **state)
{
    /* Ext, 4 KiB clusters, BAT ends at 104, data area at 4096, three
     * clusters in a 16 KiB file. */
    struct parallels_header h = make_header(true, 8, 10);
    struct parallels_layout lay = layout_of(&h, 16384);

    (void)state;
    expect_problem(&lay, 0, 16384, "header");
    expect_problem(&lay, 64, 16384, "BAT");
    expect_problem(&lay, 103, 16384, "BAT");
    expect_problem(&lay, 104, 16384, "below the data area");
    expect_problem(&lay, 512, 16384, "below the data area");
    expect_problem(&lay, 4095, 16384, "below the data area");
    expect_problem(&lay, 4096, 16384, NULL);
    expect_problem(&lay, 8192, 16384, NULL);
    expect_problem(&lay, 12288, 16384, NULL);
    expect_problem(&lay, 4096 + 512, 16384, "aligned");
    expect_problem(&lay, 16384, 16384, "past the end");
    expect_problem(&lay, 1ull << 40, 16384, "past the end");
    expect_problem(&lay, 12288, 14000, "partly");
    expect_problem(&lay, 12288, 12289, "partly");

    /* Legacy, 63-sector clusters, data_off 0: the data area starts at
     * 512 and clusters are 32256 bytes apart from there. */
    h = make_header(false, 63, 10);
    h.data_off = 0;
    lay = layout_of(&h, 512 + 2 * 32256);
    uint64_t fs = 512 + 2 * 32256;
    expect_problem(&lay, 0, fs, "header");
    expect_problem(&lay, 512, fs, NULL);
    expect_problem(&lay, 512 + 32256, fs, NULL);
    expect_problem(&lay, 32256, fs, "aligned");
    expect_problem(&lay, 1024, fs, "aligned");
    expect_problem(&lay, 512 + 2 * 32256, fs, "past the end");
    expect_problem(&lay, 512 + 32256, fs - 1, "partly");
}

static void test_cylinders(void **state)
{
    (void)state;
    assert_int_equal(parallels_cylinders(0), 0);
    assert_int_equal(parallels_cylinders(512), 1);
    assert_int_equal(parallels_cylinders(2048 * 1024), 4096);
    assert_int_equal(parallels_cylinders(UINT64_MAX), UINT32_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_field_offsets),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_layout_valid_ext),
        cmocka_unit_test(test_layout_legacy),
        cmocka_unit_test(test_layout_magic_version),
        cmocka_unit_test(test_layout_tracks),
        cmocka_unit_test(test_layout_nb_sectors),
        cmocka_unit_test(test_layout_bat_coverage),
        cmocka_unit_test(test_layout_bat_past_eof),
        cmocka_unit_test(test_layout_data_off),
        cmocka_unit_test(test_offset_problem),
        cmocka_unit_test(test_cylinders),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
