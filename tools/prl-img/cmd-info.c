/* SPDX-License-Identifier: MIT */
/* prl-img info: describe an image, as text or as qemu-img style JSON. */
#include "prl-img.h"

#include "prl/bitmap.h"
#include "prl/bundle.h"
#include "prl/error.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* in_use values of parallels.rst. */
#define IN_USE_OPEN 0x746F6E59u   /* "Ynot": open read-write */
#define IN_USE_CLOSED 0x312e3276u /* "v2.1": closed */

static void info_help(void)
{
    printf("Usage: " IMG_NAME " info [-f FMT] [--output=human|json] FILE\n"
           "\n"
           "Describe the image FILE: format, sizes and, for Parallels "
           "images, the\n"
           "header fields.  FILE may be an NBD URI (nbd://HOST:PORT/EXPORT, "
           "...;\n"
           "see '" IMG_NAME " --help').\n"
           "\n"
           "  -f FMT            image format (see '" IMG_NAME " --help'); "
           "probed when absent\n"
           "  --output=OFMT     'human' (default) or 'json'\n"
           "  -h, --help        show this help\n");
}

/* What the in_use field says, in words. */
static const char *in_use_meaning(uint32_t v)
{
    switch (v) {
    case IN_USE_CLOSED:
        return "clean: closed";
    case IN_USE_OPEN:
        return "dirty: in use or not closed cleanly";
    case 0:
        return "clean: zero, as QEMU leaves it";
    default:
        return "unknown value, treated as clean";
    }
}

/* The images of a bundle (Parallels disk), top first, then any other
 * branch.  Prints nothing when they cannot be listed. */
static void print_bundle_human(const char *path)
{
    struct prl_snapshot_list l;

    if (prl_bundle_list(path, 0, &l) < 0) {
        return;
    }
    printf("Snapshot chain (depth 1 = top):\n");
    for (unsigned d = 1; d <= l.n; d++) {
        for (size_t i = 0; i < l.n; i++) {
            if (l.v[i].depth == d) {
                printf("    %u: %s %s (%s)\n", d, l.v[i].guid, l.v[i].file,
                       l.v[i].plain ? "Plain" : "Compressed");
            }
        }
    }
    for (size_t i = 0; i < l.n; i++) {
        if (l.v[i].depth == 0) {
            printf("    other branch: %s %s (parent %s)\n", l.v[i].guid,
                   l.v[i].file, l.v[i].parent);
        }
    }
    prl_snapshot_list_free(&l);
}

static void print_bundle_json(const char *path)
{
    struct prl_snapshot_list l;

    if (prl_bundle_list(path, 0, &l) < 0) {
        return;
    }
    printf("    \"format-specific\": {\n"
           "        \"type\": \"bundle\",\n"
           "        \"data\": {\n"
           "            \"images\": [");
    for (size_t i = 0; i < l.n; i++) {
        printf("%s\n                {\"guid\": ", i ? "," : "");
        img_json_string(stdout, l.v[i].guid);
        printf(", \"parent\": ");
        img_json_string(stdout, l.v[i].parent);
        printf(", \"file\": ");
        img_json_string(stdout, l.v[i].file);
        printf(", \"depth\": %u, \"top\": %s}", l.v[i].depth,
               l.v[i].top ? "true" : "false");
    }
    printf("\n            ]\n        }\n    },\n");
    prl_snapshot_list_free(&l);
}

/* Dirty bitmaps, in the layout of qemu-img info (flags "auto" for an
 * enabled bitmap, "in-use" for an inconsistent one) plus prl's fields. */
static void print_bitmaps_human(const struct prl_bitmap_info *v, size_t n)
{
    if (n == 0) {
        return;
    }
    printf("    bitmaps:\n");
    for (size_t i = 0; i < n; i++) {
        printf("        [%zu]:\n"
               "            name: %s\n"
               "            granularity: %" PRIu64 "\n"
               "            enabled: %s\n"
               "            consistent: %s\n"
               "            dirty bytes: %" PRIu64 "\n",
               i, v[i].name, v[i].granularity, v[i].enabled ? "true" : "false",
               v[i].consistent ? "true" : "false", v[i].dirty_bytes);
    }
}

static void print_bitmaps_json(const struct prl_bitmap_info *v, size_t n)
{
    printf(",\n            \"bitmaps\": [");
    for (size_t i = 0; i < n; i++) {
        printf("%s\n                {\"flags\": [", i ? "," : "");
        bool first = true;
        if (v[i].enabled) {
            printf("\"auto\"");
            first = false;
        }
        if (!v[i].consistent) {
            printf("%s\"in-use\"", first ? "" : ", ");
        }
        printf(
            "], \"name\": \"%s\", \"granularity\": %" PRIu64
            ", \"enabled\": %s, \"consistent\": %s, \"dirty-bytes\": %" PRIu64
            "}",
            v[i].name, v[i].granularity, v[i].enabled ? "true" : "false",
            v[i].consistent ? "true" : "false", v[i].dirty_bytes);
    }
    printf("%s]", n ? "\n            " : "");
}

