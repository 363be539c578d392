/* SPDX-License-Identifier: MIT */
/* Image consistency check and repair, in the manner of `qemu-img check`. */
#ifndef PRL_CHECK_H
#define PRL_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What to repair. */
#define PRL_CHECK_FIX_LEAKS (1u << 0)
#define PRL_CHECK_FIX_ERRORS (1u << 1)
#define PRL_CHECK_FIX_ALL (PRL_CHECK_FIX_LEAKS | PRL_CHECK_FIX_ERRORS)
/* Bundles: accept image files outside the bundle directory (as
 * PRL_OPEN_BUNDLE_EXTERNAL does for opens). */
#define PRL_CHECK_ALLOW_EXTERNAL (1u << 8)

enum prl_finding_class {
    PRL_FINDING_CORRUPTION, /* makes reads wrong or writes dangerous */
    PRL_FINDING_LEAK,       /* space no one references */
    PRL_FINDING_NOTE,       /* worth saying, not an error (unclean close) */
};

struct prl_finding {
    enum prl_finding_class cls;
    const char *kind;  /* stable short name: "bat-duplicate", ... */
    int64_t bat_index; /* -1 when not about one BAT entry */
    uint64_t offset;   /* byte offset in the file it concerns */
    char *message;     /* what is wrong, with field and value */
    char *action;      /* what was done, NULL when nothing */
    bool fixed;
    bool data_lost;        /* the repair could not keep guest data */
    uint64_t guest_offset; /* where, when data_lost */
};

struct prl_check_result {
    char *filename;
    const char *format;
    int check_errors; /* I/O errors that stopped the check */
    int corruptions;  /* remaining after repair */
    int leaks;        /* remaining after repair (clusters) */
    int corruptions_fixed;
    int leaks_fixed;
    uint64_t image_end_offset;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    bool has_clusters; /* the three fields above are meaningful */
    struct prl_finding *findings;
    size_t n_findings;
};

/* Check |path| (|format| NULL probes) and, with |fix|, repair it.
 * Returns 0 when the check ran (its result says what it found), -ENOTSUP
 * when the format has no check (raw), or another negative errno when the
 * check could not run; *res is filled in every case and released with
 * prl_check_result_free. */
int prl_block_check(const char *path, const char *format, unsigned fix,
                    struct prl_check_result *res);

void prl_check_result_free(struct prl_check_result *res);

#endif
