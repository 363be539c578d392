/* SPDX-License-Identifier: MIT */
/* prl-img commit: merge the top image of a Parallels disk into its
 * parent. */
#include "prl-img.h"

#include "prl/bundle.h"
#include "prl/error.h"

static void commit_help(void)
{
    printf("Usage: " IMG_NAME " commit [-q] [--allow-external-files] "
           "BUNDLE\n"
           "\n"
           "Merge the top image of the Parallels disk BUNDLE (its directory "
           "or its\n"
           "DiskDescriptor.xml) into its parent, which becomes the top; the "
           "old top's\n"
           "file is removed.  The guest sees no change.\n"
           "\n"
           "  --allow-external-files\n"
           "                accept image files outside the bundle "
           "directory\n"
           "  -q            quiet: do not print \"Image committed.\"\n"
           "  -h, --help    show this help\n");
}

int cmd_commit(int argc, char **argv)
{
    enum { OPT_EXTERNAL = 256 };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"quiet", no_argument, NULL, 'q'},
        {"allow-external-files", no_argument, NULL, OPT_EXTERNAL},
        {NULL, 0, NULL, 0},
    };
    unsigned flags = 0;
    bool quiet = false;
    int c;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            commit_help();
            return IMG_EXIT_OK;
        case 'q':
            quiet = true;
            break;
        case OPT_EXTERNAL:
            flags |= PRL_OPEN_BUNDLE_EXTERNAL;
            break;
        default:
            return img_bad_option("commit", c, argv, IMG_EXIT_FAIL);
        }
    }
    if (optind >= argc) {
        return img_usage("commit", IMG_EXIT_FAIL, "expecting a bundle");
    }
    if (argc - optind > 1) {
        return img_usage("commit", IMG_EXIT_FAIL,
                         "unexpected argument "
                         "'%s'",
                         argv[optind + 1]);
    }
    if (img_refuse_nbd("commit", argv[optind])) {
        return IMG_EXIT_FAIL;
    }
    if (prl_bundle_commit(argv[optind], flags) < 0) {
        img_lib_err();
        return IMG_EXIT_FAIL;
    }
    if (!quiet) {
        printf("Image committed.\n");
    }
    return IMG_EXIT_OK;
}
