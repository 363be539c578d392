/* SPDX-License-Identifier: MIT */
/* prl-io: drive one block handle with qemu-io style commands read from -c
 * options or stdin, so shell and python tests can exercise libprl. */
#include "common/opts.h"
#include "prl/block.h"
#include "prl/error.h"
#include "prl/log.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (4u << 20)
#define MAX_ARGS 16

static const char *image;
static const char *format;
static unsigned open_flags = PRL_OPEN_RDWR;
static struct prl_block *bs;
static uint8_t *buf, *buf2;
/* Globals rather than locals of main, so that exiting from die() leaves
 * nothing the leak checker calls lost. */
static char **cmds;
static char *cur_line;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: prl-io [-f FMT] [-r|-w] [-c CMD]... FILE\n"
            "Commands (from -c, else one per line on stdin):\n"
            "  write [-F] OFF LEN SRCFILE:SRCOFF | write [-F] -P BYTE OFF LEN\n"
            "  zero [-u] [-F] [-f] OFF LEN     (-u no unmap, -f fast only)\n"
            "  trim [-F] OFF LEN\n"
            "  cache OFF LEN                   (read-ahead hint)\n"
            "  read OFF LEN OUTFILE:OUTOFF | read -P BYTE OFF LEN\n"
            "  flush | resize SIZE [shrink] | status OFF LEN | info | size\n"
            "  close | reopen [-r|-w] [-f FMT]\n");
}

/* Print the failure and exit; every error ends the run. */
static void die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    fputs("prl-io: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    /* Close cleanly, so a refused request does not look like a crash. */
    if (bs) {
        struct prl_block *b = bs;
        bs = NULL;
        prl_block_close(b);
    }
    exit(1);
}

static void die_prl(const char *cmd, int r)
{
    die("%s: %s (%s)", cmd, prl_error_message(), strerror(-r));
}

static void log_to_stderr(enum prl_log_level level, const char *msg,
                          void *opaque)
{
    (void)opaque;
    fprintf(stderr, "prl-io: %s: %s\n",
            level == PRL_LOG_ERROR ? "error" : "warning", msg);
}

static uint64_t num(const char *cmd, const char *s)
{
    uint64_t v;

    if (prl_parse_size(s, "number", &v) < 0) {
        die("%s: %s", cmd, prl_error_message());
    }
    return v;
}

static uint8_t byte_arg(const char *cmd, const char *s)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno || *end || end == s || v > 255) {
        die("%s: bad pattern byte '%s'", cmd, s);
    }
    return (uint8_t)v;
}

/* Split "FILE:OFF" at the last colon. */
static void file_arg(const char *cmd, char *s, const char **path, uint64_t *off)
{
    char *colon = strrchr(s, ':');

    if (!colon || colon == s) {
        die("%s: expected FILE:OFFSET, got '%s'", cmd, s);
    }
    *colon = '\0';
    *path = s;
    *off = num(cmd, colon + 1);
}

static void need_open(const char *cmd)
{
    if (!bs) {
        die("%s: no image open", cmd);
    }
}

static void do_open(void)
{
    int r = prl_block_open(image, format, open_flags, &bs);

    if (r < 0) {
        die_prl("open", r);
    }
}

static void do_close(void)
{
    int r = prl_block_close(bs);

    bs = NULL;
    if (r < 0) {
        die_prl("close", r);
    }
}

static void expect_args(const char *cmd, int argc, int want)
{
    if (argc != want) {
        die("%s: expected %d arguments, got %d", cmd, want, argc);
    }
}

static void cmd_write(int argc, char **argv)
{
    unsigned flags = 0;
    int pattern = -1;
    int opt;

    optind = 0;
    while ((opt = getopt(argc, argv, "+FP:")) != -1) {
        switch (opt) {
        case 'F':
            flags |= PRL_REQ_FUA;
            break;
        case 'P':
            pattern = byte_arg("write", optarg);
            break;
        default:
            die("write: bad option");
        }
    }
    argc -= optind;
    argv += optind;
    expect_args("write", argc, pattern >= 0 ? 2 : 3);
    uint64_t off = num("write", argv[0]), len = num("write", argv[1]);
    const char *src = NULL;
    uint64_t srcoff = 0;
    int fd = -1;

    if (pattern < 0) {
        file_arg("write", argv[2], &src, &srcoff);
        fd = open(src, O_RDONLY);
        if (fd < 0) {
            die("write: %s: %s", src, strerror(errno));
        }
    } else {
        memset(buf, pattern, CHUNK);
    }
    /* One request when it fits the buffer, so a test sees exactly the
     * request it asked for. */
    while (len > 0) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        if (fd >= 0) {
            ssize_t got = pread(fd, buf, n, (off_t)srcoff);
            if (got < 0 || (size_t)got != n) {
                die("write: short read from %s at %" PRIu64, src, srcoff);
            }
            srcoff += n;
        }
        int r = prl_block_pwrite(bs, buf, n, off, flags);
        if (r < 0) {
            die_prl("write", r);
        }
        off += n;
        len -= n;
    }
    if (fd >= 0) {
        close(fd);
    }
}

