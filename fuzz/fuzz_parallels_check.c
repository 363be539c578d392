/* SPDX-License-Identifier: MIT */
/* Fuzz target for Parallels check and repair: the input is an image file;
 * a repair that claims success must leave an image that checks clean,
 * opens, keeps the guest data it did not report lost, and survives a
 * read-write open and close. */
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
#include <sys/mman.h>
#include <unistd.h>

/* Repairs copy whole clusters into the file, which lives in memory here:
 * the repair passes run only while cluster size times the number of
 * non-zero BAT entries stays under this many bytes.  Larger inputs get the
 * read-only check alone. */
#define REPAIR_BUDGET (16u << 20)
/* Guest bytes compared across the repair, and the piece size (bytes). */
#define SNAP_BUDGET (2u << 20)
#define SNAP_PIECE (64u << 10)
#define SNAP_MAX (SNAP_BUDGET / 512)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Guest ranges that held data before the repair, with a hash of it. */
struct snap {
    uint64_t off[SNAP_MAX];
    uint32_t len[SNAP_MAX];
    uint64_t hash[SNAP_MAX];
    size_t n;
    uint64_t size;    /* guest size at the time */
    uint64_t cluster; /* bytes */
};

static struct snap snap;
static uint8_t *piece;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Repair-on-open logs warnings; they are expected here. */
    prl_log_set_handler(NULL, NULL, PRL_LOG_ERROR);
    fuzz_limit_files();
    piece = malloc(SNAP_PIECE);
    if (!piece) {
        abort();
    }
    return 0;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* True when repairing this input costs a bounded amount of memory. */
static bool repair_affordable(const uint8_t *data, size_t size)
{
    uint64_t cs, nonzero = 0;

    if (size < 64) {
        return true;
    }
    cs = (uint64_t)get_le32(data + 28) * 512;
    for (size_t off = 64; off + 4 <= size; off += 4) {
        nonzero += get_le32(data + off) != 0;
    }
    /* One spare cluster for the Format Extension and a partial tail. */
    return cs <= (1u << 20) && (nonzero + 2) * cs <= REPAIR_BUDGET;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001b3ull;
    }
    return h;
}

/* The counters agree with the findings, and nothing is fixed unasked. */
static void check_result(const struct prl_check_result *res, unsigned fix)
{
    int corrupt = 0;

    for (size_t i = 0; i < res->n_findings; i++) {
        const struct prl_finding *f = &res->findings[i];

        CHECK(f->kind && f->message);
        if (!fix) {
            CHECK(!f->fixed);
        }
        if (f->fixed) {
            CHECK(f->action != NULL);
        }
        if (f->cls == PRL_FINDING_CORRUPTION && !f->fixed) {
            corrupt++;
        }
    }
    CHECK(res->corruptions == corrupt);
    CHECK(res->corruptions >= 0 && res->leaks >= 0);
    if (!fix) {
        CHECK(res->corruptions_fixed == 0 && res->leaks_fixed == 0);
    }
}

static void print_findings(const char *what, const struct prl_check_result *r)
{
    fprintf(stderr, "%s: %d corruptions, %d leaks, %d+%d fixed\n", what,
            r->corruptions, r->leaks, r->corruptions_fixed, r->leaks_fixed);
    for (size_t i = 0; i < r->n_findings; i++) {
        const struct prl_finding *f = &r->findings[i];
        fprintf(stderr, "  [%s%s] %s%s%s\n", f->kind, f->fixed ? ", fixed" : "",
                f->message, f->action ? ": " : "", f->action ? f->action : "");
    }
}

/* Record hashes of the guest ranges that read as stored data through an
 * unvalidated read-only open (what the driver can see before repair). */
static void take_snapshot(const char *path)
{
    struct prl_block *bs;
    struct prl_image_info info;
    uint64_t off = 0, budget = SNAP_BUDGET;

    snap.n = 0;
    snap.size = 0;
    if (prl_block_open(path, "parallels", PRL_OPEN_UNSAFE, &bs) < 0) {
        return;
    }
    if (prl_block_info(bs, &info) < 0 || info.empty_flag) {
        /* With the Empty flag set everything reads as zero; the repair
         * clears it and keeps the clusters, so contents change. */
        prl_block_close(bs);
        return;
    }
    snap.size = prl_block_size(bs);
    snap.cluster = info.cluster_size;
    while (off < snap.size && snap.n < SNAP_MAX && budget > 0) {
        struct prl_extent ext;
        uint64_t n;

        if (prl_block_status(bs, off, snap.size - off, &ext) < 0) {
            break;
        }
        if (ext.flags & PRL_EXT_DATA) {
            n = ext.length < SNAP_PIECE ? ext.length : SNAP_PIECE;
            n = n < budget ? n : budget;
            if (prl_block_pread(bs, piece, n, off, 0) == 0) {
                snap.off[snap.n] = off;
                snap.len[snap.n] = (uint32_t)n;
                snap.hash[snap.n] = fnv1a(piece, (size_t)n);
                snap.n++;
            }
            budget -= n;
            off += n;
        } else {
            off += ext.length;
        }
    }
    prl_block_close(bs);
}

