/* SPDX-License-Identifier: MIT */
/* prl-img bitmap: add, remove, clear, enable, disable and merge the
 * persistent dirty bitmaps of an image, as qemu-img bitmap does. */
#include "prl-img.h"

#include "prl/bitmap.h"
#include "prl/error.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum bitmap_op {
    OP_ADD,
    OP_REMOVE,
    OP_CLEAR,
    OP_ENABLE,
    OP_DISABLE,
    OP_MERGE,
};

struct bitmap_action {
    enum bitmap_op op;
    const char *source; /* merge */
};

static void bitmap_help(void)
{
    printf("Usage: " IMG_NAME " bitmap (--add [-g SIZE] | --remove | --clear "
           "| --enable |\n"
           "                     --disable | --merge SOURCE [-b SOURCE_FILE] "
           "[-F FMT])...\n"
           "                     [-f FMT] FILE BITMAP\n"
           "\n"
           "Change the persistent dirty bitmap BITMAP of FILE.  Parallels "
           "images name\n"
           "a bitmap by its UUID; with --add, BITMAP 'auto' makes a random "
           "one and\n"
           "prints it.  Several operations run in the order given.\n"
           "\n"
           "  --add             add an enabled, empty bitmap\n"
           "  -g SIZE           granularity of a new bitmap (power of two, "
           ">= 512;\n"
           "                    default 64K)\n"
           "  --remove          remove the bitmap\n"
           "  --clear           clear every bit (also makes an inconsistent "
           "bitmap\n"
           "                    usable again)\n"
           "  --enable          let writes mark the bitmap\n"
           "  --disable         stop marking the bitmap\n"
           "  --merge SOURCE    set every bit that is set in bitmap SOURCE\n"
           "  -b SOURCE_FILE    take SOURCE from this image instead of FILE\n"
           "  -F FMT            format of SOURCE_FILE\n"
           "  -f FMT            format of FILE (parallels); probed when "
           "absent\n"
           "  -h, --help        show this help\n");
}

/* Run one action.  An 'auto' name made by --add goes to |made|, printed
 * only once the image is closed with it stored. */
static int run_action(struct prl_block *bs, const struct bitmap_action *a,
                      const char *name, uint64_t granularity,
                      const char *src_file, const char *src_fmt,
                      char made[PRL_BITMAP_NAME_SIZE])
{
    struct prl_block *src = NULL;
    int r;

    switch (a->op) {
    case OP_ADD:
        return prl_bitmap_add(bs, name, granularity, made);
    case OP_REMOVE:
        return prl_bitmap_remove(bs, name);
    case OP_CLEAR:
        return prl_bitmap_clear(bs, name);
    case OP_ENABLE:
        return prl_bitmap_enable(bs, name);
    case OP_DISABLE:
        return prl_bitmap_disable(bs, name);
    case OP_MERGE:
        if (src_file) {
            r = prl_block_open(src_file, src_fmt, 0, &src);
            if (r < 0) {
                return r;
            }
        }
        r = prl_bitmap_merge(bs, name, src ? src : bs, a->source);
        if (src) {
            int r2 = prl_block_close(src);
            r = r < 0 ? r : r2;
        }
        return r;
    }
    return -1;
}

