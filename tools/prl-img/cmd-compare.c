/* SPDX-License-Identifier: MIT */
/* prl-img compare: are two images the same to a guest?  Ranges both sides
 * report as zero are skipped unread. */
#include "prl-img.h"

#include "common/util.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Exit statuses of compare, those of qemu-img compare. */
#define CMP_SAME 0
#define CMP_DIFFERENT 1
#define CMP_ERROR 2

#define CMP_CHUNK ((size_t)8 << 20)       /* bytes per read */
#define CMP_QUERY_MAX ((uint64_t)1 << 30) /* bytes per status query */

/* A helper thread reads the second image while the main thread reads the
 * first, so the two reads overlap.  One request at a time: the main thread
 * waits for it before it touches s->b or s->buf_b again. */
struct cmp_reader {
    pthread_t tid;
    bool inited;  /* lock and cond exist */
    bool started; /* the thread runs */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool pending; /* a request is posted and not yet done */
    bool quit;
    uint64_t pos; /* the request: guest bytes */
    size_t len;
    int r;     /* its result */
    char *msg; /* its error message (thread-local in the helper) */
};

struct cmp_state {
    struct prl_block *a, *b;
    void *buf_a, *buf_b; /* CMP_CHUNK bytes each */
    struct cmp_reader reader;
    struct img_progress progress;
    uint64_t total; /* bytes to look at, for progress */
    uint64_t done;
};

static void compare_help(void)
{
    printf("Usage: " IMG_NAME " compare [-f FMT] [-F FMT] [-p] [-q] [-s] "
           "FILE1 FILE2\n"
           "\n"
           "Tell whether FILE1 and FILE2 hold the same guest data.  Exit "
           "status: 0 the\n"
           "same, 1 different, 2 error.  When the sizes differ, the images "
           "are the\n"
           "same if the part past the smaller one's end is all zeroes.  "
           "Either may be\n"
           "an NBD URI (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=P"
           "ATH).\n"
           "\n"
           "  -f FMT        format of FILE1 (see '" IMG_NAME " --help'); "
           "probed when absent\n"
           "  -F FMT        format of FILE2\n"
           "  -s            strict: images of different sizes differ\n"
           "  -p            show progress on stderr\n"
           "  -q            quiet: print nothing, only set the exit "
           "status\n"
           "  -h, --help    show this help\n");
}

/* Offset of the first non-zero byte of |buf|, or len when all zero. */
static size_t first_nonzero(const uint8_t *buf, size_t len)
{
    size_t i = 0;

    /* Skip zero blocks fast, then find the byte in the first other. */
    while (i < len && prl_is_zero(buf + i, PRL_MIN(len - i, (size_t)4096))) {
        i += PRL_MIN(len - i, (size_t)4096);
    }
    while (i < len && buf[i] == 0) {
        i++;
    }
    return i;
}

/* Offset of the first byte where |a| and |b| differ, or len. */
static size_t first_difference(const uint8_t *a, const uint8_t *b, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t n = PRL_MIN(len - i, (size_t)4096);
        if (memcmp(a + i, b + i, n) != 0) {
            while (a[i] == b[i]) {
                i++;
            }
            return i;
        }
        i += n;
    }
    return len;
}

static void add_done(struct cmp_state *s, uint64_t n)
{
    s->done += n;
    img_progress_update(&s->progress, s->done, s->total);
}

static void *reader_main(void *opaque)
{
    struct cmp_state *s = opaque;
    struct cmp_reader *rd = &s->reader;

    pthread_mutex_lock(&rd->lock);
    for (;;) {
        while (!rd->pending && !rd->quit) {
            pthread_cond_wait(&rd->cond, &rd->lock);
        }
        if (rd->quit) {
            break;
        }
        pthread_mutex_unlock(&rd->lock);
        int r = prl_block_pread(s->b, s->buf_b, rd->len, rd->pos, 0);
        char *msg = r < 0 ? strdup(prl_error_message()) : NULL;
        pthread_mutex_lock(&rd->lock);
        rd->r = r;
        free(rd->msg);
        rd->msg = msg;
        rd->pending = false;
        pthread_cond_broadcast(&rd->cond);
    }
    pthread_mutex_unlock(&rd->lock);
    return NULL;
}

