/* SPDX-License-Identifier: MIT */
/* prl-img create: make a new Parallels or raw image. */
#include "prl-img.h"

#include "common/opts.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static void create_help(void)
{
    printf("Usage: " IMG_NAME " create [-q] [-f FMT] [-o OPTS] FILE [SIZE]\n"
           "\n"
           "Create FILE, an image of SIZE bytes that reads as zeroes.\n"
           "\n"
           "  -f FMT        image format: parallels (default), raw or "
           "bundle\n"
           "  -o OPTS       format options, key=value[,key=value...]; "
           "'-o help'\n"
           "                lists those of the format\n"
           "  -q            quiet: do not print what is created\n"
           "  -h, --help    show this help\n"
           "\n"
           "SIZE takes the suffixes K, M, G, T, P and E; it may also be "
           "given as\n"
           "the option size=SIZE.\n");
}

/* Append |s| to the growing string *buf (length *len) with ",," for each
 * comma of |s| when |escape|.  Returns 0 or -ENOMEM. */
static int append(char **buf, size_t *len, const char *s, bool escape)
{
    size_t n = strlen(s) * 2 + 1;
    char *nb = realloc(*buf, *len + n + 1);
    char *w;

    if (!nb) {
        return -ENOMEM;
    }
    *buf = nb;
    w = nb + *len;
    for (; *s; s++) {
        *w++ = *s;
        if (escape && *s == ',') {
            *w++ = ',';
        }
    }
    *w = '\0';
    *len = (size_t)(w - nb);
    return 0;
}

/* Split the -o string |all| into the driver's options (*rest, the
 * caller's to free, NULL when none) and the size= option (*size, the
 * caller's to free, NULL when absent). */
static int split_size_option(const char *all, char **rest, char **size)
{
    struct prl_opts list;
    char *buf = NULL;
    size_t len = 0;
    int r;

    *rest = NULL;
    *size = NULL;
    r = prl_opts_parse(&list, all);
    if (r < 0) {
        img_lib_err();
        return r;
    }
    for (size_t i = 0; i < list.n && r == 0; i++) {
        const struct prl_opt *o = &list.v[i];

        if (strcmp(o->key, "size") == 0) {
            free(*size);
            *size = strdup(o->value);
            r = *size ? 0 : -ENOMEM;
            continue;
        }
        if (len > 0) {
            r = append(&buf, &len, ",", false);
        }
        if (r == 0) {
            r = append(&buf, &len, o->key, true);
        }
        if (r == 0) {
            r = append(&buf, &len, "=", false);
        }
        if (r == 0) {
            r = append(&buf, &len, o->value, true);
        }
    }
    prl_opts_free(&list);
    if (r < 0) {
        img_err("out of memory");
        free(buf);
        free(*size);
        *size = NULL;
        return r;
    }
    *rest = buf;
    return 0;
}

/* Print the qemu-img style line that names what was made.  The cluster
 * size is read back from the new image, so the line shows the driver's
 * default when -o did not set one. */
static void print_formatting(const char *path, const char *format,
                             uint64_t size, const char *opts)
{
    struct prl_opts list;
    struct prl_block *bs;

    printf("Formatting '%s', fmt=%s size=%" PRIu64, path, format, size);
    if (prl_block_open(path, format, 0, &bs) == 0) {
        struct prl_image_info info;
        if (prl_block_info(bs, &info) == 0 && info.cluster_size) {
            printf(" cluster_size=%" PRIu64, info.cluster_size);
        }
        prl_block_close(bs);
    }
    if (prl_opts_parse(&list, opts) == 0) {
        for (size_t i = 0; i < list.n; i++) {
            if (strcmp(list.v[i].key, "cluster_size") != 0) {
                printf(" %s=%s", list.v[i].key, list.v[i].value);
            }
        }
        prl_opts_free(&list);
    }
    prl_error_clear();
    printf("\n");
}

int cmd_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    const char *format = "parallels";
    char *opts = NULL, *rest = NULL, *size_str = NULL;
    const char *path;
    bool quiet = false;
    uint64_t size;
    int c, status = IMG_EXIT_FAIL;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hqf:o:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            create_help();
            free(opts);
            return IMG_EXIT_OK;
        case 'q':
            quiet = true;
            break;
        case 'f':
            format = optarg;
            break;
        case 'o':
            if (img_opts_append(&opts, optarg) < 0) {
                free(opts);
                return IMG_EXIT_FAIL;
            }
            break;
        default:
            free(opts);
            return img_bad_option("create", c, argv, IMG_EXIT_FAIL);
        }
    }
    if (img_opts_want_help(opts)) {
        status =
            img_print_create_options(format) == 0 ? IMG_EXIT_OK : IMG_EXIT_FAIL;
        goto out;
    }
    if (optind >= argc) {
        status =
            img_usage("create", IMG_EXIT_FAIL, "expecting an image file name");
        goto out;
    }
    if (argc - optind > 2) {
        status = img_usage("create", IMG_EXIT_FAIL, "unexpected argument '%s'",
                           argv[optind + 2]);
        goto out;
    }
    path = argv[optind];
    if (split_size_option(opts, &rest, &size_str) < 0) {
        goto out;
    }
    if (argc - optind == 2) {
        if (img_parse_size(argv[optind + 1], "image size", &size) < 0) {
            goto out;
        }
    } else if (size_str) {
        if (img_parse_size(size_str, "image size", &size) < 0) {
            goto out;
        }
    } else {
        status = img_usage("create", IMG_EXIT_FAIL,
                           "image creation needs a "
                           "size: give SIZE or -o size=SIZE");
        goto out;
    }
    if (prl_block_create(path, format, size, rest) < 0) {
        img_lib_err();
        goto out;
    }
    if (!quiet) {
        print_formatting(path, format, size, rest);
    }
    status = IMG_EXIT_OK;
out:
    free(opts);
    free(rest);
    free(size_str);
    return status;
}
