/* SPDX-License-Identifier: MIT */
/* Helpers every prl-img subcommand uses: messages, getopt glue, opening
 * images, size parsing and printing, JSON strings. */
#include "prl-img.h"

#include "common/opts.h"
#include "nbd/uri.h"
#include "prl/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void img_err(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs(IMG_NAME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void img_lib_err(void)
{
    img_err("%s", prl_error_message());
}

int img_usage(const char *cmd, int status, const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs(IMG_NAME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (cmd) {
        fprintf(stderr,
                "\nTry '" IMG_NAME " %s --help' for more information.\n", cmd);
    } else {
        fputs("\nTry '" IMG_NAME " --help' for more information.\n", stderr);
    }
    return status;
}

int img_bad_option(const char *cmd, int c, char **argv, int status)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";

    if (c == ':') {
        if (optopt) {
            return img_usage(cmd, status, "option '-%c' requires an argument",
                             optopt);
        }
        return img_usage(cmd, status, "option '%s' requires an argument", arg);
    }
    if (optopt) {
        return img_usage(cmd, status, "invalid option '-%c'", optopt);
    }
    return img_usage(cmd, status, "unrecognized option '%s'", arg);
}

void img_getopt_reset(void)
{
    optind = 0; /* GNU: reinitialize completely */
    opterr = 0;
}

unsigned img_open_flags;

int img_open(const char *path, const char *format, unsigned flags,
             struct prl_block **out)
{
    int r = prl_block_open(path, format, flags | img_open_flags, out);

    if (r < 0) {
        img_lib_err();
    }
    return r;
}

bool img_refuse_nbd(const char *cmd, const char *path)
{
    if (!prl_nbd_uri_is_nbd(path)) {
        return false;
    }
    img_err("%s: '%s' is an NBD URI; %s works on a Parallels disk "
            "directory (DiskDescriptor.xml), not on an NBD export",
            cmd, path, cmd);
    return true;
}

int img_close(struct prl_block *bs)
{
    int r = prl_block_close(bs);

    if (r < 0) {
        img_lib_err();
    }
    return r;
}

int img_parse_size(const char *s, const char *what, uint64_t *out)
{
    int r = prl_parse_size(s, what, out);

    if (r < 0) {
        img_lib_err();
    }
    return r;
}

int img_parse_output(const char *cmd, const char *s, bool *json)
{
    if (strcmp(s, "json") == 0) {
        *json = true;
        return 0;
    }
    if (strcmp(s, "human") == 0) {
        *json = false;
        return 0;
    }
    img_usage(cmd, IMG_EXIT_FAIL,
              "--output must be 'human' or 'json', not '%s'", s);
    return -1;
}