int cmd_bitmap(int argc, char **argv)
{
    enum {
        OPT_ADD = 256,
        OPT_REMOVE,
        OPT_CLEAR,
        OPT_ENABLE,
        OPT_DISABLE,
        OPT_MERGE
    };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"add", no_argument, NULL, OPT_ADD},
        {"remove", no_argument, NULL, OPT_REMOVE},
        {"clear", no_argument, NULL, OPT_CLEAR},
        {"enable", no_argument, NULL, OPT_ENABLE},
        {"disable", no_argument, NULL, OPT_DISABLE},
        {"merge", required_argument, NULL, OPT_MERGE},
        {"granularity", required_argument, NULL, 'g'},
        {"source-file", required_argument, NULL, 'b'},
        {"source-format", required_argument, NULL, 'F'},
        {"format", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    struct bitmap_action *actions = NULL;
    size_t n_actions = 0;
    const char *format = NULL, *src_file = NULL, *src_fmt = NULL;
    uint64_t granularity = 0;
    struct prl_block *bs;
    int c, status = IMG_EXIT_FAIL;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hg:b:F:f:", longopts, NULL)) != -1) {
        struct bitmap_action a = {0};
        switch (c) {
        case 'h':
            bitmap_help();
            free(actions);
            return IMG_EXIT_OK;
        case 'g':
            if (img_parse_size(optarg, "granularity", &granularity) < 0) {
                free(actions);
                return IMG_EXIT_FAIL;
            }
            continue;
        case 'b':
            src_file = optarg;
            continue;
        case 'F':
            src_fmt = optarg;
            continue;
        case 'f':
            format = optarg;
            continue;
        case OPT_ADD:
            a.op = OP_ADD;
            break;
        case OPT_REMOVE:
            a.op = OP_REMOVE;
            break;
        case OPT_CLEAR:
            a.op = OP_CLEAR;
            break;
        case OPT_ENABLE:
            a.op = OP_ENABLE;
            break;
        case OPT_DISABLE:
            a.op = OP_DISABLE;
            break;
        case OPT_MERGE:
            a.op = OP_MERGE;
            a.source = optarg;
            break;
        default:
            free(actions);
            return img_bad_option("bitmap", c, argv, IMG_EXIT_FAIL);
        }
        struct bitmap_action *nv =
            realloc(actions, (n_actions + 1) * sizeof(*nv));
        if (!nv) {
            free(actions);
            img_err("out of memory");
            return IMG_EXIT_FAIL;
        }
        actions = nv;
        actions[n_actions++] = a;
    }
    if (n_actions == 0) {
        return img_usage("bitmap", IMG_EXIT_FAIL,
                         "need at least one of "
                         "--add, --remove, --clear, --enable, --disable, "
                         "--merge");
    }
    if (argc - optind != 2) {
        free(actions);
        return img_usage("bitmap", IMG_EXIT_FAIL,
                         "expecting FILE and "
                         "BITMAP");
    }
    if (granularity && !(actions[0].op == OP_ADD)) {
        bool any_add = false;
        for (size_t i = 0; i < n_actions; i++) {
            any_add |= actions[i].op == OP_ADD;
        }
        if (!any_add) {
            free(actions);
            return img_usage("bitmap", IMG_EXIT_FAIL,
                             "-g only applies to "
                             "--add");
        }
    }
    if (src_file) {
        bool any_merge = false;
        for (size_t i = 0; i < n_actions; i++) {
            any_merge |= actions[i].op == OP_MERGE;
        }
        if (!any_merge) {
            free(actions);
            return img_usage("bitmap", IMG_EXIT_FAIL,
                             "-b only applies to "
                             "--merge");
        }
    }
    if (img_open(argv[optind], format, PRL_OPEN_RDWR, &bs) < 0) {
        free(actions);
        return IMG_EXIT_FAIL;
    }
    status = IMG_EXIT_OK;
    /* Each --add of 'auto' makes one more name. */
    char(*made)[PRL_BITMAP_NAME_SIZE] = calloc(n_actions, sizeof(*made));
    if (!made) {
        img_err("out of memory");
        status = IMG_EXIT_FAIL;
    }
    for (size_t i = 0; made && i < n_actions; i++) {
        if (run_action(bs, &actions[i], argv[optind + 1], granularity, src_file,
                       src_fmt, made[i]) < 0) {
            img_lib_err();
            status = IMG_EXIT_FAIL;
            break;
        }
    }
    if (img_close(bs) < 0) {
        status = IMG_EXIT_FAIL;
    }
    for (size_t i = 0; status == IMG_EXIT_OK && i < n_actions; i++) {
        if (actions[i].op == OP_ADD && strcmp(argv[optind + 1], "auto") == 0) {
            printf("%s\n", made[i]);
        }
    }
    free(made);
    free(actions);
    return status;
}
