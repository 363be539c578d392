/* SPDX-License-Identifier: MIT */
/* Fuzz target for DiskDescriptor.xml (block/bundle-xml.h): the input is a
 * descriptor; one that parses must describe a well-formed snapshot tree,
 * survive a serialize/parse round trip unchanged, and take a new top
 * snapshot and lose it again. */
#include "block/bundle-xml.h"
#include "prl/error.h"

#include "fuzz-util.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A GUID no seed uses, for the snapshot the target adds. */
#define NEW_GUID "{0f0f0f0f-1234-4abc-8def-00000000f022}"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The tree promises of a parsed descriptor: indices in range, one root
 * with the zero parent, and every shot reaches the root without a loop. */
static void check_tree(const struct bundle_desc *d)
{
    char g[BUNDLE_GUID_LEN];

    CHECK(d->n_images >= 1 && d->n_images <= BUNDLE_MAX_IMAGES);
    CHECK(d->n_shots >= 1 && d->n_shots <= BUNDLE_MAX_IMAGES);
    CHECK(d->top < d->n_shots && d->root < d->n_shots);
    CHECK(strcmp(d->shots[d->root].parent, BUNDLE_GUID_ZERO) == 0);
    CHECK(d->shots[d->root].parent_shot == SIZE_MAX);
    for (size_t i = 0; i < d->n_images; i++) {
        CHECK(bundle_guid_parse(d->images[i].guid, g));
        CHECK(strcmp(g, d->images[i].guid) == 0);
        CHECK(d->images[i].file && d->images[i].file[0] != '\0');
    }
    for (size_t i = 0; i < d->n_shots; i++) {
        const struct bundle_shot *s = &d->shots[i];
        size_t at = i, steps = 0;

        CHECK(bundle_guid_parse(s->guid, g));
        CHECK(s->image < d->n_images);
        CHECK(strcmp(d->images[s->image].guid, s->guid) == 0);
        CHECK(bundle_desc_find(d, s->guid) == i);
        if (i != d->root) {
            CHECK(s->parent_shot < d->n_shots);
            CHECK(strcmp(d->shots[s->parent_shot].guid, s->parent) == 0);
        }
        while (at != d->root) {
            at = d->shots[at].parent_shot;
            CHECK(at < d->n_shots && ++steps < d->n_shots);
        }
    }
}

/* Serialize and parse again: the same images, shots and top. */
static void check_roundtrip(const struct bundle_desc *d)
{
    struct bundle_desc again;
    char *xml = NULL;
    size_t len = 0;

    CHECK(bundle_desc_serialize(d, &xml, &len) == 0);
    CHECK(xml && len > 0);
    if (bundle_desc_parse(xml, len, "roundtrip", &again) != 0) {
        fprintf(stderr, "reparse failed: %s\n", prl_error_message());
        CHECK(!"a serialized descriptor parses again");
    }
    check_tree(&again);
    CHECK(again.n_images == d->n_images && again.n_shots == d->n_shots);
    CHECK(again.disk_sectors == d->disk_sectors);
    CHECK(again.blocksize == d->blocksize);
    CHECK(strcmp(again.shots[again.top].guid, d->shots[d->top].guid) == 0);
    for (size_t i = 0; i < d->n_images; i++) {
        CHECK(strcmp(again.images[i].guid, d->images[i].guid) == 0);
        CHECK(strcmp(again.images[i].file, d->images[i].file) == 0);
        CHECK(again.images[i].plain == d->images[i].plain);
    }
    for (size_t i = 0; i < d->n_shots; i++) {
        CHECK(strcmp(again.shots[i].guid, d->shots[i].guid) == 0);
        CHECK(strcmp(again.shots[i].parent, d->shots[i].parent) == 0);
    }
    bundle_desc_free(&again);
    free(xml);
}

/* Add a top snapshot over the current top, then remove it: the old top
 * is the top again and the tree is as before. */
static void check_edit(struct bundle_desc *d)
{
    char old_top[BUNDLE_GUID_LEN];
    size_t n_shots = d->n_shots;
    int r;

    memcpy(old_top, d->shots[d->top].guid, sizeof(old_top));
    r = bundle_desc_add_top(d, NEW_GUID, "fuzz-new.hds", old_top);
    if (r < 0) {
        /* Refused (the GUID is taken, the tree is full): unchanged. */
        CHECK(d->n_shots == n_shots);
        CHECK(strcmp(d->shots[d->top].guid, old_top) == 0);
        return;
    }
    check_tree(d);
    CHECK(d->n_shots == n_shots + 1);
    CHECK(strcmp(d->shots[d->top].guid, NEW_GUID) == 0);
    CHECK(strcmp(d->shots[d->top].parent, old_top) == 0);
    check_roundtrip(d);

    r = bundle_desc_remove(d, NEW_GUID);
    if (r < 0) {
        fprintf(stderr, "remove failed: %s\n", prl_error_message());
        CHECK(!"the snapshot just added can be removed");
    }
    check_tree(d);
    CHECK(d->n_shots == n_shots);
    CHECK(strcmp(d->shots[d->top].guid, old_top) == 0);
    CHECK(bundle_desc_find(d, NEW_GUID) == SIZE_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bundle_desc d;
    char g[BUNDLE_GUID_LEN], text[BUNDLE_GUID_LEN];
    int r;

    /* The GUID syntax on its own, from the first bytes. */
    if (size >= BUNDLE_GUID_LEN - 1) {
        memcpy(text, data, BUNDLE_GUID_LEN - 1);
        text[BUNDLE_GUID_LEN - 1] = '\0';
        if (bundle_guid_parse(text, g)) {
            char again[BUNDLE_GUID_LEN];
            CHECK(bundle_guid_parse(g, again) && strcmp(g, again) == 0);
        }
    }

    if (size > BUNDLE_XML_MAX_BYTES) {
        return 0;
    }
    r = bundle_desc_parse(data, size, "fuzz.xml", &d);
    if (r < 0) {
        CHECK(prl_error_message()[0] != '\0');
        prl_error_clear();
        return 0;
    }
    check_tree(&d);
    check_roundtrip(&d);
    check_edit(&d);
    check_roundtrip(&d);
    bundle_desc_free(&d);
    prl_error_clear();
    return 0;
}
