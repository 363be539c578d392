/* SPDX-License-Identifier: MIT */
/* crash-writer: a random write workload on one image through libprl,
 * logging each request before it is issued and once it is acknowledged,
 * so that tests/check/crash.py can kill it at any point and know which
 * writes were durable.
 *
 * Usage: crash-writer IMAGE LOG SEED [MAX_OPS]
 *
 * LOG gets one line per event, each written with a single write(2) so a
 * SIGKILL leaves whole lines in the page cache (it survives the process):
 *     B ID OP OFFSET LENGTH FUA    request ID is about to be issued
 *     E ID                         request ID was acknowledged
 * OP is w (write), z (zero, may unmap), Z (zero, no unmap), t (trim) or
 * f (flush).  A request is durable once acknowledged with FUA, or once a
 * later flush is acknowledged.  The log itself is fdatasync'ed at each
 * flush, as a writer that must remember what it acknowledged would.
 *
 * Every 512-byte sector of the data of write ID at guest sector S holds
 * 64 copies of the little-endian 64-bit value (ID << 32 | S) ^ (SEED *
 * 0x9E3779B97F4A7C15), so a reader can tell which write put it there. */
#include "prl/block.h"
#include "prl/error.h"
#include "prl/log.h"

#include <endian.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECTOR 512u
#define MAX_CLUSTERS 3 /* longest request, in clusters */

static int log_fd = -1;

static void die(const char *what)
{
    fprintf(stderr, "crash-writer: %s: %s\n", what, prl_error_message());
    exit(1);
}

static void log_line(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void log_line(const char *fmt, ...)
{
    char line[128];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line) || write(log_fd, line, n) != n) {
        perror("crash-writer: log");
        exit(1);
    }
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint64_t below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

static void fill(uint8_t *buf, uint64_t id, uint64_t sector, uint64_t len,
                 uint64_t key)
{
    for (uint64_t s = 0; s < len / SECTOR; s++) {
        uint64_t v = htole64(((id << 32) | (sector + s)) ^ key);
        for (unsigned k = 0; k < SECTOR / 8; k++) {
            memcpy(buf + s * SECTOR + k * 8, &v, 8);
        }
    }
}

int main(int argc, char **argv)
{
    struct prl_image_info info;
    struct prl_block *bs;
    uint64_t seed, max_ops, size, cs, key;
    uint8_t *buf;

    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: crash-writer IMAGE LOG SEED [MAX_OPS]\n");
        return 2;
    }
    seed = strtoull(argv[3], NULL, 0);
    max_ops = argc == 5 ? strtoull(argv[4], NULL, 0) : 100000;
    key = seed * 0x9E3779B97F4A7C15ull;
    rng_state = seed * 2 + 1;
    prl_log_set_handler(NULL, NULL, PRL_LOG_ERROR);
    log_fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (log_fd < 0) {
        perror("crash-writer: open log");
        return 1;
    }
    if (prl_block_open(argv[1], "parallels", PRL_OPEN_RDWR, &bs) < 0) {
        die("open");
    }
    if (prl_block_info(bs, &info) < 0) {
        die("info");
    }
    size = prl_block_size(bs);
    cs = info.cluster_size;
    if (size < cs || cs % SECTOR) {
        fprintf(stderr, "crash-writer: image too small\n");
        return 1;
    }
    buf = malloc(MAX_CLUSTERS * cs);
    if (!buf) {
        return 1;
    }
    log_line("ready %" PRIu64 " %" PRIu64 "\n", size, cs);

    for (uint64_t id = 1; id <= max_ops; id++) {
        uint64_t pick = below(100), off, len;
        bool fua = below(4) == 0;
        char op;
        int r;

        if (pick < 62) {
            op = 'w';
        } else if (pick < 72) {
            op = below(2) ? 'z' : 'Z';
        } else if (pick < 82) {
            op = 't';
        } else if (pick < 90) {
            op = 'f';
            fua = false;
        } else {
            /* Rewrite within the first clusters: a hot spot where new
             * writes and old durable ones overlap. */
            op = 'w';
        }
        if (below(2)) {
            /* Whole clusters: allocation, unmap, reuse. */
            uint64_t n = 1 + below(MAX_CLUSTERS);
            n = n * cs > size ? size / cs : n;
            len = n * cs;
            off = below(size / cs - n + 1) * cs;
        } else {
            len = SECTOR * (1 + below(MAX_CLUSTERS * cs / SECTOR));
            len = len > size ? size : len;
            off = SECTOR * below((size - len) / SECTOR + 1);
        }
        if (pick >= 90) {
            off = off % (4 * cs);
            off -= off % SECTOR;
            len = len > size - off ? size - off : len;
        }
        if (op == 'f') {
            off = len = 0;
        }
        log_line("B %" PRIu64 " %c %" PRIu64 " %" PRIu64 " %d\n", id, op, off,
                 len, fua);
        switch (op) {
        case 'w':
            fill(buf, id, off / SECTOR, len, key);
            r = prl_block_pwrite(bs, buf, len, off, fua ? PRL_REQ_FUA : 0);
            break;
        case 'z':
        case 'Z':
            r = prl_block_zero(bs, len, off,
                               (fua ? PRL_REQ_FUA : 0) |
                                   (op == 'Z' ? PRL_REQ_NO_UNMAP : 0));
            break;
        case 't':
            r = prl_block_trim(bs, len, off, fua ? PRL_REQ_FUA : 0);
            break;
        default:
            r = prl_block_flush(bs);
            if (r == 0 && fdatasync(log_fd) < 0) {
                perror("crash-writer: fdatasync log");
                return 1;
            }
            break;
        }
        if (r < 0) {
            die("request");
        }
        log_line("E %" PRIu64 "\n", id);
    }
    /* Not closed: the end of the run is a crash too. */
    log_line("done\n");
    _exit(0);
}
