/* SPDX-License-Identifier: MIT */
/* Shared helpers of the unit tests: temp files, byte poking, a Parallels
 * image builder written from parallels.rst (independent of the codec under
 * test) and a deterministic PRNG. */
#ifndef PRL_TESTS_UNIT_TESTUTIL_H
#define PRL_TESTS_UNIT_TESTUTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <setjmp.h>
#include <cmocka.h>

#define TU_COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Per-process scratch directory under $TMPDIR, made on first use and
 * removed with everything in it by tu_cleanup (call it from main after
 * the tests ran). */
const char *tu_dir(void);
void tu_cleanup(void);

/* "<tu_dir>/<name>" in a static ring of buffers: valid for the next few
 * calls, enough for one test's paths. */
const char *tu_path(const char *name);

/* Whole-file and positioned I/O; each fails the current test on error. */
void tu_write_file(const char *path, const void *buf, size_t len);
void tu_write_at(const char *path, const void *buf, size_t len, uint64_t off);
void tu_read_at(const char *path, void *buf, size_t len, uint64_t off);
uint64_t tu_file_size(const char *path);
void tu_truncate(const char *path, uint64_t size);
bool tu_exists(const char *path);
/* Malloc'd copy of the whole file; *len set. */
uint8_t *tu_read_file(const char *path, size_t *len);

/* Little-endian fields of a byte buffer. */
void tu_put_le32(uint8_t *buf, size_t off, uint32_t v);
void tu_put_le64(uint8_t *buf, size_t off, uint64_t v);
uint32_t tu_get_le32(const uint8_t *buf, size_t off);
uint64_t tu_get_le64(const uint8_t *buf, size_t off);

/* One 32-bit field of a file, read or poked in place. */
uint32_t tu_file_le32(const char *path, uint64_t off);
void tu_poke_le32(const char *path, uint64_t off, uint32_t v);
void tu_poke_le64(const char *path, uint64_t off, uint64_t v);

/* A Parallels image described field by field (parallels.rst, "Header"). */
struct tu_par {
    bool ext;          /* WithouFreSpacExt, else WithoutFreeSpace */
    const char *magic; /* overrides ext when set (16 bytes used) */
    uint32_t version;
    uint32_t heads, cylinders;
    uint32_t tracks; /* cluster size in sectors */
    uint32_t bat_entries;
    uint64_t nb_sectors;
    uint32_t in_use;
    uint32_t data_off; /* sectors */
    uint32_t flags;
    uint64_t ext_off; /* sectors */
};

/* A consistent image of |size| bytes (a multiple of 512) and clusters of
 * |tracks| sectors: BAT right after the header, data_off the BAT end
 * rounded up to a cluster (ext) or to a sector (legacy), in_use clean. */
void tu_par_init(struct tu_par *p, bool ext, uint32_t tracks, uint64_t size);

/* Effective data offset in bytes (data_off, or the computed one when it
 * is 0). */
uint64_t tu_par_data_off(const struct tu_par *p);

/* The BAT entry value that points at data-area cluster |index|. */
uint32_t tu_par_entry(const struct tu_par *p, uint64_t index);

/* Write |p|'s header, |nbat| entries of |bat| (the rest of the BAT zero)
 * and size the file to |file_size| bytes (0: exactly the data offset). */
void tu_par_write(const char *path, const struct tu_par *p, const uint32_t *bat,
                  size_t nbat, uint64_t file_size);

/* Fill a data-area cluster of |p| in |path| with |byte|. */
void tu_par_fill_cluster(const char *path, const struct tu_par *p,
                         uint64_t index, uint8_t byte);

/* xorshift64*: deterministic across runs and platforms. */
uint64_t tu_rand(uint64_t *state);
void tu_rand_fill(uint64_t *state, void *buf, size_t len);

/* The block API with failures turned into test failures that show the
 * prl error message. */
struct prl_block;
struct prl_block *tu_open(const char *path, const char *fmt, unsigned flags);
void tu_close(struct prl_block *bs);
void tu_create(const char *path, const char *fmt, uint64_t size,
               const char *opts);

/* |r| must equal |want| (a negative errno) and the thread's error message
 * contain |needle| (unless NULL). */
void tu_expect_err(int r, int want, const char *needle);

/* True when buf[0..len) all equal |byte|. */
bool tu_all(const void *buf, size_t len, uint8_t byte);

#endif
