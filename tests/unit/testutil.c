/* SPDX-License-Identifier: MIT */
/* Shared helpers of the unit tests (see testutil.h). */
#include "testutil.h"

#include "prl/block.h"
#include "prl/error.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECTOR 512u

static uint64_t tu_max(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static char scratch[4096];

const char *tu_dir(void)
{
    if (!scratch[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(scratch, sizeof(scratch), "%s/prl-unit.XXXXXX",
                 t && *t ? t : "/tmp");
        if (!mkdtemp(scratch)) {
            fprintf(stderr, "mkdtemp %s: %s\n", scratch, strerror(errno));
            abort();
        }
    }
    return scratch;
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tu_cleanup(void)
{
    if (scratch[0]) {
        nftw(scratch, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        scratch[0] = '\0';
    }
}

const char *tu_path(const char *name)
{
    static char ring[8][4096];
    static unsigned next;
    char *p = ring[next++ % 8];

    snprintf(p, sizeof(ring[0]), "%s/%s", tu_dir(), name);
    return p;
}

static int open_or_fail(const char *path, int flags)
{
    int fd = open(path, flags, 0644);
    if (fd < 0) {
        fail_msg("open %s: %s", path, strerror(errno));
    }
    return fd;
}

void tu_write_at(const char *path, const void *buf, size_t len, uint64_t off)
{
    int fd = open_or_fail(path, O_WRONLY | O_CREAT);
    ssize_t n = pwrite(fd, buf, len, (off_t)off);

    if (n < 0 || (size_t)n != len) {
        fail_msg("pwrite %s: short write", path);
    }
    close(fd);
}

void tu_write_file(const char *path, const void *buf, size_t len)
{
    int fd = open_or_fail(path, O_WRONLY | O_CREAT | O_TRUNC);
    ssize_t n = len ? write(fd, buf, len) : 0;

    if (n < 0 || (size_t)n != len) {
        fail_msg("write %s: short write", path);
    }
    close(fd);
}

void tu_read_at(const char *path, void *buf, size_t len, uint64_t off)
{
    int fd = open_or_fail(path, O_RDONLY);
    ssize_t n = pread(fd, buf, len, (off_t)off);

    if (n < 0 || (size_t)n != len) {
        fail_msg("pread %s: short read at %llu", path, (unsigned long long)off);
    }
    close(fd);
}

uint64_t tu_file_size(const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0) {
        fail_msg("stat %s: %s", path, strerror(errno));
    }
    return (uint64_t)st.st_size;
}

void tu_truncate(const char *path, uint64_t size)
{
    if (truncate(path, (off_t)size) < 0) {
        fail_msg("truncate %s: %s", path, strerror(errno));
    }
}

bool tu_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

uint8_t *tu_read_file(const char *path, size_t *len)
{
    size_t n = (size_t)tu_file_size(path);
    uint8_t *buf = malloc(n ? n : 1);

    assert_non_null(buf);
    if (n) {
        tu_read_at(path, buf, n, 0);
    }
    *len = n;
    return buf;
}

void tu_put_le32(uint8_t *buf, size_t off, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        buf[off + i] = (uint8_t)(v >> (8 * i));
    }
}

void tu_put_le64(uint8_t *buf, size_t off, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        buf[off + i] = (uint8_t)(v >> (8 * i));
    }
}

uint32_t tu_get_le32(const uint8_t *buf, size_t off)
{
    uint32_t v = 0;

    for (int i = 3; i >= 0; i--) {
        v = (v << 8) | buf[off + i];
    }
    return v;
}

uint64_t tu_get_le64(const uint8_t *buf, size_t off)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | buf[off + i];
    }
    return v;
}

uint32_t tu_file_le32(const char *path, uint64_t off)
{
    uint8_t b[4];

    tu_read_at(path, b, 4, off);
    return tu_get_le32(b, 0);
}

void tu_poke_le32(const char *path, uint64_t off, uint32_t v)
{
    uint8_t b[4];

    tu_put_le32(b, 0, v);
    tu_write_at(path, b, 4, off);
}

void tu_poke_le64(const char *path, uint64_t off, uint64_t v)
{
    uint8_t b[8];

    tu_put_le64(b, 0, v);
    tu_write_at(path, b, 8, off);
}

void tu_par_init(struct tu_par *p, bool ext, uint32_t tracks, uint64_t size)
{
    uint64_t cs = (uint64_t)tracks * SECTOR;
    uint64_t bat_end;

    memset(p, 0, sizeof(*p));
    p->ext = ext;
    p->version = 2;
    p->heads = 16;
    p->tracks = tracks;
    p->nb_sectors = size / SECTOR;
    p->cylinders = (uint32_t)(p->nb_sectors / (16 * 32));
    p->bat_entries = (uint32_t)((size + cs - 1) / cs);
    p->in_use = 0x312e3276u;
    bat_end = 64 + 4 * (uint64_t)p->bat_entries;
    if (ext) {
        p->data_off = (uint32_t)((bat_end + cs - 1) / cs * cs / SECTOR);
    } else {
        p->data_off = (uint32_t)((bat_end + SECTOR - 1) / SECTOR);
    }
}

