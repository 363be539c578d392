/* SPDX-License-Identifier: MIT */
/* prl-img check: consistency check and repair, with qemu-img's exit codes
 * and JSON keys. */
#include "prl-img.h"

#include "prl/check.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* qemu-img check's exit statuses. */
#define CHECK_EXIT_CLEAN 0
#define CHECK_EXIT_ERROR 1
#define CHECK_EXIT_CORRUPT 2
#define CHECK_EXIT_LEAKS 3
#define CHECK_EXIT_UNSUPPORTED 63

static void check_help(void)
{
    printf("Usage: " IMG_NAME " check [-f FMT] [-r leaks|all] [-q] "
           "[--output=human|json] FILE\n"
           "\n"
           "Check FILE for consistency and, with -r, repair it.\n"
           "\n"
           "  -f FMT          image format (parallels); probed when absent\n"
           "  -r leaks        free leaked clusters only\n"
           "  -r all          also repair corruptions; data that can be "
           "kept is kept\n"
           "  -q              print nothing on success\n"
           "  --output=FMT    'human' (default) or 'json'\n"
           "\n"
           "Exit status: 0 no errors, 1 the check could not complete, 2 "
           "corruptions\n"
           "remain, 3 only leaked clusters remain, 63 the format has no "
           "check.\n");
}

static const char *class_name(enum prl_finding_class c)
{
    switch (c) {
    case PRL_FINDING_CORRUPTION:
        return "corruption";
    case PRL_FINDING_LEAK:
        return "leak";
    default:
        return "note";
    }
}

/* Of the repair pass, what was fixed and the notes; a corruption or leak
 * it left is what the second pass reports, and is printed from there. */
static bool repair_pass_shows(const struct prl_finding *f)
{
    return f->fixed || f->cls == PRL_FINDING_NOTE;
}

static void print_json(const struct prl_check_result *res,
                       const struct prl_check_result *repair)
{
    const struct prl_check_result *all[2] = {repair, res};

    printf("{\n");
    printf("    \"filename\": ");
    img_json_string(stdout, res->filename);
    printf(",\n    \"format\": ");
    img_json_string(stdout, res->format ? res->format : "");
    printf(",\n    \"check-errors\": %d,\n", res->check_errors);
    printf("    \"corruptions\": %d,\n", res->corruptions);
    printf("    \"leaks\": %d,\n", res->leaks);
    if (repair) {
        printf("    \"corruptions-fixed\": %d,\n", repair->corruptions_fixed);
        printf("    \"leaks-fixed\": %d,\n", repair->leaks_fixed);
    }
    if (res->has_clusters) {
        printf("    \"image-end-offset\": %" PRIu64 ",\n",
               res->image_end_offset);
        printf("    \"total-clusters\": %" PRIu64 ",\n", res->total_clusters);
        printf("    \"allocated-clusters\": %" PRIu64 ",\n",
               res->allocated_clusters);
    }
    printf("    \"findings\": [");
    bool first = true;
    for (int p = 0; p < 2; p++) {
        const struct prl_check_result *r = all[p];
        if (!r) {
            continue;
        }
        for (size_t i = 0; i < r->n_findings; i++) {
            const struct prl_finding *f = &r->findings[i];
            /* After a repair, the first pass says what was found and done;
             * the second adds only what remains. */
            if (repair && r == res && f->cls == PRL_FINDING_NOTE) {
                continue;
            }
            if (r == repair && !repair_pass_shows(f)) {
                continue;
            }
            printf("%s\n        {\"kind\": ", first ? "" : ",");
            first = false;
            img_json_string(stdout, f->kind);
            printf(", \"class\": \"%s\"", class_name(f->cls));
            if (f->bat_index >= 0) {
                printf(", \"bat-index\": %" PRId64, f->bat_index);
            }
            printf(", \"offset\": %" PRIu64 ", \"message\": ", f->offset);
            img_json_string(stdout, f->message ? f->message : "");
            printf(", \"fixed\": %s", f->fixed ? "true" : "false");
            if (f->action) {
                printf(", \"action\": ");
                img_json_string(stdout, f->action);
            }
            if (f->data_lost) {
                printf(", \"data-lost\": true, \"guest-offset\": %" PRIu64,
                       f->guest_offset);
            }
            printf("}");
        }
    }
    printf("%s]\n}\n", first ? "" : "\n    ");
}

static void print_findings(const struct prl_check_result *res, bool quiet,
                           bool repair_pass)
{
    for (size_t i = 0; i < res->n_findings; i++) {
        const struct prl_finding *f = &res->findings[i];
        const char *tag = f->cls == PRL_FINDING_CORRUPTION ? "ERROR"
                          : f->cls == PRL_FINDING_LEAK     ? "Leaked"
                                                           : "Note";
        if (quiet && f->cls == PRL_FINDING_NOTE) {
            continue;
        }
        if (repair_pass && !repair_pass_shows(f)) {
            continue;
        }
        printf("%s %s", f->fixed ? "Repairing" : tag, f->message);
        if (f->action) {
            printf(": %s", f->action);
        }
        if (f->data_lost) {
            printf(" [data lost at guest offset %" PRIu64 "]", f->guest_offset);
        }
        printf("\n");
    }
}

