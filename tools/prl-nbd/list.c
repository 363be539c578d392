/* SPDX-License-Identifier: MIT */
/* prl-nbd --list: the exports of a server, printed as qemu-nbd --list
 * prints them. */
#include "list.h"
#include "nbd/client/client.h"
#include "nbd/wire.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

/* Transmission flag names, by bit, in qemu-nbd's words. */
static const char *const flag_names[16] = {
    [1] = "readonly",   [2] = "flush",      [3] = "fua",
    [4] = "rotational", [5] = "trim",       [6] = "zeroes",
    [7] = "df",         [8] = "multi",      [9] = "resize",
    [10] = "cache",     [11] = "fast-zero", [12] = "block-status-payload",
};

static void print_export(const struct prl_nbd_export_info *e)
{
    printf(" export: '%s'\n", e->name);
    if (e->description[0]) {
        printf("  description: %s\n", e->description);
    }
    if (!e->has_info) {
        return;
    }
    printf("  size:  %" PRIu64 "\n", e->exp.size);
    printf("  flags: 0x%x (", e->exp.tflags);
    for (int bit = 1; bit < 16; bit++) {
        if (e->exp.tflags & (1u << bit)) {
            printf(" %s", flag_names[bit] ? flag_names[bit] : "unknown");
        }
    }
    printf(" )\n");
    if (e->has_block_sizes) {
        printf("  min block: %" PRIu32 "\n", e->exp.min_block);
        printf("  opt block: %" PRIu32 "\n", e->exp.pref_block);
        printf("  max block: %" PRIu32 "\n", e->exp.max_block);
    }
    if (e->exp.extended) {
        printf("  transaction size: 64-bit\n");
    }
    if (e->exp.structured) {
        printf("  available meta contexts: %zu\n", e->n_contexts);
        for (size_t i = 0; i < e->n_contexts; i++) {
            printf("   %s\n", e->contexts[i]);
        }
    }
}

int prl_nbd_list_exports(const struct prl_nbd_uri *uri)
{
    struct prl_nbd_export_info *v;
    size_t n;
    int r = prl_nbd_client_list(uri, &v, &n);

    if (r < 0) {
        fprintf(stderr, "prl-nbd: %s%s\n", prl_error_message(),
                r == -EACCES && !uri->tls
                    ? " (with -k, -b or -p: give --tls-creds)"
                    : "");
        return 1;
    }
    printf("exports available: %zu\n", n);
    for (size_t i = 0; i < n; i++) {
        print_export(&v[i]);
    }
    prl_nbd_export_info_free(v, n);
    return fflush(stdout) == 0 ? 0 : 1;
}
