/* SPDX-License-Identifier: MIT */
/* Option lists and size strings (see common/opts.h). */
#include "common/opts.h"
#include "common/util.h"
#include "prl/error.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int prl_parse_size(const char *s, const char *what, uint64_t *out)
{
    const char *p = s;
    char *end;
    unsigned long long whole, frac_num = 0, frac_den = 1;
    unsigned shift = 0;

    if (!s || !*s || !isdigit((unsigned char)*s)) {
        return prl_error(EINVAL,
                         "invalid %s '%s': expected a number with "
                         "an optional K, M, G, T, P or E suffix",
                         what, s ? s : "");
    }
    errno = 0;
    whole = strtoull(p, &end, 10);
    if (errno == ERANGE) {
        return prl_error(ERANGE, "%s '%s' is too large", what, s);
    }
    p = end;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p)) {
            if (frac_den < 1000000000ULL) {
                frac_num = frac_num * 10 + (unsigned)(*p - '0');
                frac_den *= 10;
            }
            p++;
        }
    }
    switch (*p) {
    case '\0':
        break;
    case 'b':
    case 'B':
        shift = 0;
        p++;
        break;
    case 'k':
    case 'K':
        shift = 10;
        p++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        p++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        p++;
        break;
    case 't':
    case 'T':
        shift = 40;
        p++;
        break;
    case 'p':
    case 'P':
        shift = 50;
        p++;
        break;
    case 'e':
    case 'E':
        shift = 60;
        p++;
        break;
    default:
        return prl_error(EINVAL, "invalid %s '%s': unknown suffix '%c'", what,
                         s, *p);
    }
    /* qemu-img accepts "1KiB"-less forms only; allow an optional "iB". */
    if (shift && (p[0] == 'i' && (p[1] == 'B' || p[1] == 'b'))) {
        p += 2;
    }
    if (*p != '\0') {
        return prl_error(EINVAL, "invalid %s '%s': trailing characters '%s'",
                         what, s, p);
    }
    if (shift == 0 && frac_num) {
        return prl_error(EINVAL, "invalid %s '%s': fractional bytes", what, s);
    }
    if (shift >= 64 || (shift && whole > (UINT64_MAX >> shift))) {
        return prl_error(ERANGE, "%s '%s' is too large", what, s);
    }
    uint64_t v = (uint64_t)whole << shift;
    if (frac_num) {
        /* frac_num / frac_den of one unit, rounded down to bytes. */
        unsigned __int128 f = ((unsigned __int128)frac_num << shift) / frac_den;
        if (prl_add_overflow(v, (uint64_t)f, &v)) {
            return prl_error(ERANGE, "%s '%s' is too large", what, s);
        }
    }
    *out = v;
    return 0;
}

void prl_opts_free(struct prl_opts *opts)
{
    for (size_t i = 0; i < opts->n; i++) {
        free(opts->v[i].key);
        free(opts->v[i].value);
    }
    free(opts->v);
    opts->v = NULL;
    opts->n = 0;
}

static int opts_add(struct prl_opts *opts, const char *start, size_t len)
{
    char *item, *eq, *w;
    struct prl_opt *nv;

    item = prl_malloc(len + 1);
    if (!item) {
        return -ENOMEM;
    }
    /* Copy while turning ",," into ",". */
    w = item;
    for (size_t i = 0; i < len; i++) {
        *w++ = start[i];
        if (start[i] == ',' && i + 1 < len && start[i + 1] == ',') {
            i++;
        }
    }
    *w = '\0';
    eq = strchr(item, '=');
    nv = realloc(opts->v, (opts->n + 1) * sizeof(*nv));
    if (!nv) {
        free(item);
        return prl_error(ENOMEM, "out of memory parsing options");
    }
    opts->v = nv;
    nv = &opts->v[opts->n];
    if (eq) {
        *eq = '\0';
        nv->value = strdup(eq + 1);
    } else {
        nv->value = strdup("");
    }
    nv->key = item;
    nv->used = false;
    if (!nv->value) {
        free(item);
        return prl_error(ENOMEM, "out of memory parsing options");
    }
    if (!*item) {
        free(item);
        free(nv->value);
        return prl_error(EINVAL, "empty option name in option list");
    }
    opts->n++;
    return 0;
}

int prl_opts_parse(struct prl_opts *opts, const char *s)
{
    const char *start;

    opts->v = NULL;
    opts->n = 0;
    if (!s) {
        return 0;
    }
    start = s;
    for (const char *p = s;; p++) {
        if (*p == ',' && p[1] == ',') {
            p++;
            continue;
        }
        if (*p == ',' || *p == '\0') {
            if (p > start) {
                int r = opts_add(opts, start, (size_t)(p - start));
                if (r < 0) {
                    prl_opts_free(opts);
                    return r;
                }
            }
            if (*p == '\0') {
                break;
            }
            start = p + 1;
        }
    }
    return 0;
}

const char *prl_opts_get(struct prl_opts *opts, const char *key)
{
    const char *v = NULL;

    for (size_t i = 0; i < opts->n; i++) {
        if (strcmp(opts->v[i].key, key) == 0) {
            opts->v[i].used = true;
            v = opts->v[i].value;
        }
    }
    return v;
}

int prl_opts_get_size(struct prl_opts *opts, const char *key, uint64_t *out)
{
    const char *v = prl_opts_get(opts, key);
    int r;

    if (!v) {
        return 0;
    }
    r = prl_parse_size(v, key, out);
    return r < 0 ? r : 1;
}

int prl_opts_check_unused(const struct prl_opts *opts, const char *what)
{
    for (size_t i = 0; i < opts->n; i++) {
        if (!opts->v[i].used) {
            return prl_error(EINVAL, "%s does not support the option '%s'",
                             what, opts->v[i].key);
        }
    }
    return 0;
}