static void cmd_zero_trim(bool trim, int argc, char **argv)
{
    const char *name = trim ? "trim" : "zero";
    unsigned flags = 0;
    int opt;

    optind = 0;
    while ((opt = getopt(argc, argv, trim ? "+F" : "+uFf")) != -1) {
        switch (opt) {
        case 'F':
            flags |= PRL_REQ_FUA;
            break;
        case 'u':
            flags |= PRL_REQ_NO_UNMAP;
            break;
        case 'f':
            flags |= PRL_REQ_FAST_ZERO;
            break;
        default:
            die("%s: bad option", name);
        }
    }
    argc -= optind;
    argv += optind;
    expect_args(name, argc, 2);
    uint64_t off = num(name, argv[0]), len = num(name, argv[1]);
    int r = trim ? prl_block_trim(bs, len, off, flags)
                 : prl_block_zero(bs, len, off, flags);
    if (r < 0) {
        die_prl(name, r);
    }
}

static void cmd_read(int argc, char **argv)
{
    int pattern = -1;
    int opt;

    optind = 0;
    while ((opt = getopt(argc, argv, "+P:")) != -1) {
        switch (opt) {
        case 'P':
            pattern = byte_arg("read", optarg);
            break;
        default:
            die("read: bad option");
        }
    }
    argc -= optind;
    argv += optind;
    expect_args("read", argc, pattern >= 0 ? 2 : 3);
    uint64_t off = num("read", argv[0]), len = num("read", argv[1]);
    const char *dst = NULL;
    uint64_t dstoff = 0;
    int fd = -1;

    if (pattern < 0) {
        file_arg("read", argv[2], &dst, &dstoff);
        fd = open(dst, O_WRONLY | O_CREAT, 0644);
        if (fd < 0) {
            die("read: %s: %s", dst, strerror(errno));
        }
    } else {
        memset(buf2, pattern, CHUNK);
    }
    while (len > 0) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        int r = prl_block_pread(bs, buf, n, off, 0);
        if (r < 0) {
            die_prl("read", r);
        }
        if (fd >= 0) {
            ssize_t put = pwrite(fd, buf, n, (off_t)dstoff);
            if (put < 0 || (size_t)put != n) {
                die("read: short write to %s", dst);
            }
            dstoff += n;
        } else if (memcmp(buf, buf2, n) != 0) {
            for (size_t i = 0; i < n; i++) {
                if (buf[i] != pattern) {
                    die("read: pattern mismatch at offset %" PRIu64
                        ": 0x%02x, want 0x%02x",
                        off + i, buf[i], (unsigned)pattern);
                }
            }
        }
        off += n;
        len -= n;
    }
    if (fd >= 0 && close(fd) < 0) {
        die("read: close %s: %s", dst, strerror(errno));
    }
}

static void cmd_status(int argc, char **argv)
{
    expect_args("status", argc - 1, 2);
    uint64_t off = num("status", argv[1]), len = num("status", argv[2]);
    uint64_t end = off + len;

    while (off < end) {
        struct prl_extent e;
        int r = prl_block_status(bs, off, end - off, &e);
        if (r < 0) {
            die_prl("status", r);
        }
        char names[64] = "";
        if (e.flags & PRL_EXT_DATA) {
            strcat(names, ",data");
        }
        if (e.flags & PRL_EXT_ZERO) {
            strcat(names, ",zero");
        }
        if (e.flags & PRL_EXT_ALLOCATED) {
            strcat(names, ",allocated");
        }
        /* "OFFSET LENGTH data,allocated depth=1 offset=N" */
        printf("%" PRIu64 " %" PRIu64 " %s depth=%" PRIu32, off, e.length,
               names[0] ? names + 1 : "none", e.depth);
        if (e.flags & PRL_EXT_OFFSET) {
            printf(" offset=%" PRIu64 "\n", e.offset);
        } else {
            printf(" offset=-\n");
        }
        off += e.length;
    }
}

