/* SPDX-License-Identifier: MIT */
/* prl-img snapshot: list, create and delete the snapshots of a Parallels
 * disk (a DiskDescriptor.xml bundle). */
#include "prl-img.h"

#include "prl/bundle.h"
#include "prl/error.h"

#include <inttypes.h>
#include <string.h>

static void snapshot_help(void)
{
    printf("Usage: " IMG_NAME " snapshot [--output=human|json] "
           "[--allow-external-files]\n"
           "                    -l | -c | -d GUID  BUNDLE\n"
           "\n"
           "List, create or delete the snapshots of the Parallels disk "
           "BUNDLE (its\n"
           "directory or its DiskDescriptor.xml).\n"
           "\n"
           "  -l            list the images: GUID, parent, depth in the "
           "active chain\n"
           "                (1 = top, '-' = another branch), allocated "
           "size, file\n"
           "  -c            take a snapshot: a new empty image becomes the "
           "top and the\n"
           "                old top becomes read-only; prints the new "
           "GUID\n"
           "  -d GUID       delete snapshot GUID by merging its data into "
           "its child,\n"
           "                so the guest sees no change\n"
           "  --output=OFMT 'human' (default) or 'json', for -l\n"
           "  --allow-external-files\n"
           "                accept image files outside the bundle "
           "directory\n"
           "  -h, --help    show this help\n");
}

static void list_human(const struct prl_snapshot_list *l)
{
    printf("%-38s  %-38s  %5s  %10s  %s\n", "GUID", "PARENT", "DEPTH",
           "ALLOCATED", "FILE");
    for (size_t i = 0; i < l->n; i++) {
        const struct prl_snapshot *s = &l->v[i];
        char depth[16], size[32];

        if (s->depth) {
            snprintf(depth, sizeof(depth), "%u%s", s->depth, s->top ? "*" : "");
        } else {
            snprintf(depth, sizeof(depth), "-");
        }
        img_human_size(s->allocated, size, sizeof(size));
        printf("%-38s  %-38s  %5s  %10s  %s\n", s->guid, s->parent, depth, size,
               s->file);
    }
}

static void list_json(const struct prl_snapshot_list *l)
{
    printf("[");
    for (size_t i = 0; i < l->n; i++) {
        const struct prl_snapshot *s = &l->v[i];

        printf("%s\n    {\n        \"guid\": ", i ? "," : "");
        img_json_string(stdout, s->guid);
        printf(",\n        \"parent\": ");
        img_json_string(stdout, s->parent);
        printf(",\n        \"type\": \"%s\",\n        \"file\": ",
               s->plain ? "Plain" : "Compressed");
        img_json_string(stdout, s->file);
        printf(",\n        \"depth\": %u,\n        \"top\": %s,\n"
               "        \"allocated-size\": %" PRIu64 "\n    }",
               s->depth, s->top ? "true" : "false", s->allocated);
    }
    printf("\n]\n");
}

int cmd_snapshot(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_EXTERNAL };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"allow-external-files", no_argument, NULL, OPT_EXTERNAL},
        {NULL, 0, NULL, 0},
    };
    const char *del = NULL;
    unsigned flags = 0;
    bool json = false;
    char action = 0, guid[39];
    int c, r;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hlcd:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            snapshot_help();
            return IMG_EXIT_OK;
        case 'l':
        case 'c':
        case 'd':
            if (action && action != c) {
                return img_usage("snapshot", IMG_EXIT_FAIL,
                                 "-l, -c and -d "
                                 "exclude each other");
            }
            action = (char)c;
            del = c == 'd' ? optarg : del;
            break;
        case OPT_OUTPUT:
            if (img_parse_output("snapshot", optarg, &json) < 0) {
                return IMG_EXIT_FAIL;
            }
            break;
        case OPT_EXTERNAL:
            flags |= PRL_OPEN_BUNDLE_EXTERNAL;
            break;
        default:
            return img_bad_option("snapshot", c, argv, IMG_EXIT_FAIL);
        }
    }
    if (!action) {
        return img_usage("snapshot", IMG_EXIT_FAIL,
                         "expecting -l, -c or "
                         "-d GUID");
    }
    if (optind >= argc) {
        return img_usage("snapshot", IMG_EXIT_FAIL, "expecting a bundle");
    }
    if (argc - optind > 1) {
        return img_usage("snapshot", IMG_EXIT_FAIL,
                         "unexpected argument "
                         "'%s'",
                         argv[optind + 1]);
    }
    if (img_refuse_nbd("snapshot", argv[optind])) {
        return IMG_EXIT_FAIL;
    }
    if (action == 'l') {
        struct prl_snapshot_list l;
        r = prl_bundle_list(argv[optind], flags, &l);
        if (r == 0) {
            if (json) {
                list_json(&l);
            } else {
                list_human(&l);
            }
            prl_snapshot_list_free(&l);
        }
    } else if (action == 'c') {
        r = prl_bundle_snapshot_create(argv[optind], flags, guid);
        if (r == 0) {
            printf("%s\n", guid);
        }
    } else {
        r = prl_bundle_snapshot_delete(argv[optind], del, flags);
    }
    if (r < 0) {
        img_lib_err();
        return IMG_EXIT_FAIL;
    }
    return IMG_EXIT_OK;
}