uint64_t tu_par_data_off(const struct tu_par *p)
{
    uint64_t bat_end = 64 + 4 * (uint64_t)p->bat_entries;

    if (p->data_off) {
        return (uint64_t)p->data_off * SECTOR;
    }
    return (bat_end + SECTOR - 1) / SECTOR * SECTOR;
}

uint32_t tu_par_entry(const struct tu_par *p, uint64_t index)
{
    uint64_t cs = (uint64_t)p->tracks * SECTOR;
    uint64_t off = tu_par_data_off(p) + index * cs;

    return (uint32_t)(p->ext ? off / cs : off / SECTOR);
}

void tu_par_write(const char *path, const struct tu_par *p, const uint32_t *bat,
                  size_t nbat, uint64_t file_size)
{
    uint8_t h[64];
    const char *magic = p->magic ? p->magic
                        : p->ext ? "WithouFreSpacExt"
                                 : "WithoutFreeSpace";
    size_t bat_bytes = (size_t)p->bat_entries * 4;
    uint8_t *b;

    /* Field offsets straight from parallels.rst. */
    memset(h, 0, sizeof(h));
    memcpy(h, magic, 16);
    tu_put_le32(h, 16, p->version);
    tu_put_le32(h, 20, p->heads);
    tu_put_le32(h, 24, p->cylinders);
    tu_put_le32(h, 28, p->tracks);
    tu_put_le32(h, 32, p->bat_entries);
    tu_put_le64(h, 36, p->nb_sectors);
    tu_put_le32(h, 44, p->in_use);
    tu_put_le32(h, 48, p->data_off);
    tu_put_le32(h, 52, p->flags);
    tu_put_le64(h, 56, p->ext_off);
    tu_write_file(path, h, sizeof(h));
    if (nbat > p->bat_entries) {
        nbat = p->bat_entries;
    }
    if (nbat) {
        b = calloc(nbat, 4);
        assert_non_null(b);
        for (size_t i = 0; i < nbat; i++) {
            tu_put_le32(b, i * 4, bat[i]);
        }
        tu_write_at(path, b, nbat * 4, 64);
        free(b);
    }
    tu_truncate(
        path, file_size ? file_size
                        : tu_max(tu_par_data_off(p), 64 + (uint64_t)bat_bytes));
}

void tu_par_fill_cluster(const char *path, const struct tu_par *p,
                         uint64_t index, uint8_t byte)
{
    uint64_t cs = (uint64_t)p->tracks * SECTOR;
    uint8_t *buf = malloc(cs);

    assert_non_null(buf);
    memset(buf, byte, cs);
    tu_write_at(path, buf, cs, tu_par_data_off(p) + index * cs);
    free(buf);
}

uint64_t tu_rand(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

void tu_rand_fill(uint64_t *state, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        uint64_t r = tu_rand(state);
        size_t n = len < 8 ? len : 8;
        memcpy(p, &r, n);
        p += n;
        len -= n;
    }
}

bool tu_all(const void *buf, size_t len, uint8_t byte)
{
    const uint8_t *p = buf;

    for (size_t i = 0; i < len; i++) {
        if (p[i] != byte) {
            return false;
        }
    }
    return true;
}

struct prl_block *tu_open(const char *path, const char *fmt, unsigned flags)
{
    struct prl_block *bs = NULL;
    int r = prl_block_open(path, fmt, flags, &bs);

    if (r < 0) {
        fail_msg("open %s: %d %s", path, r, prl_error_message());
    }
    assert_non_null(bs);
    return bs;
}

void tu_close(struct prl_block *bs)
{
    int r = prl_block_close(bs);

    if (r < 0) {
        fail_msg("close: %d %s", r, prl_error_message());
    }
}

void tu_create(const char *path, const char *fmt, uint64_t size,
               const char *opts)
{
    int r = prl_block_create(path, fmt, size, opts);

    if (r < 0) {
        fail_msg("create %s %s (%s): %d %s", fmt, path, opts ? opts : "", r,
                 prl_error_message());
    }
}

void tu_expect_err(int r, int want, const char *needle)
{
    if (r != want) {
        fail_msg("got %d (%s), want %d", r, r < 0 ? prl_error_message() : "",
                 want);
    }
    if (needle && !strstr(prl_error_message(), needle)) {
        fail_msg("message '%s' lacks '%s'", prl_error_message(), needle);
    }
}
