/* SPDX-License-Identifier: MIT */
/* Fuzz target for option lists and size strings (common/opts.h): the input
 * is one string, parsed as an option list and as a size, and the results
 * are checked for the promises the header makes. */
#include "common/opts.h"
#include "prl/error.h"

#include "fuzz-util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest input string used, bytes; longer inputs are cut. */
#define MAX_LEN 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A size that parsed must parse again to the same value when printed in
 * bytes, and in the largest binary unit that divides it. */
static void check_size_roundtrip(uint64_t v)
{
    static const char units[] = "KMGTPE";
    char text[64];
    uint64_t again = 0;
    unsigned shift = 0;

    snprintf(text, sizeof(text), "%" PRIu64, v);
    CHECK(prl_parse_size(text, "size", &again) == 0 && again == v);
    while (v != 0 && shift < 60 &&
           (v & ((UINT64_C(1) << (shift + 10)) - 1)) == 0) {
        shift += 10;
    }
    if (shift > 0) {
        snprintf(text, sizeof(text), "%" PRIu64 "%c", v >> shift,
                 units[shift / 10 - 1]);
        CHECK(prl_parse_size(text, "size", &again) == 0 && again == v);
    }
}

/* Every size either parses or fails with -EINVAL/-ERANGE and a message. */
static void check_size(const char *s, const char *what)
{
    uint64_t v = 0;
    int r = prl_parse_size(s, what, &v);

    CHECK(r == 0 || r == -EINVAL || r == -ERANGE);
    if (r == 0) {
        check_size_roundtrip(v);
    } else {
        CHECK(prl_error_message() != NULL);
    }
}

static void check_list(const char *s)
{
    struct prl_opts opts;
    uint64_t v = 0;
    int r = prl_opts_parse(&opts, s);

    if (r < 0) {
        CHECK(r == -EINVAL || r == -ENOMEM);
        CHECK(opts.v == NULL && opts.n == 0);
        return;
    }
    /* Fresh from the parser: named, valued, no '=' in a name, unused. */
    for (size_t i = 0; i < opts.n; i++) {
        CHECK(opts.v[i].key && opts.v[i].key[0] != '\0');
        CHECK(opts.v[i].value != NULL);
        CHECK(strchr(opts.v[i].key, '=') == NULL);
        CHECK(!opts.v[i].used);
    }
    /* The last occurrence of a key wins. */
    for (size_t i = 0; i < opts.n; i++) {
        const char *key = opts.v[i].key;
        size_t last = i;

        for (size_t j = i + 1; j < opts.n; j++) {
            if (strcmp(opts.v[j].key, key) == 0) {
                last = j;
            }
        }
        CHECK(prl_opts_get(&opts, key) == opts.v[last].value);
        check_size(opts.v[i].value, key);
    }
    /* Every key was asked for, so none is left over. */
    CHECK(prl_opts_check_unused(&opts, "fuzz") == 0);
    r = prl_opts_get_size(&opts, "cluster_size", &v);
    CHECK(r == 0 || r == 1 || r == -EINVAL || r == -ERANGE);
    prl_opts_free(&opts);
    CHECK(opts.v == NULL && opts.n == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len = size < MAX_LEN ? size : MAX_LEN;
    char *s = malloc(len + 1);

    if (!s) {
        return 0;
    }
    memcpy(s, data, len);
    s[len] = '\0';
    check_size(s, "size");
    check_list(s);
    prl_error_clear();
    free(s);
    return 0;
}
