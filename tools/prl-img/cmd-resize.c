/* SPDX-License-Identifier: MIT */
/* prl-img resize: change the guest size of an image. */
#include "prl-img.h"

#include "prl/error.h"

#include <ctype.h>
#include <inttypes.h>
#include <string.h>

static void resize_help(void)
{
    printf("Usage: " IMG_NAME " resize [-q] [-f FMT] [--shrink] FILE "
           "[+|-]SIZE\n"
           "\n"
           "Set the guest size of FILE to SIZE, or grow (+SIZE) or shrink "
           "(-SIZE) it\n"
           "by that much.\n"
           "\n"
           "  -f FMT        image format (see '" IMG_NAME " --help'); probed "
           "when absent\n"
           "  --shrink      allow dropping data past the new end\n"
           "  -q            quiet: do not print \"Image resized.\"\n"
           "  -h, --help    show this help\n");
}

/* New size from |arg| ("10G", "+1G", "-512M") and the current |size|.
 * Prints the error. */
static int new_size(const char *arg, uint64_t size, uint64_t *out)
{
    uint64_t n;

    if (arg[0] == '+' || arg[0] == '-') {
        if (img_parse_size(arg + 1, "size", &n) < 0) {
            return -1;
        }
        if (arg[0] == '+') {
            if (n > UINT64_MAX - size) {
                img_err("new size %" PRIu64 " + %" PRIu64 " is too large", size,
                        n);
                return -1;
            }
            *out = size + n;
        } else {
            if (n >= size) {
                img_err("new image size must be positive: %" PRIu64
                        " - %" PRIu64 " bytes",
                        size, n);
                return -1;
            }
            *out = size - n;
        }
        return 0;
    }
    if (img_parse_size(arg, "size", &n) < 0) {
        return -1;
    }
    if (n == 0) {
        img_err("new image size must be positive");
        return -1;
    }
    *out = n;
    return 0;
}

int cmd_resize(int argc, char **argv)
{
    enum { OPT_SHRINK = 256 };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"quiet", no_argument, NULL, 'q'},
        {"shrink", no_argument, NULL, OPT_SHRINK},
        {NULL, 0, NULL, 0},
    };
    struct prl_block *bs;
    const char *format = NULL, *size_arg = NULL;
    bool quiet = false, shrink = false;
    uint64_t size;
    int c, r;

    /* Take a "-SIZE" last argument away before getopt reads it as an
     * option, as qemu-img does. */
    if (argc >= 3 && argv[argc - 1][0] == '-' &&
        isdigit((unsigned char)argv[argc - 1][1])) {
        size_arg = argv[argc - 1];
        argc--;
    }
    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hqf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            resize_help();
            return IMG_EXIT_OK;
        case 'q':
            quiet = true;
            break;
        case 'f':
            format = optarg;
            break;
        case OPT_SHRINK:
            shrink = true;
            break;
        default:
            return img_bad_option("resize", c, argv, IMG_EXIT_FAIL);
        }
    }
    if (!size_arg && optind + 1 < argc) {
        size_arg = argv[--argc];
    }
    if (optind >= argc || !size_arg) {
        return img_usage("resize", IMG_EXIT_FAIL,
                         "expecting an image file name and a size");
    }
    if (argc - optind > 1) {
        return img_usage("resize", IMG_EXIT_FAIL, "unexpected argument '%s'",
                         argv[optind + 1]);
    }
    if (img_open(argv[optind], format, PRL_OPEN_RDWR, &bs) < 0) {
        return IMG_EXIT_FAIL;
    }
    r = new_size(size_arg, prl_block_size(bs), &size);
    if (r == 0) {
        r = prl_block_resize(bs, size, shrink);
        if (r < 0) {
            img_lib_err();
        }
    }
    if (img_close(bs) < 0) {
        r = -1;
    }
    if (r < 0) {
        return IMG_EXIT_FAIL;
    }
    if (!quiet) {
        printf("Image resized.\n");
    }
    return IMG_EXIT_OK;
}
