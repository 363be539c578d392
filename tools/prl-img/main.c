/* SPDX-License-Identifier: MIT */
/* prl-img entry point: global options, the log handler and dispatch to
 * the subcommands. */
#include "prl-img.h"

#include "prl/log.h"

#include <string.h>

#ifndef PRL_VERSION
#define PRL_VERSION "0.1.0"
#endif

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *synopsis;
    int error_status; /* exit status of a failure */
};

static const struct command commands[] = {
#ifdef IMG_HAVE_BITMAP
    {"bitmap", cmd_bitmap,
     "bitmap (--add [-g SIZE] | --remove | --clear | --enable | --disable |\n"
     "          --merge SOURCE [-b SOURCE_FILE] [-F FMT])... [-f FMT] FILE "
     "BITMAP",
     IMG_EXIT_FAIL},
#endif
#ifdef IMG_HAVE_CHECK
    {"check", cmd_check,
     "check [-q] [-f FMT] [-r leaks|all] [--output=human|json] FILE",
     IMG_EXIT_FAIL},
#endif
#ifdef IMG_HAVE_COMMIT
    {"commit", cmd_commit, "commit [-q] [--allow-external-files] BUNDLE",
     IMG_EXIT_FAIL},
#endif
    {"compare", cmd_compare,
     "compare [-f FMT] [-F FMT] [-p] [-q] [-s] FILE1 FILE2", 2},
    {"convert", cmd_convert,
     "convert [-n] [-p] [-q] [-W] [-t CACHE] [-f FMT] [-O FMT] [-o OPTS]\n"
     "          [-S SIZE] [-m NUM] [--bitmaps] SRC DST",
     IMG_EXIT_FAIL},
    {"create", cmd_create, "create [-q] [-f FMT] [-o OPTS] FILE [SIZE]",
     IMG_EXIT_FAIL},
    {"info", cmd_info, "info [-f FMT] [--output=human|json] FILE",
     IMG_EXIT_FAIL},
    {"map", cmd_map,
     "map [-f FMT] [--output=human|json] [--start-offset=N]\n"
     "          [--max-length=N] [--bitmap=NAME] FILE",
     IMG_EXIT_FAIL},
    {"resize", cmd_resize, "resize [-q] [-f FMT] [--shrink] FILE [+|-]SIZE",
     IMG_EXIT_FAIL},
#ifdef IMG_HAVE_SNAPSHOT
    {"snapshot", cmd_snapshot,
     "snapshot [--output=human|json] [--allow-external-files]\n"
     "          -l | -c | -d GUID  BUNDLE",
     IMG_EXIT_FAIL},
#endif
};

static void log_handler(enum prl_log_level level, const char *msg, void *opaque)
{
    fflush(stdout);
    if (level == PRL_LOG_WARNING) {
        fprintf(stderr, IMG_NAME ": warning: %s\n", msg);
    } else {
        fprintf(stderr, IMG_NAME ": %s\n", msg);
    }
}

static void print_help(void)
{
    printf("Usage: " IMG_NAME " COMMAND [OPTIONS] ARGS...\n"
           "       " IMG_NAME " --help | --version\n"
           "\n"
           "Create, inspect, convert and compare Parallels and raw disk "
           "images.\n"
           "\n"
           "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        printf("  %s\n", commands[i].synopsis);
    }
    printf("\n"
           "FMT is 'parallels', 'raw', 'bundle' (a Parallels disk "
           "directory with\n"
           "DiskDescriptor.xml) or 'nbd'; without -f the format is probed from "
           "the "
           "file's\n"
           "contents.  SIZE takes the suffixes K, M, G, T, P and E "
           "(powers\n"
           "of 1024).  '" IMG_NAME " COMMAND --help' describes a command.\n"
           "\n"
           "An image FILE may also be an NBD URI: nbd://HOST[:PORT]/EXPORT, "
           "nbds://...\n"
           "(TLS), nbd+unix:///EXPORT?socket=PATH or nbds+unix://...; its "
           "format is 'nbd'.\n"
           "\n"
           "--allow-external-files, with any command, lets a bundle's "
           "DiskDescriptor.xml\n"
           "name image files outside its directory (refused otherwise).\n");
}

int main(int argc, char **argv)
{
    const char *name;

    prl_log_set_handler(log_handler, NULL, PRL_LOG_WARNING);
    if (argc < 2) {
        return img_usage(NULL, IMG_EXIT_FAIL, "expecting a command");
    }
    name = argv[1];
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0) {
        print_help();
        return IMG_EXIT_OK;
    }
    if (strcmp(name, "-V") == 0 || strcmp(name, "--version") == 0) {
        printf(IMG_NAME " " PRL_VERSION "\n");
        return IMG_EXIT_OK;
    }
    if (name[0] == '-') {
        return img_usage(NULL, IMG_EXIT_FAIL, "unrecognized option '%s'", name);
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(name, commands[i].name) == 0) {
            /* --allow-external-files works with every command: snapshot
             * and commit parse it themselves, the others through
             * img_open. */
            if (strcmp(name, "snapshot") != 0 && strcmp(name, "commit") != 0) {
                int w = 2;
                for (int a = 2; a < argc; a++) {
                    if (strcmp(argv[a], "--") == 0) {
                        while (a < argc) {
                            argv[w++] = argv[a++];
                        }
                        break;
                    }
                    if (strcmp(argv[a], "--allow-external-files") == 0) {
                        img_open_flags |= PRL_OPEN_BUNDLE_EXTERNAL;
                        continue;
                    }
                    argv[w++] = argv[a];
                }
                argc = w;
                argv[argc] = NULL;
            }
            int status = commands[i].run(argc - 1, argv + 1);
            if (fflush(stdout) != 0 || ferror(stdout)) {
                img_err("error writing to standard output");
                return commands[i].error_status;
            }
            return status;
        }
    }
    return img_usage(NULL, IMG_EXIT_FAIL, "unknown command '%s'", name);
}
