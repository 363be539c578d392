/* SPDX-License-Identifier: MIT */
/* prl-img internals: the subcommands and the helpers they share for
 * option parsing, opening images, printing errors, sizes and JSON. */
#ifndef PRL_IMG_H
#define PRL_IMG_H

#include "prl/block.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define IMG_NAME "prl-img"

/* Exit statuses.  compare has its own: 0 same, 1 different, 2 error. */
#define IMG_EXIT_OK 0
#define IMG_EXIT_FAIL 1

/* A subcommand: argv[0] is its name, the rest are its arguments.  Returns
 * the process exit status. */
int cmd_bitmap(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);

/* Print "prl-img: <message>" to stderr. */
void img_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Print "prl-img: <the library's last error message>" to stderr. */
void img_lib_err(void);

/* Print a usage problem of |cmd| and the hint to its --help; returns
 * |status| so callers can write `return img_usage(...)`. */
int img_usage(const char *cmd, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Report what getopt_long rejected (|c| is ':' or '?', the optstring must
 * start with ':') and return |status|. */
int img_bad_option(const char *cmd, int c, char **argv, int status);

/* Start a fresh getopt scan and silence getopt's own messages. */
void img_getopt_reset(void);

/* Open flags every img_open adds: PRL_OPEN_BUNDLE_EXTERNAL with
 * --allow-external-files. */
extern unsigned img_open_flags;

/* For commands that work on a Parallels disk directory only: when
 * |path| is an NBD URI, say that |cmd| cannot use an export and return
 * true. */
bool img_refuse_nbd(const char *cmd, const char *path);

/* Open |path| with |format| (NULL probes) and |flags|; prints the error.
 * Returns 0 or a negative errno. */
int img_open(const char *path, const char *format, unsigned flags,
             struct prl_block **out);

/* Close |bs| and print the error of a failed close.  Returns 0 or a
 * negative errno. */
int img_close(struct prl_block *bs);

/* Parse a size argument (K/M/G/T/P/E suffixes); prints the error.  Returns
 * 0 or a negative errno. */
int img_parse_size(const char *s, const char *what, uint64_t *out);

/* Check a --output= value; sets *json.  Prints the error and returns -1
 * for anything but "human" and "json". */
int img_parse_output(const char *cmd, const char *s, bool *json);

/* A size the way qemu-img prints it: three significant digits and a
 * binary unit ("100 MiB", "1.5 GiB", "0 B").  |buf| of at least 32. */
void img_human_size(uint64_t v, char *buf, size_t len);

/* Write |s| to |f| as a JSON string literal, quotes included. */
void img_json_string(FILE *f, const char *s);

/* Add the -o argument |more| to *opts (malloc'd, NULL at first; the
 * caller frees it), joined with ',' as qemu-img joins repeated -o.
 * Prints the error.  Returns 0 or -ENOMEM. */
int img_opts_append(char **opts, const char *more);

/* True when the user asked for an option list ("help" or "?") anywhere in
 * a -o string. */
bool img_opts_want_help(const char *opts);

/* A progress line on stderr, "    (42.00/100%)", rewritten in place.
 * Not thread-safe: callers serialize updates. */
struct img_progress {
    bool enabled;
    double shown; /* percent last printed, < 0 before the first */
};

void img_progress_start(struct img_progress *p, bool enabled);
/* Show |done| of |total| bytes when it moved by at least 1 %. */
void img_progress_update(struct img_progress *p, uint64_t done, uint64_t total);
/* Show 100 % and end the line. */
void img_progress_finish(struct img_progress *p);

/* Print the creation options of |format| (for -o help).  Returns 0, or -1
 * with an error printed for an unknown format. */
int img_print_create_options(const char *format);

#endif