void img_human_size(uint64_t v, char *buf, size_t len)
{
    static const char *const units[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    double scaled = (double)v;
    size_t i = 0;

    /* Move to the next unit once the number would need four digits, so
     * there are never more than three before the point. */
    while (i + 1 < sizeof(units) / sizeof(units[0]) && scaled >= 1000.0) {
        scaled /= 1024.0;
        i++;
    }
    snprintf(buf, len, "%.3g %sB", scaled, units[i]);
}

/* Length of the valid UTF-8 sequence at |p|, or 0 when it is not one. */
static size_t utf8_len(const unsigned char *p)
{
    size_t n;
    uint32_t cp;

    if (p[0] < 0x80) {
        return 1;
    } else if ((p[0] & 0xe0) == 0xc0) {
        n = 2;
        cp = p[0] & 0x1f;
    } else if ((p[0] & 0xf0) == 0xe0) {
        n = 3;
        cp = p[0] & 0x0f;
    } else if ((p[0] & 0xf8) == 0xf0) {
        n = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    /* Reject overlong forms, surrogates and values past U+10FFFF. */
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
        (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return n;
}

void img_json_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    fputc('"', f);
    while (*p) {
        size_t n;

        switch (*p) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\b':
            fputs("\\b", f);
            break;
        case '\f':
            fputs("\\f", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (*p < 0x20) {
                fprintf(f, "\\u%04x", *p);
                break;
            }
            n = utf8_len(p);
            if (n == 0) {
                /* Not UTF-8 (file names are bytes): keep the output valid
                 * JSON by reading the byte as Latin-1. */
                fprintf(f, "\\u%04x", *p);
                break;
            }
            fwrite(p, 1, n, f);
            p += n;
            continue;
        }
        p++;
    }
    fputc('"', f);
}

int img_opts_append(char **opts, const char *more)
{
    size_t old = *opts ? strlen(*opts) : 0, n = strlen(more);
    char *p = realloc(*opts, old + 1 + n + 1);

    if (!p) {
        img_err("out of memory");
        return -ENOMEM;
    }
    if (old > 0) {
        p[old++] = ',';
    }
    memcpy(p + old, more, n + 1);
    *opts = p;
    return 0;
}

bool img_opts_want_help(const char *opts)
{
    struct prl_opts list;
    bool want = false;

    if (!opts) {
        return false;
    }
    if (prl_opts_parse(&list, opts) < 0) {
        return false; /* the real parse reports the error */
    }
    for (size_t i = 0; i < list.n; i++) {
        if (list.v[i].value[0] == '\0' && (strcmp(list.v[i].key, "help") == 0 ||
                                           strcmp(list.v[i].key, "?") == 0)) {
            want = true;
        }
    }
    prl_opts_free(&list);
    return want;
}

struct create_option {
    const char *name;
    const char *help;
};

static const struct create_option parallels_create_options[] = {
    {"cluster_size=<size>", "Parallels image cluster size, a multiple of "
                            "512 (default 1M)"},
    {"preallocation=<mode>", "off, metadata, falloc or full (default off)"},
    {"size=<size>", "Virtual disk size"},
    {"subformat=<name>", "ext (\"WithouFreSpacExt\", the default) or legacy "
                         "(\"WithoutFreeSpace\")"},
    {NULL, NULL},
};

static const struct create_option bundle_create_options[] = {
    {"cluster_size=<size>", "cluster size of the image, a multiple of 512 "
                            "(default 1M)"},
    {"size=<size>", "Virtual disk size"},
    {NULL, NULL},
};

static const struct create_option raw_create_options[] = {
    {"preallocation=<mode>", "off, falloc or full (default off)"},
    {"size=<size>", "Virtual disk size"},
    {NULL, NULL},
};

int img_print_create_options(const char *format)
{
    const struct create_option *o;

    if (strcmp(format, "parallels") == 0) {
        o = parallels_create_options;
    } else if (strcmp(format, "raw") == 0) {
        o = raw_create_options;
    } else if (strcmp(format, "bundle") == 0) {
        o = bundle_create_options;
    } else {
        img_err("unknown format '%s' (known: parallels, raw, bundle)", format);
        return -1;
    }
    printf("Supported %s options:\n", format);
    for (; o->name; o++) {
        printf("  %-22s - %s\n", o->name, o->help);
    }
    return 0;
}

static void progress_show(struct img_progress *p, double percent)
{
    fprintf(stderr, "    (%.2f/100%%)\r", percent);
    fflush(stderr);
    p->shown = percent;
}

void img_progress_start(struct img_progress *p, bool enabled)
{
    p->enabled = enabled;
    p->shown = -1.0;
    if (enabled) {
        progress_show(p, 0.0);
    }
}

void img_progress_update(struct img_progress *p, uint64_t done, uint64_t total)
{
    double percent;

    if (!p->enabled) {
        return;
    }
    percent = total ? (double)done * 100.0 / (double)total : 100.0;
    if (percent > 100.0) {
        percent = 100.0;
    }
    if (percent - p->shown >= 1.0) {
        progress_show(p, percent);
    }
}

void img_progress_finish(struct img_progress *p)
{
    if (!p->enabled) {
        return;
    }
    if (p->shown < 100.0) {
        progress_show(p, 100.0);
    }
    fputc('\n', stderr);
    p->enabled = false;
}