/* A check that failed without a finding or a counted error never got to
 * the image: it could not be opened (missing, unreadable, or probed and
 * not of a format prl knows).  Like qemu-img's "Could not open", that is
 * the error alone and exit 1, with no summary that would call it an
 * internal error of a check that ran. */
static bool check_started(const struct prl_check_result *res)
{
    return res->check_errors > 0 || res->n_findings > 0;
}

static void print_human(const struct prl_check_result *res,
                        const struct prl_check_result *repair, bool quiet)
{
    if (repair) {
        print_findings(repair, quiet, true);
        if (repair->corruptions_fixed || repair->leaks_fixed) {
            printf("The following inconsistencies were found and "
                   "repaired:\n\n"
                   "    %d leaked clusters\n"
                   "    %d corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   repair->leaks_fixed, repair->corruptions_fixed);
        }
    } else {
        print_findings(res, quiet, false);
    }
    if (repair) {
        /* Print only what the second pass still finds. */
        for (size_t i = 0; i < res->n_findings; i++) {
            const struct prl_finding *f = &res->findings[i];
            if (f->cls != PRL_FINDING_NOTE) {
                printf("%s %s\n",
                       f->cls == PRL_FINDING_LEAK ? "Leaked" : "ERROR",
                       f->message);
            }
        }
    }
    if (res->corruptions == 0 && res->leaks == 0 && res->check_errors == 0) {
        if (!quiet) {
            printf("No errors were found on the image.\n");
        }
    } else {
        if (res->corruptions) {
            printf("\n%d errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n",
                   res->corruptions);
        }
        if (res->leaks) {
            printf("\n%d leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   res->leaks);
        }
        if (res->check_errors) {
            printf("\n%d internal errors have occurred during the check.\n",
                   res->check_errors);
        }
    }
    if (res->has_clusters && !quiet && res->total_clusters) {
        printf("%" PRIu64 "/%" PRIu64 " = %.2f%% allocated\n",
               res->allocated_clusters, res->total_clusters,
               100.0 * (double)res->allocated_clusters /
                   (double)res->total_clusters);
    }
    if (res->has_clusters && !quiet) {
        printf("Image end offset: %" PRIu64 "\n", res->image_end_offset);
    }
}

int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"repair", required_argument, NULL, 'r'},
        {"output", required_argument, NULL, 'O'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    const char *format = NULL, *path;
    struct prl_check_result res, repair;
    bool json = false, quiet = false, repaired = false;
    unsigned fix = 0;
    int c, r, status;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:r:q", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            check_help();
            return CHECK_EXIT_CLEAN;
        case 'f':
            format = optarg;
            break;
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                fix = PRL_CHECK_FIX_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                fix = PRL_CHECK_FIX_ALL;
            } else {
                return img_usage("check", CHECK_EXIT_ERROR,
                                 "invalid -r "
                                 "value '%s' (leaks or all)",
                                 optarg);
            }
            break;
        case 'O':
            if (img_parse_output("check", optarg, &json) < 0) {
                return CHECK_EXIT_ERROR;
            }
            break;
        case 'q':
            quiet = true;
            break;
        default:
            return img_bad_option("check", c, argv, CHECK_EXIT_ERROR);
        }
    }
    if (optind != argc - 1) {
        return img_usage("check", CHECK_EXIT_ERROR,
                         optind >= argc ? "expecting a file name"
                                        : "too many arguments");
    }
    path = argv[optind];

    memset(&repair, 0, sizeof(repair));
    unsigned external = (img_open_flags & PRL_OPEN_BUNDLE_EXTERNAL)
                            ? PRL_CHECK_ALLOW_EXTERNAL
                            : 0;
    if (fix) {
        fix |= external;
        r = prl_block_check(path, format, fix, &repair);
        if (r == -ENOTSUP) {
            img_lib_err();
            prl_check_result_free(&repair);
            return CHECK_EXIT_UNSUPPORTED;
        }
        if (r < 0) {
            img_lib_err();
            if (!check_started(&repair)) {
                prl_check_result_free(&repair);
                return CHECK_EXIT_ERROR;
            }
        }
        repaired = true;
    }
    /* Check (again, after a repair) to report what remains. */
    r = prl_block_check(path, format, external, &res);
    if (r == -ENOTSUP) {
        img_lib_err();
        prl_check_result_free(&res);
        prl_check_result_free(&repair);
        return CHECK_EXIT_UNSUPPORTED;
    }
    if (r < 0) {
        img_lib_err();
        if (!repaired && !check_started(&res)) {
            prl_check_result_free(&res);
            return CHECK_EXIT_ERROR;
        }
        if (res.check_errors == 0) {
            res.check_errors = 1;
        }
    }
    if (repaired) {
        res.check_errors += repair.check_errors;
    }
    if (json) {
        print_json(&res, repaired ? &repair : NULL);
    } else {
        print_human(&res, repaired ? &repair : NULL, quiet);
    }
    if (res.check_errors) {
        status = CHECK_EXIT_ERROR;
    } else if (res.corruptions) {
        status = CHECK_EXIT_CORRUPT;
    } else if (res.leaks) {
        status = CHECK_EXIT_LEAKS;
    } else {
        status = CHECK_EXIT_CLEAN;
    }
    prl_check_result_free(&res);
    prl_check_result_free(&repair);
    return status;
}