/* A guest range the repair reported as lost, or not to be compared. */
static bool range_lost(const struct prl_check_result *res, uint64_t off,
                       uint64_t len)
{
    for (size_t i = 0; i < res->n_findings; i++) {
        const struct prl_finding *f = &res->findings[i];
        uint64_t start, end;

        if (!f->data_lost) {
            continue;
        }
        /* The lost offset names its cluster. */
        start = f->guest_offset - f->guest_offset % snap.cluster;
        end = start + snap.cluster;
        if (off < end && start < off + len) {
            return true;
        }
    }
    return false;
}

/* After a clean repair: the image opens, and every snapshot range inside
 * the (possibly reduced) size reads as before unless reported lost. */
static void compare_snapshot(const char *path,
                             const struct prl_check_result *res)
{
    struct prl_block *bs;
    uint64_t size;

    if (prl_block_open(path, "parallels", 0, &bs) < 0) {
        fprintf(stderr, "open after a clean repair failed: %s\n",
                prl_error_message());
        CHECK(!"image that checks clean opens");
    }
    size = prl_block_size(bs);
    for (size_t i = 0; i < snap.n; i++) {
        if (snap.off[i] + snap.len[i] > size ||
            range_lost(res, snap.off[i], snap.len[i])) {
            continue;
        }
        CHECK(prl_block_pread(bs, piece, snap.len[i], snap.off[i], 0) == 0);
        if (fnv1a(piece, snap.len[i]) != snap.hash[i]) {
            fprintf(stderr, "guest range %llu+%u changed in the repair\n",
                    (unsigned long long)snap.off[i], snap.len[i]);
            CHECK(!"repair keeps data it does not report lost");
        }
    }
    prl_block_close(bs);
}

static bool has_finding(const struct prl_check_result *res, const char *kind)
{
    for (size_t i = 0; i < res->n_findings; i++) {
        if (strcmp(res->findings[i].kind, kind) == 0) {
            return true;
        }
    }
    return false;
}

/* Read-write open, one write, close: the result checks clean, with no
 * more leaks than |leaks| (what the image had before). */
static void write_and_recheck(const char *path, int leaks)
{
    struct prl_block *bs;
    struct prl_check_result res;
    int r;

    r = prl_block_open(path, "parallels", PRL_OPEN_RDWR, &bs);
    if (r < 0) {
        fprintf(stderr, "read-write open after a clean repair failed: %s\n",
                prl_error_message());
        CHECK(!"image that checks clean opens read-write");
    }
    if (prl_block_size(bs) > 0) {
        memset(piece, 0xa5, 512);
        uint64_t n = prl_block_size(bs) < 512 ? prl_block_size(bs) : 512;
        CHECK(prl_block_pwrite(bs, piece, n, prl_block_size(bs) - n, 0) == 0);
    }
    CHECK(prl_block_close(bs) == 0);
    CHECK(prl_block_check(path, "parallels", 0, &res) == 0);
    check_result(&res, 0);
    if (res.corruptions != 0 || res.leaks > leaks) {
        print_findings("check after write and close", &res);
        CHECK(!"a clean close leaves a clean image");
    }
    prl_check_result_free(&res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct prl_check_result res0, res1, res2, res3;
    char path[64];
    int fd, r;

    if (!piece) {
        LLVMFuzzerInitialize(NULL, NULL);
    }
    fd = fuzz_memfd("prl-fuzz-check", data, size, path, sizeof(path));

    /* Check only: consistent counters, nothing fixed. */
    r = prl_block_check(path, "parallels", 0, &res0);
    CHECK(r <= 0);
    check_result(&res0, 0);
    prl_check_result_free(&res0);
    if (r < 0 || !repair_affordable(data, size)) {
        goto out;
    }

    take_snapshot(path);
    r = prl_block_check(path, "parallels", PRL_CHECK_FIX_ALL, &res1);
    CHECK(r <= 0);
    check_result(&res1, PRL_CHECK_FIX_ALL);
    if (r < 0) {
        prl_check_result_free(&res1);
        goto out;
    }

    /* What the repair left is what a second check finds: no corruption
     * when it claimed to fix them all, and never more than it left. */
    CHECK(prl_block_check(path, "parallels", 0, &res2) == 0);
    check_result(&res2, 0);
    if (res1.corruptions == 0 && res2.corruptions != 0) {
        print_findings("repair", &res1);
        print_findings("check after repair", &res2);
        CHECK(!"a repair that fixed every corruption leaves none");
    }
    CHECK(res2.corruptions <= res1.corruptions);

    if (res1.corruptions == 0) {
        compare_snapshot(path, &res1);
        /* A Format Extension feature marked NECESSARY that prl cannot
         * load makes the image read-only (parallels.rst), and check
         * leaves it alone. */
        if (!has_finding(&res1, "ext-necessary")) {
            write_and_recheck(path, res2.leaks);
        }
        /* Checked last so that they hide none of the above. */
        if (res1.leaks == 0 && res2.leaks != 0) {
            print_findings("repair", &res1);
            print_findings("check after repair", &res2);
            CHECK(!"a repair that fixed every leak leaves none");
        }
        CHECK(prl_block_check(path, "parallels", PRL_CHECK_FIX_ALL, &res3) ==
              0);
        if (res3.corruptions_fixed != 0 || res3.leaks_fixed != 0) {
            print_findings("second repair", &res3);
            CHECK(!"a second repair finds nothing to do");
        }
        prl_check_result_free(&res3);
    }
    prl_check_result_free(&res1);
    prl_check_result_free(&res2);
out:
    close(fd);
    prl_error_clear();
    return 0;
}
