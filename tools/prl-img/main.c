/* SPDX-License-Identifier: MIT */
/* prl-img: placeholder entry point. */
#include "prl/block.h"
#include "prl/error.h"
#include <stdio.h>
int main(int argc, char **argv)
{
    struct prl_block *bs;
    if (argc < 2) return 1;
    int r = prl_block_open(argv[1], NULL, 0, &bs);
    if (r < 0) { fprintf(stderr, "%s\n", prl_error_message()); return 1; }
    printf("%s %llu\n", prl_block_format(bs), (unsigned long long)prl_block_size(bs));
    return prl_block_close(bs) < 0;
}
