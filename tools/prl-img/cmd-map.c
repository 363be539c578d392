/* SPDX-License-Identifier: MIT */
/* prl-img map: the allocation map of an image, in qemu-img's two output
 * shapes. */
#include "prl-img.h"

#include "common/util.h"
#include "prl/bitmap.h"
#include "prl/error.h"

#include <inttypes.h>
#include <string.h>

/* One line of output: a run of extents with the same status. */
struct map_entry {
    uint64_t start;  /* guest bytes */
    uint64_t length; /* bytes */
    uint64_t offset; /* host bytes, when has_offset */
    uint32_t depth;  /* qemu-img numbering: 0 = top layer */
    bool present, zero, data, has_offset;
};

/* Largest range asked of the block layer at once; extents merge anyway. */
#define MAP_QUERY_MAX ((uint64_t)1 << 30)

static void map_help(void)
{
    printf("Usage: " IMG_NAME " map [-f FMT] [--output=human|json] "
           "[--start-offset=N]\n"
           "               [--max-length=N] [--bitmap=NAME] FILE\n"
           "\n"
           "Show which guest ranges of FILE hold data and where they are "
           "stored.\n"
           "FILE may be an NBD URI (nbd://HOST:PORT/EXPORT, ...; see '" IMG_NAME
           " --help').\n"
           "\n"
           "  -f FMT              image format (see '" IMG_NAME " --help'); "
           "probed when\n"
           "                      absent\n"
           "  --output=OFMT       'human' (default): the ranges with data "
           "and where\n"
           "                      they are in the file; 'json': every "
           "range\n"
           "  --start-offset=N    first guest byte to describe (default 0)\n"
           "  --max-length=N      describe at most N bytes\n"
           "  --bitmap=NAME       show the dirty extents of bitmap NAME "
           "instead\n"
           "  -h, --help          show this help\n");
}

static bool mergeable(const struct map_entry *a, const struct map_entry *b)
{
    if (a->present != b->present || a->zero != b->zero || a->data != b->data ||
        a->depth != b->depth || a->has_offset != b->has_offset) {
        return false;
    }
    return !a->has_offset || a->offset + a->length == b->offset;
}

static void print_entry(const struct map_entry *e, bool json, bool first,
                        const char *filename)
{
    if (json) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
               ", \"depth\": %" PRIu32 ", \"present\": %s, \"zero\": %s"
               ", \"data\": %s",
               first ? "[" : ",\n", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %" PRIu64, e->offset);
        }
        printf("}");
    } else if (e->data && e->has_offset) {
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start,
               e->length, e->offset, filename);
    }
}

static int map_image(struct prl_block *bs, uint64_t start, uint64_t end,
                     bool json)
{
    const char *filename = prl_block_filename(bs);
    struct map_entry cur, next;
    bool first = true;
    uint64_t pos = start;

    if (!json) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }
    /* An empty range still gets one all-false entry, as qemu-img does. */
    memset(&cur, 0, sizeof(cur));
    cur.start = start;
    while (pos < end) {
        struct prl_extent ext;
        int r =
            prl_block_status(bs, pos, PRL_MIN(end - pos, MAP_QUERY_MAX), &ext);
        if (r < 0) {
            img_lib_err();
            if (json && !first) {
                printf("]\n");
            }
            return r;
        }
        next.start = pos;
        next.length = ext.length;
        next.present = ext.flags & PRL_EXT_ALLOCATED;
        next.zero = ext.flags & PRL_EXT_ZERO;
        next.data = ext.flags & PRL_EXT_DATA;
        next.has_offset = ext.flags & PRL_EXT_OFFSET;
        next.offset = next.has_offset ? ext.offset : 0;
        /* qemu-img counts layers from 0; unallocated ranges say 0 too. */
        next.depth = ext.depth > 0 ? ext.depth - 1 : 0;
        if (pos > start && mergeable(&cur, &next)) {
            cur.length += next.length;
        } else {
            if (pos > start) {
                print_entry(&cur, json, first, filename);
                first = false;
            }
            cur = next;
        }
        pos += ext.length;
    }
    print_entry(&cur, json, first, filename);
    if (json) {
        printf("]\n");
    }
    return 0;
}

