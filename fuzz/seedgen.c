/* SPDX-License-Identifier: MIT */
/* Seed maker for fuzz/make-corpus: writes, through the library, the images
 * that the shell tools cannot make yet (Parallels images whose Format
 * Extension holds dirty bitmaps).  Usage: fuzz-seedgen OUTDIR */
#include "prl/bitmap.h"
#include "prl/block.h"
#include "prl/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what)
{
    fprintf(stderr, "fuzz-seedgen: %s: %s\n", what, prl_error_message());
    return 1;
}

/* An image of |size| bytes with |opts|, a few writes, and one bitmap per
 * entry of |names| (NULL-terminated), the second one disabled before the
 * last write so that the two differ. */
static int bitmap_image(const char *dir, const char *file, uint64_t size,
                        const char *opts, uint64_t granularity,
                        const char *const *names)
{
    char path[4096], buf[8192];
    struct prl_block *bs;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (prl_block_create(path, "parallels", size, opts) < 0) {
        return fail(path);
    }
    if (prl_block_open(path, "parallels", PRL_OPEN_RDWR, &bs) < 0) {
        return fail(path);
    }
    memset(buf, 0x3c, sizeof(buf));
    if (prl_block_pwrite(bs, buf, 4096, 0, 0) < 0) {
        return fail("write");
    }
    for (size_t i = 0; names[i]; i++) {
        if (prl_bitmap_add(bs, names[i], granularity, NULL) < 0) {
            return fail("bitmap add");
        }
    }
    if (prl_block_pwrite(bs, buf, sizeof(buf), size / 2, 0) < 0) {
        return fail("write");
    }
    if (names[0] && names[1] && prl_bitmap_disable(bs, names[1]) < 0) {
        return fail("bitmap disable");
    }
    if (prl_block_pwrite(bs, buf, 512, size - 512, 0) < 0) {
        return fail("write");
    }
    if (prl_block_close(bs) < 0) {
        return fail("close");
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const char *const one[] = {"6a1c1f2e-58a7-4c1e-9d3b-0f5e4b7a1c01",
                                      NULL};
    static const char *const two[] = {"6a1c1f2e-58a7-4c1e-9d3b-0f5e4b7a1c02",
                                      "6a1c1f2e-58a7-4c1e-9d3b-0f5e4b7a1c03",
                                      NULL};

    if (argc != 2) {
        fprintf(stderr, "usage: fuzz-seedgen OUTDIR\n");
        return 2;
    }
    return bitmap_image(argv[1], "seed-bitmap-c4k-1m", 1 << 20,
                        "cluster_size=4k", 4096, one) ||
           bitmap_image(argv[1], "seed-bitmaps2-c512-128k", 128 << 10,
                        "cluster_size=512", 512, two) ||
           bitmap_image(argv[1], "seed-bitmaps2-c8k-512k", 512 << 10,
                        "cluster_size=8k", 512, two);
}
