/* SPDX-License-Identifier: MIT */
/* Time random 4 KiB writes through libprl on a Parallels image, with or
 * without one enabled dirty bitmap, to measure what bitmap tracking
 * costs.  Built and run by bench/bitmap.sh.
 *
 * Usage: bitmap-bench IMAGE WRITES THREADS BITMAP(0|1) SEED
 * IMAGE must exist, every cluster allocated (so writes overwrite).
 * Prints the seconds the writes took (wall clock, open and close
 * excluded). */
#include "prl/bitmap.h"
#include "prl/block.h"
#include "prl/error.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLOCK 4096

struct worker {
    struct prl_block *bs;
    uint64_t n, seed, blocks;
    int err;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint8_t buf[BLOCK];
    uint64_t x = w->seed;

    memset(buf, 0x5a, sizeof(buf));
    for (uint64_t i = 0; i < w->n; i++) {
        /* xorshift64: cheap, so the loop measures the writes. */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[0] = (uint8_t)i;
        if (prl_block_pwrite(w->bs, buf, BLOCK, (x % w->blocks) * BLOCK, 0) <
            0) {
            w->err = 1;
            return NULL;
        }
    }
    return NULL;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    struct prl_block *bs;
    struct worker w[16];
    pthread_t t[16];
    double t0, t1;
    int threads, bitmap, err = 0;
    uint64_t writes, seed;

    if (argc != 6) {
        fprintf(stderr, "usage: bitmap-bench IMAGE WRITES THREADS "
                        "BITMAP(0|1) SEED\n");
        return 2;
    }
    writes = strtoull(argv[2], NULL, 10);
    threads = atoi(argv[3]);
    bitmap = atoi(argv[4]);
    seed = strtoull(argv[5], NULL, 10) | 1;
    if (threads < 1 || threads > 16) {
        fprintf(stderr, "bitmap-bench: 1..16 threads\n");
        return 2;
    }
    if (prl_block_open(argv[1], "parallels", PRL_OPEN_RDWR, &bs) < 0) {
        fprintf(stderr, "bitmap-bench: %s\n", prl_error_message());
        return 1;
    }
    if (bitmap && prl_bitmap_add(bs, "auto", 0, NULL) < 0) {
        fprintf(stderr, "bitmap-bench: %s\n", prl_error_message());
        return 1;
    }
    for (int i = 0; i < threads; i++) {
        uint64_t ws = (seed + (uint64_t)i * 0x9e3779b97f4a7c15ull) | 1;
        w[i] = (struct worker){bs, writes / (uint64_t)threads, ws,
                               prl_block_size(bs) / BLOCK, 0};
    }
    t0 = now();
    for (int i = 0; i < threads; i++) {
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        err |= w[i].err;
    }
    t1 = now();
    if (bitmap) {
        /* Do not keep it: every run starts from the same image. */
        struct prl_bitmap_info *v = NULL;
        size_t n = 0;
        if (prl_bitmap_list(bs, &v, &n) == 0 && n == 1) {
            prl_bitmap_remove(bs, v[0].name);
        }
        free(v);
    }
    if (prl_block_close(bs) < 0 || err) {
        fprintf(stderr, "bitmap-bench: %s\n", prl_error_message());
        return 1;
    }
    printf("%.6f\n", t1 - t0);
    return 0;
}