static void print_human(const struct prl_image_info *in,
                        const struct prl_bitmap_info *bm, size_t n_bm)
{
    char vs[32], ds[32];

    img_human_size(in->virtual_size, vs, sizeof(vs));
    img_human_size(in->actual_size, ds, sizeof(ds));
    if (strcmp(in->format, "nbd") == 0) {
        snprintf(ds, sizeof(ds), "unavailable"); /* a server's, not ours */
    }
    printf("image: %s\n"
           "file format: %s\n"
           "virtual size: %s (%" PRIu64 " bytes)\n"
           "disk size: %s\n",
           in->filename, in->format, vs, in->virtual_size, ds);
    if (in->cluster_size) {
        printf("cluster_size: %" PRIu64 "\n", in->cluster_size);
    }
    if (strcmp(in->format, "bundle") == 0) {
        print_bundle_human(in->filename);
    }
    if (!in->has_parallels) {
        return;
    }
    printf("Format specific information:\n"
           "    subformat: %s\n"
           "    in use: 0x%08" PRIx32 " (%s)\n"
           "    empty: %s\n"
           "    data offset: %" PRIu64 "\n",
           in->subformat, in->in_use, in_use_meaning(in->in_use),
           in->empty_flag ? "true" : "false", in->data_offset);
    if (in->ext_offset) {
        printf("    ext offset: %" PRIu64 "\n", in->ext_offset);
    }
    printf("    allocated clusters: %" PRIu64 " / %" PRIu64 "\n"
           "    geometry: %" PRIu32 " cylinders, %" PRIu32 " heads, %" PRIu32
           " sectors per track\n",
           in->allocated_clusters, in->bat_entries, in->cylinders, in->heads,
           in->tracks);
    print_bitmaps_human(bm, n_bm);
}

/* Keys and layout follow `qemu-img info --output=json`. */
static void print_json(const struct prl_image_info *in,
                       const struct prl_bitmap_info *bm, size_t n_bm)
{
    printf("{\n    \"virtual-size\": %" PRIu64 ",\n    \"filename\": ",
           in->virtual_size);
    img_json_string(stdout, in->filename);
    printf(",\n");
    if (in->cluster_size) {
        printf("    \"cluster-size\": %" PRIu64 ",\n", in->cluster_size);
    }
    printf("    \"format\": ");
    img_json_string(stdout, in->format);
    printf(",\n");
    if (strcmp(in->format, "nbd") != 0) {
        printf("    \"actual-size\": %" PRIu64 ",\n", in->actual_size);
    }
    if (in->has_parallels) {
        printf("    \"format-specific\": {\n"
               "        \"type\": \"parallels\",\n"
               "        \"data\": {\n"
               "            \"subformat\": ");
        img_json_string(stdout, in->subformat);
        printf(",\n"
               "            \"in-use\": %" PRIu32 ",\n"
               "            \"empty\": %s,\n"
               "            \"data-offset\": %" PRIu64 ",\n"
               "            \"ext-offset\": %" PRIu64 ",\n"
               "            \"allocated-clusters\": %" PRIu64 ",\n"
               "            \"bat-entries\": %" PRIu64 ",\n"
               "            \"heads\": %" PRIu32 ",\n"
               "            \"cylinders\": %" PRIu32 ",\n"
               "            \"tracks\": %" PRIu32,
               in->in_use, in->empty_flag ? "true" : "false", in->data_offset,
               in->ext_offset, in->allocated_clusters, in->bat_entries,
               in->heads, in->cylinders, in->tracks);
        print_bitmaps_json(bm, n_bm);
        printf("\n        }\n    },\n");
    }
    if (strcmp(in->format, "bundle") == 0) {
        print_bundle_json(in->filename);
    }
    printf("    \"dirty-flag\": %s\n}\n", in->dirty ? "true" : "false");
}

int cmd_info(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {NULL, 0, NULL, 0},
    };
    struct prl_image_info info;
    struct prl_block *bs;
    const char *format = NULL;
    bool json = false;
    int c, r;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            info_help();
            return IMG_EXIT_OK;
        case 'f':
            format = optarg;
            break;
        case OPT_OUTPUT:
            if (img_parse_output("info", optarg, &json) < 0) {
                return IMG_EXIT_FAIL;
            }
            break;
        default:
            return img_bad_option("info", c, argv, IMG_EXIT_FAIL);
        }
    }
    if (optind >= argc) {
        return img_usage("info", IMG_EXIT_FAIL, "expecting an image file name");
    }
    if (argc - optind > 1) {
        return img_usage("info", IMG_EXIT_FAIL, "unexpected argument '%s'",
                         argv[optind + 1]);
    }
    if (img_open(argv[optind], format, 0, &bs) < 0) {
        return IMG_EXIT_FAIL;
    }
    r = prl_block_info(bs, &info);
    if (r < 0) {
        img_lib_err();
        prl_block_close(bs);
        return IMG_EXIT_FAIL;
    }
    struct prl_bitmap_info *bm = NULL;
    size_t n_bm = 0;
    if (prl_bitmap_list(bs, &bm, &n_bm) < 0) {
        img_lib_err();
        prl_block_close(bs);
        return IMG_EXIT_FAIL;
    }
    if (json) {
        print_json(&info, bm, n_bm);
    } else {
        print_human(&info, bm, n_bm);
    }
    free(bm);
    /* info points into bs: close only after printing. */
    return img_close(bs) < 0 ? IMG_EXIT_FAIL : IMG_EXIT_OK;
}