static void reader_start(struct cmp_state *s)
{
    struct cmp_reader *rd = &s->reader;

    pthread_mutex_init(&rd->lock, NULL);
    pthread_cond_init(&rd->cond, NULL);
    rd->inited = true;
    /* Without the thread, reads of the second image are done inline. */
    rd->started = pthread_create(&rd->tid, NULL, reader_main, s) == 0;
}

static void reader_stop(struct cmp_state *s)
{
    struct cmp_reader *rd = &s->reader;

    if (!rd->inited) {
        return;
    }
    if (rd->started) {
        pthread_mutex_lock(&rd->lock);
        rd->quit = true;
        pthread_cond_broadcast(&rd->cond);
        pthread_mutex_unlock(&rd->lock);
        pthread_join(rd->tid, NULL);
    }
    free(rd->msg);
    pthread_cond_destroy(&rd->cond);
    pthread_mutex_destroy(&rd->lock);
}

/* Read [pos, pos + len) of both images into buf_a and buf_b. */
static int read_both(struct cmp_state *s, uint64_t pos, size_t len)
{
    struct cmp_reader *rd = &s->reader;
    int ra, rb;

    if (!rd->started) {
        ra = prl_block_pread(s->a, s->buf_a, len, pos, 0);
        return ra < 0 ? ra : prl_block_pread(s->b, s->buf_b, len, pos, 0);
    }
    pthread_mutex_lock(&rd->lock);
    rd->pos = pos;
    rd->len = len;
    rd->pending = true;
    pthread_cond_broadcast(&rd->cond);
    pthread_mutex_unlock(&rd->lock);

    ra = prl_block_pread(s->a, s->buf_a, len, pos, 0);

    pthread_mutex_lock(&rd->lock);
    while (rd->pending) {
        pthread_cond_wait(&rd->cond, &rd->lock);
    }
    rb = rd->r;
    if (ra == 0 && rb < 0) {
        /* Move the helper's message to this thread for the caller. */
        prl_error(-rb, "%s", rd->msg ? rd->msg : "read failed");
    }
    pthread_mutex_unlock(&rd->lock);
    return ra < 0 ? ra : rb;
}

/* Compare [pos, pos + len) where a side that is_zero need not be read.
 * Returns 0 same, 1 different (*where set), or a negative errno. */
static int compare_range(struct cmp_state *s, uint64_t pos, uint64_t len,
                         bool zero_a, bool zero_b, uint64_t *where)
{
    while (len > 0) {
        size_t n = (size_t)PRL_MIN(len, (uint64_t)CMP_CHUNK), at;
        int r;

        if (!zero_a && !zero_b) {
            r = read_both(s, pos, n);
        } else if (!zero_a) {
            r = prl_block_pread(s->a, s->buf_a, n, pos, 0);
        } else {
            r = prl_block_pread(s->b, s->buf_b, n, pos, 0);
        }
        if (r < 0) {
            return r;
        }
        if (zero_a) {
            at = first_nonzero(s->buf_b, n);
        } else if (zero_b) {
            at = first_nonzero(s->buf_a, n);
        } else {
            at = first_difference(s->buf_a, s->buf_b, n);
        }
        if (at < n) {
            *where = pos + at;
            return 1;
        }
        add_done(s, n);
        pos += n;
        len -= n;
    }
    return 0;
}

/* Compare the first |size| bytes of both images. */
static int compare_common(struct cmp_state *s, uint64_t size, uint64_t *where)
{
    uint64_t pos = 0;

    while (pos < size) {
        struct prl_extent ea, eb;
        uint64_t n;
        int r;

        r = prl_block_status(s->a, pos, PRL_MIN(size - pos, CMP_QUERY_MAX),
                             &ea);
        if (r == 0) {
            r = prl_block_status(s->b, pos, ea.length, &eb);
        }
        if (r < 0) {
            return r;
        }
        n = eb.length; /* <= ea.length */
        bool za = ea.flags & PRL_EXT_ZERO, zb = eb.flags & PRL_EXT_ZERO;
        if (za && zb) {
            add_done(s, n);
        } else {
            r = compare_range(s, pos, n, za, zb, where);
            if (r != 0) {
                return r;
            }
        }
        pos += n;
    }
    return 0;
}