static void cmd_info(void)
{
    struct prl_image_info i;
    int r = prl_block_info(bs, &i);

    if (r < 0) {
        die_prl("info", r);
    }
    printf("format=%s\nvirtual_size=%" PRIu64 "\ncluster_size=%" PRIu64
           "\nread_only=%d\n",
           i.format, i.virtual_size, i.cluster_size, i.read_only);
    if (i.has_parallels) {
        printf("subformat=%s\nin_use=0x%08" PRIx32 "\ndirty=%d\n"
               "empty_flag=%d\nflags=0x%08" PRIx32 "\ndata_offset=%" PRIu64
               "\next_offset=%" PRIu64 "\nbat_entries=%" PRIu64
               "\nallocated_clusters=%" PRIu64 "\nfile_size=%" PRIu64 "\n",
               i.subformat, i.in_use, i.dirty, i.empty_flag, i.flags,
               i.data_offset, i.ext_offset, i.bat_entries, i.allocated_clusters,
               i.file_size);
    }
}

static void cmd_reopen(int argc, char **argv)
{
    int opt;

    optind = 0;
    while ((opt = getopt(argc, argv, "+rwf:")) != -1) {
        switch (opt) {
        case 'r':
            open_flags &= ~PRL_OPEN_RDWR;
            break;
        case 'w':
            open_flags |= PRL_OPEN_RDWR;
            break;
        case 'f':
            format = optarg;
            break;
        default:
            die("reopen: bad option");
        }
    }
    expect_args("reopen", argc - optind, 0);
    if (bs) {
        do_close();
    }
    do_open();
}

static void run(char *line)
{
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    char *save = NULL;

    for (char *t = strtok_r(line, " \t\r\n", &save); t;
         t = strtok_r(NULL, " \t\r\n", &save)) {
        if (argc == MAX_ARGS) {
            die("too many arguments");
        }
        argv[argc++] = t;
    }
    argv[argc] = NULL;
    if (argc == 0 || argv[0][0] == '#') {
        return;
    }
    const char *cmd = argv[0];

    if (strcmp(cmd, "reopen") == 0 || strcmp(cmd, "open") == 0) {
        cmd_reopen(argc, argv);
        return;
    }
    need_open(cmd);
    if (strcmp(cmd, "write") == 0) {
        cmd_write(argc, argv);
    } else if (strcmp(cmd, "zero") == 0) {
        cmd_zero_trim(false, argc, argv);
    } else if (strcmp(cmd, "trim") == 0) {
        cmd_zero_trim(true, argc, argv);
    } else if (strcmp(cmd, "read") == 0) {
        cmd_read(argc, argv);
    } else if (strcmp(cmd, "cache") == 0) {
        expect_args("cache", argc - 1, 2);
        int r =
            prl_block_cache(bs, num("cache", argv[2]), num("cache", argv[1]));
        if (r < 0) {
            die_prl("cache", r);
        }
    } else if (strcmp(cmd, "flush") == 0) {
        int r = prl_block_flush(bs);
        if (r < 0) {
            die_prl("flush", r);
        }
    } else if (strcmp(cmd, "resize") == 0) {
        if (argc < 2 || argc > 3 ||
            (argc == 3 && strcmp(argv[2], "shrink") != 0)) {
            die("resize: usage: resize SIZE [shrink]");
        }
        int r = prl_block_resize(bs, num("resize", argv[1]), argc == 3);
        if (r < 0) {
            die_prl("resize", r);
        }
    } else if (strcmp(cmd, "status") == 0) {
        cmd_status(argc, argv);
    } else if (strcmp(cmd, "info") == 0) {
        cmd_info();
    } else if (strcmp(cmd, "size") == 0) {
        printf("%" PRIu64 "\n", prl_block_size(bs));
    } else if (strcmp(cmd, "close") == 0) {
        do_close();
    } else {
        die("unknown command '%s'", cmd);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int ncmds = 0, opt;

    cmds = calloc((size_t)argc + 1, sizeof(*cmds));

    if (!cmds) {
        die("out of memory");
    }
    while ((opt = getopt(argc, argv, "f:rwc:h")) != -1) {
        switch (opt) {
        case 'f':
            format = optarg;
            break;
        case 'r':
            open_flags &= ~PRL_OPEN_RDWR;
            break;
        case 'w':
            open_flags |= PRL_OPEN_RDWR;
            break;
        case 'c':
            cmds[ncmds++] = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    image = argv[optind];
    prl_log_set_handler(log_to_stderr, NULL, PRL_LOG_WARNING);
    buf = malloc(CHUNK);
    buf2 = malloc(CHUNK);
    if (!buf || !buf2) {
        die("out of memory");
    }
    do_open();
    if (ncmds > 0) {
        for (int i = 0; i < ncmds; i++) {
            cur_line = strdup(cmds[i]);
            if (!cur_line) {
                die("out of memory");
            }
            run(cur_line);
            free(cur_line);
            cur_line = NULL;
        }
    } else {
        size_t cap = 0;
        while (getline(&cur_line, &cap, stdin) >= 0) {
            run(cur_line);
        }
        free(cur_line);
    }
    if (bs) {
        do_close();
    }
    free(buf);
    free(buf2);
    free(cmds);
    return 0;
}
