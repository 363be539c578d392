/* SPDX-License-Identifier: MIT */
/* qemu-img style option strings ("cluster_size=1M,subformat=ext") and
 * size strings with K/M/G/T/P/E suffixes. */
#ifndef PRL_COMMON_OPTS_H
#define PRL_COMMON_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct prl_opt {
    char *key;
    char *value; /* "" when the option had no '=' */
    bool used;
};

struct prl_opts {
    struct prl_opt *v;
    size_t n;
};

/* Parse |s| (may be NULL or empty) into *opts.  ",," is a literal comma
 * inside a value.  Returns 0 or -EINVAL with a message. */
int prl_opts_parse(struct prl_opts *opts, const char *s);

/* Free the list (the struct itself is the caller's). */
void prl_opts_free(struct prl_opts *opts);

/* The value of |key| (last occurrence wins) marked used, or NULL. */
const char *prl_opts_get(struct prl_opts *opts, const char *key);

/* Get a size option: 0 and *out untouched when absent, 1 when set,
 * -EINVAL with a message naming the key when malformed. */
int prl_opts_get_size(struct prl_opts *opts, const char *key, uint64_t *out);

/* -EINVAL naming the first option no one asked for, else 0. */
int prl_opts_check_unused(const struct prl_opts *opts, const char *what);

/* Parse "10G", "512", "1.5M", "4k" (binary units, bytes without suffix;
 * "b"/"B" accepted for bytes).  Returns 0 or -EINVAL/-ERANGE with a
 * message naming |what|. */
int prl_parse_size(const char *s, const char *what, uint64_t *out);

#endif