/* The dirty extents of a bitmap: JSON lists every extent with "dirty",
 * human output lists the dirty ones.  The first lookup comes before any
 * output, so an unknown bitmap prints its error alone. */
static int map_bitmap(struct prl_block *bs, const char *name, uint64_t start,
                      uint64_t end, bool json)
{
    uint64_t pos = start, n = 0;
    bool dirty = false;
    int r = 0;

    if (pos < end) {
        r = prl_bitmap_status(bs, name, pos, end - pos, &dirty, &n);
        if (r < 0) {
            img_lib_err();
            return r;
        }
    }
    if (json) {
        printf("[");
    } else {
        printf("%-16s%s\n", "Offset", "Length");
    }
    while (pos < end) {
        if (json) {
            printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
                   ", \"dirty\": %s}",
                   pos == start ? "" : ",\n", pos, n, dirty ? "true" : "false");
        } else if (dirty) {
            printf("%#-16" PRIx64 "%#" PRIx64 "\n", pos, n);
        }
        pos += n;
        if (pos < end) {
            r = prl_bitmap_status(bs, name, pos, end - pos, &dirty, &n);
            if (r < 0) {
                img_lib_err();
                break;
            }
        }
    }
    if (json) {
        printf("]\n");
    }
    return r;
}

int cmd_map(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_START, OPT_MAXLEN, OPT_BITMAP };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"start-offset", required_argument, NULL, OPT_START},
        {"max-length", required_argument, NULL, OPT_MAXLEN},
        {"bitmap", required_argument, NULL, OPT_BITMAP},
        {NULL, 0, NULL, 0},
    };
    struct prl_block *bs;
    const char *format = NULL, *bitmap = NULL;
    uint64_t start = 0, max_len = UINT64_MAX, size, end;
    bool json = false;
    int c, r;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            map_help();
            return IMG_EXIT_OK;
        case 'f':
            format = optarg;
            break;
        case OPT_OUTPUT:
            if (img_parse_output("map", optarg, &json) < 0) {
                return IMG_EXIT_FAIL;
            }
            break;
        case OPT_START:
            if (img_parse_size(optarg, "start offset", &start) < 0) {
                return IMG_EXIT_FAIL;
            }
            break;
        case OPT_BITMAP:
            bitmap = optarg;
            break;
        case OPT_MAXLEN:
            if (img_parse_size(optarg, "max length", &max_len) < 0) {
                return IMG_EXIT_FAIL;
            }
            break;
        default:
            return img_bad_option("map", c, argv, IMG_EXIT_FAIL);
        }
    }
    if (optind >= argc) {
        return img_usage("map", IMG_EXIT_FAIL, "expecting an image file name");
    }
    if (argc - optind > 1) {
        return img_usage("map", IMG_EXIT_FAIL, "unexpected argument '%s'",
                         argv[optind + 1]);
    }
    /* An NBD export's bitmaps are the server's: ask for them at open. */
    if (img_open(argv[optind], format, bitmap ? PRL_OPEN_REMOTE_BITMAPS : 0,
                 &bs) < 0) {
        return IMG_EXIT_FAIL;
    }
    size = prl_block_size(bs);
    end = size;
    if (start >= size) {
        end = start; /* nothing to describe */
    } else if (max_len < size - start) {
        end = start + max_len;
    }
    r = bitmap ? map_bitmap(bs, bitmap, start, end, json)
               : map_image(bs, start, end, json);
    if (img_close(bs) < 0) {
        r = -1;
    }
    return r < 0 ? IMG_EXIT_FAIL : IMG_EXIT_OK;
}