/* Check that [from, end of bs) reads as zeroes; |bs| is s->a or s->b. */
static int check_tail(struct cmp_state *s, struct prl_block *bs, uint64_t from,
                      uint64_t *where)
{
    uint64_t pos = from, size = prl_block_size(bs);
    bool is_a = bs == s->a;

    while (pos < size) {
        struct prl_extent e;
        int r =
            prl_block_status(bs, pos, PRL_MIN(size - pos, CMP_QUERY_MAX), &e);
        if (r < 0) {
            return r;
        }
        if (e.flags & PRL_EXT_ZERO) {
            add_done(s, e.length);
        } else {
            /* The missing side counts as zero. */
            r = compare_range(s, pos, e.length, !is_a, is_a, where);
            if (r != 0) {
                return r;
            }
        }
        pos += e.length;
    }
    return 0;
}

int cmd_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cmp_state s;
    const char *fmt_a = NULL, *fmt_b = NULL;
    bool strict = false, quiet = false, progress = false;
    uint64_t size_a, size_b, where = 0;
    int c, r, status = CMP_ERROR;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:F:pqs", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            compare_help();
            return CMP_SAME;
        case 'f':
            fmt_a = optarg;
            break;
        case 'F':
            fmt_b = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            strict = true;
            break;
        default:
            /* 1 would read as "different": a usage error is an error. */
            return img_bad_option("compare", c, argv, CMP_ERROR);
        }
    }
    if (argc - optind != 2) {
        return img_usage("compare", CMP_ERROR,
                         "expecting two image file names");
    }
    memset(&s, 0, sizeof(s));
    if (img_open(argv[optind], fmt_a, 0, &s.a) < 0 ||
        img_open(argv[optind + 1], fmt_b, 0, &s.b) < 0) {
        goto out;
    }
    s.buf_a = prl_alloc_aligned(CMP_CHUNK);
    s.buf_b = prl_alloc_aligned(CMP_CHUNK);
    if (!s.buf_a || !s.buf_b) {
        img_lib_err();
        goto out;
    }
    size_a = prl_block_size(s.a);
    size_b = prl_block_size(s.b);
    s.total = PRL_MAX(size_a, size_b);
    img_progress_start(&s.progress, progress && !quiet);
    reader_start(&s);

    r = compare_common(&s, PRL_MIN(size_a, size_b), &where);
    if (r == 0 && size_a != size_b) {
        if (strict) {
            img_progress_finish(&s.progress);
            if (!quiet) {
                printf("Strict mode: Image size mismatch!\n");
            }
            status = CMP_DIFFERENT;
            goto out;
        }
        if (!quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        r = check_tail(&s, size_a > size_b ? s.a : s.b, PRL_MIN(size_a, size_b),
                       &where);
    }
    if (r < 0) {
        img_progress_finish(&s.progress);
        img_lib_err();
        goto out;
    }
    img_progress_finish(&s.progress);
    if (r == 1) {
        if (!quiet) {
            printf("Content mismatch at offset %" PRIu64 "!\n", where);
        }
        status = CMP_DIFFERENT;
    } else {
        if (!quiet) {
            printf("Images are identical.\n");
        }
        status = CMP_SAME;
    }
out:
    reader_stop(&s);
    free(s.buf_a);
    free(s.buf_b);
    if (s.b && prl_block_close(s.b) < 0 && status != CMP_ERROR) {
        img_lib_err();
        status = CMP_ERROR;
    }
    if (s.a && prl_block_close(s.a) < 0 && status != CMP_ERROR) {
        img_lib_err();
        status = CMP_ERROR;
    }
    return status;
}
