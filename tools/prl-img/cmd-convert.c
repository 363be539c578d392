/* SPDX-License-Identifier: MIT */
/* prl-img convert: copy an image into a new (or existing) one, sparsely,
 * with worker threads that overlap reading and writing. */
#include "prl-img.h"

#include "common/util.h"
#include "prl/bitmap.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CV_CHUNK ((uint64_t)4 << 20)      /* bytes per task */
#define CV_CHUNK_MAX ((uint64_t)64 << 20) /* largest task buffer */
#define CV_QUERY_MAX ((uint64_t)1 << 30)  /* bytes per status query */
#define CV_SPARSE_DEFAULT 4096            /* -S default, as qemu-img */
#define CV_SPARSE_MAX ((uint64_t)16 << 20)
#define CV_WORKERS_DEFAULT 2
#define CV_WORKERS_MAX 16
/* Bytes written between background flushes (see flusher()). */
#define CV_FLUSH_EVERY ((uint64_t)16 << 20)

/*
 * The plan: one cursor walks the source under s->lock and hands out tasks
 * of at most one chunk (chunks are aligned to guest offsets, so to target
 * clusters).  Ranges the source reports as zero are skipped, or zeroed in
 * a target that existed before (-n).  Each worker reads its chunk, finds
 * zero blocks in it and writes the rest.
 *
 * Write order: a target that allocates clusters as it is written lays them
 * out in the order they arrive, and a file system takes one write at a
 * time into a file anyway, so tasks carry a ticket and write in guest
 * order unless -W; reading still overlaps with writing.  A handle without
 * PRL_CAP_PARALLEL is used by one thread at a time (src_lock, dst_lock).
 *
 * Lock order: s->lock, then src_lock; dst_lock alone.
 */
enum cv_kind { CV_COPY, CV_ZERO };

struct cv_task {
    enum cv_kind kind;
    uint64_t offset; /* guest bytes */
    uint64_t length; /* bytes, <= chunk for CV_COPY */
    uint64_t ticket; /* write order */
};

struct cv_state {
    struct prl_block *src, *dst;
    uint64_t size;      /* bytes to copy: the source size */
    uint64_t chunk;     /* bytes per copy task */
    uint64_t sparse;    /* -S: 0 copies everything */
    uint64_t zero_gran; /* aligned blocks this size that are all zero are
                         * not written */
    bool fresh;         /* target was just created and reads as zeroes */
    bool ordered;       /* write in guest order */
    bool src_serial, dst_serial;

    pthread_mutex_t lock; /* everything below */
    pthread_cond_t turn_cond;
    uint64_t cursor; /* next guest byte to plan */
    uint64_t next_ticket;
    uint64_t turn;    /* ticket allowed to write */
    uint64_t done;    /* bytes finished, for progress */
    uint64_t written; /* bytes of data written to the target */
    uint64_t flushed; /* s->written when the last flush started */
    bool finished;    /* workers are done: the flusher stops */
    pthread_cond_t flush_cond;
    int error;       /* first failure, a negative errno */
    char *error_msg; /* its message */
    struct img_progress progress;

    pthread_mutex_t src_lock, dst_lock;
};

static void convert_help(void)
{
    printf("Usage: " IMG_NAME " convert [-n] [-p] [-q] [-W] [-t CACHE] "
           "[-f FMT] [-O FMT]\n"
           "                   [-o OPTS] [-S SIZE] [-m NUM] [--bitmaps] SRC "
           "DST\n"
           "\n"
           "Copy the guest data of image SRC into DST, creating DST unless "
           "-n.\n"
           "Ranges that read as zeroes are not written.  SRC, and DST with "
           "-n, may be\n"
           "NBD URIs (nbd://HOST:PORT/EXPORT, ...; see '" IMG_NAME
           " --help').\n"
           "\n"
           "  -f FMT        format of SRC (see '" IMG_NAME " --help'); probed "
           "when absent\n"
           "  -O FMT        format of DST: raw (default), parallels or "
           "bundle\n"
           "  -o OPTS       options to create DST with (see "
           "'" IMG_NAME " create -o help')\n"
           "  -n            DST exists: do not create it; zero in it what "
           "is zero in SRC\n"
           "  -S SIZE       only zero runs of at least SIZE bytes are left "
           "sparse\n"
           "                (default 4k, a multiple of 512 up to 16M); "
           "0 writes every byte\n"
           "  -m NUM        worker threads, 1 to 16 (default 2)\n"
           "  -W            allow writes out of guest order\n"
           "  --bitmaps     copy the persistent dirty bitmaps too (to a "
           "Parallels DST)\n"
           "  -t CACHE      cache mode of DST: unsafe (default, as in "
           "qemu-img: never\n"
           "                synced) or writeback, writethrough, none, "
           "directsync (synced\n"
           "                when complete)\n"
           "  -p            show progress on stderr\n"
           "  -q            quiet\n"
           "  -h, --help    show this help\n");
}

/* Record the first failure of any thread; the message is thread-local, so
 * copy it.  Wakes threads waiting for their turn. */
static void cv_fail(struct cv_state *s, int r)
{
    pthread_mutex_lock(&s->lock);
    if (s->error == 0) {
        s->error = r;
        s->error_msg = strdup(prl_error_message());
    }
    pthread_cond_broadcast(&s->turn_cond);
    pthread_mutex_unlock(&s->lock);
}

static int src_status(struct cv_state *s, uint64_t offset, uint64_t length,
                      struct prl_extent *ext)
{
    int r;

    if (s->src_serial) {
        pthread_mutex_lock(&s->src_lock);
    }
    r = prl_block_status(s->src, offset, length, ext);
    if (s->src_serial) {
        pthread_mutex_unlock(&s->src_lock);
    }
    return r;
}

static void add_done_locked(struct cv_state *s, uint64_t n)
{
    s->done += n;
    img_progress_update(&s->progress, s->done, s->size);
}

/* Hand out the next task.  Returns 1 with *t filled, 0 when all is
 * planned, or a negative errno.  s->lock held. */
static int next_task_locked(struct cv_state *s, struct cv_task *t)
{
    while (s->cursor < s->size) {
        uint64_t pos = s->cursor;
        uint64_t limit =
            PRL_MIN(s->size, prl_round_down(pos, s->chunk) + s->chunk);
        uint64_t end;
        struct prl_extent ext;
        int r;

        if (s->sparse == 0) {
            /* Fully allocated output: copy everything. */
            t->kind = CV_COPY;
            end = limit;
        } else {
            r = src_status(s, pos, PRL_MIN(s->size - pos, CV_QUERY_MAX), &ext);
            if (r < 0) {
                return r;
            }
            if ((ext.flags & PRL_EXT_ZERO) && s->fresh) {
                s->cursor += ext.length;
                add_done_locked(s, ext.length);
                continue;
            }
            if (ext.flags & PRL_EXT_ZERO) {
                t->kind = CV_ZERO;
                end = pos + ext.length;
            } else {
                /* Data: grow the task to the end of the chunk while the
                 * source keeps reporting data. */
                t->kind = CV_COPY;
                end = PRL_MIN(pos + ext.length, limit);
                while (end < limit) {
                    r = src_status(s, end, limit - end, &ext);
                    if (r < 0) {
                        return r;
                    }
                    if (ext.flags & PRL_EXT_ZERO) {
                        break;
                    }
                    end += ext.length;
                }
            }
        }
        t->offset = pos;
        t->length = end - pos;
        t->ticket = s->next_ticket++;
        s->cursor = end;
        return 1;
    }
    return 0;
}

/* Wait until task |t| may write.  Returns false when another thread
 * failed meanwhile. */
static bool wait_turn(struct cv_state *s, const struct cv_task *t)
{
    bool ok;

    pthread_mutex_lock(&s->lock);
    while (s->ordered && s->turn != t->ticket && s->error == 0) {
        pthread_cond_wait(&s->turn_cond, &s->lock);
    }
    ok = s->error == 0;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* Task |t| is done; it wrote |wrote| bytes of data. */
static void end_turn(struct cv_state *s, const struct cv_task *t,
                     uint64_t wrote)
{
    pthread_mutex_lock(&s->lock);
    /* Unordered tasks finish in any order; only the count matters. */
    s->turn++;
    add_done_locked(s, t->length);
    s->written += wrote;
    pthread_cond_broadcast(&s->turn_cond);
    if (s->written - s->flushed >= CV_FLUSH_EVERY) {
        pthread_cond_signal(&s->flush_cond);
    }
    pthread_mutex_unlock(&s->lock);
}

/*
 * The target is flushed when it is closed, and a flush of everything at
 * the end makes the copy wait for the whole write-back.  A thread that
 * flushes every CV_FLUSH_EVERY bytes lets the disk write while the
 * workers copy, so the last flush finds little left.  Only for targets
 * that take requests in parallel.
 */
static void *flusher(void *opaque)
{
    struct cv_state *s = opaque;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->finished && s->error == 0 &&
               s->written - s->flushed < CV_FLUSH_EVERY) {
            pthread_cond_wait(&s->flush_cond, &s->lock);
        }
        if (s->finished || s->error) {
            break;
        }
        s->flushed = s->written;
        pthread_mutex_unlock(&s->lock);
        int r = prl_block_flush(s->dst);
        if (r < 0) {
            cv_fail(s, r);
        }
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static int dst_write(struct cv_state *s, const uint8_t *buf, uint64_t len,
                     uint64_t offset)
{
    int r;

    if (s->dst_serial) {
        pthread_mutex_lock(&s->dst_lock);
    }
    r = buf ? prl_block_pwrite(s->dst, buf, len, offset, 0)
            : prl_block_zero(s->dst, len, offset, 0);
    if (s->dst_serial) {
        pthread_mutex_unlock(&s->dst_lock);
    }
    return r;
}

/* Write the chunk in |buf|: runs of aligned zero blocks are skipped (or
 * zeroed, when the target held data before), the rest is written in as
 * few requests as possible.  Adds the bytes of data written to *wrote. */
static int write_chunk(struct cv_state *s, const uint8_t *buf,
                       const struct cv_task *t, uint64_t *wrote)
{
    uint64_t g = s->zero_gran, pos = 0, run = 0;
    bool run_zero = false;
    int r;

    if (s->sparse == 0) {
        *wrote += t->length;
        return dst_write(s, buf, t->length, t->offset);
    }
    while (pos < t->length) {
        uint64_t guest = t->offset + pos;
        uint64_t n = PRL_MIN(t->length - pos, g - guest % g);
        /* Only whole blocks count as zero: a partial one is written. */
        bool zero = n == g && prl_is_zero(buf + pos, (size_t)n);

        if (run > 0 && zero != run_zero) {
            uint64_t start = pos - run;
            if (!run_zero) {
                *wrote += run;
                r = dst_write(s, buf + start, run, t->offset + start);
            } else {
                r = s->fresh ? 0 : dst_write(s, NULL, run, t->offset + start);
            }
            if (r < 0) {
                return r;
            }
            run = 0;
        }
        run_zero = zero;
        run += n;
        pos += n;
    }
    if (run > 0) {
        uint64_t start = pos - run;
        if (!run_zero) {
            *wrote += run;
            return dst_write(s, buf + start, run, t->offset + start);
        }
        return s->fresh ? 0 : dst_write(s, NULL, run, t->offset + start);
    }
    return 0;
}

static void *worker(void *opaque)
{
    struct cv_state *s = opaque;
    uint8_t *buf = prl_alloc_aligned((size_t)s->chunk);
    struct cv_task t;
    uint64_t wrote;
    int r;

    if (!buf) {
        cv_fail(s, -ENOMEM);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&s->lock);
        r = s->error ? 0 : next_task_locked(s, &t);
        pthread_mutex_unlock(&s->lock);
        if (r <= 0) {
            break;
        }
        if (t.kind == CV_COPY) {
            if (s->src_serial) {
                pthread_mutex_lock(&s->src_lock);
            }
            r = prl_block_pread(s->src, buf, t.length, t.offset, 0);
            if (s->src_serial) {
                pthread_mutex_unlock(&s->src_lock);
            }
            if (r < 0) {
                break;
            }
        }
        if (!wait_turn(s, &t)) {
            r = 0;
            break;
        }
        wrote = 0;
        if (t.kind == CV_COPY) {
            r = write_chunk(s, buf, &t, &wrote);
        } else {
            r = dst_write(s, NULL, t.length, t.offset);
        }
        if (r < 0) {
            break;
        }
        end_turn(s, &t, wrote);
    }
    if (r < 0) {
        cv_fail(s, r);
    }
    free(buf);
    return NULL;
}

/* Run the copy with |workers| threads (the caller's thread is one). */
static int run_copy(struct cv_state *s, int workers)
{
    pthread_t tids[CV_WORKERS_MAX], flush_tid;
    bool flushing = false;
    int started = 0;

    if (!s->dst_serial) {
        flushing = pthread_create(&flush_tid, NULL, flusher, s) == 0;
    }
    for (int i = 1; i < workers; i++) {
        if (pthread_create(&tids[started], NULL, worker, s) != 0) {
            break; /* fewer threads only make it slower */
        }
        started++;
    }
    worker(s);
    for (int i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
    }
    if (flushing) {
        pthread_mutex_lock(&s->lock);
        s->finished = true;
        pthread_cond_signal(&s->flush_cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(flush_tid, NULL);
    }
    return s->error;
}

/* Sizes and flags of the copy from the two open handles. */
static int plan_copy(struct cv_state *s, uint64_t sparse, bool unordered)
{
    struct prl_image_info info;
    uint64_t pref = prl_block_preferred_size(s->dst);
    int r;

    r = prl_block_info(s->dst, &info);
    if (r < 0) {
        img_lib_err();
        return r;
    }
    /* A target with clusters allocates them in the order of writes. */
    bool clustered = info.cluster_size != 0;

    s->size = prl_block_size(s->src);
    s->sparse = sparse;
    s->ordered = !unordered;
    s->src_serial = !(prl_block_caps(s->src) & PRL_CAP_PARALLEL);
    s->dst_serial = !(prl_block_caps(s->dst) & PRL_CAP_PARALLEL);
    if (pref == 0 || pref > CV_CHUNK_MAX) {
        pref = 4096;
        clustered = false;
    }
    /* In a clustered target a zero run saves space only as whole
     * clusters: a cluster partly written is allocated anyway. */
    s->zero_gran = sparse;
    if (clustered && sparse) {
        s->zero_gran = prl_round_up(sparse, pref);
    }
    s->chunk = prl_round_up(PRL_MAX(CV_CHUNK, s->zero_gran), pref);
    if (s->zero_gran && s->chunk % s->zero_gran) {
        s->chunk = prl_round_up(s->chunk, s->zero_gran);
    }
    return 0;
}

/* Creating the target truncates it: refuse when it is the source. */
static int check_not_source(const char *src, const char *dst)
{
    struct stat a, b;

    if (stat(src, &a) == 0 && stat(dst, &b) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino) {
        img_err("'%s' and '%s' are the same file", src, dst);
        return -EINVAL;
    }
    return 0;
}

/* Create or open the target.  Prints errors. */
static int open_target(const char *path, const char *fmt, bool fmt_given,
                       const char *opts, bool no_create, bool no_flush,
                       uint64_t size, struct prl_block **out)
{
    int r;

    if (!no_create) {
        r = prl_block_create(path, fmt, size, opts);
        if (r < 0) {
            img_lib_err();
            return r;
        }
    }
    r = img_open(path, no_create && !fmt_given ? NULL : fmt,
                 PRL_OPEN_RDWR | (no_flush ? PRL_OPEN_NO_FLUSH : 0), out);
    if (r < 0) {
        return r;
    }
    if (prl_block_size(*out) < size) {
        img_err("target '%s' of %" PRIu64 " bytes is smaller than the "
                "source (%" PRIu64 " bytes)",
                path, prl_block_size(*out), size);
        prl_block_close(*out);
        *out = NULL;
        return -EINVAL;
    }
    return 0;
}

/* Copy every bitmap of |src| into |dst| with its name, granularity and
 * state.  After the data: the copy's own writes must not mark them.
 * Prints errors. */
static int copy_bitmaps(struct prl_block *src, struct prl_block *dst)
{
    struct prl_bitmap_info *v = NULL;
    size_t n = 0;
    int r = prl_bitmap_list(src, &v, &n);

    for (size_t i = 0; r == 0 && i < n; i++) {
        if (!v[i].consistent) {
            r = prl_error(EINVAL,
                          "bitmap '%s' of the source is "
                          "inconsistent; clear or remove it first",
                          v[i].name);
            break;
        }
        r = prl_bitmap_add(dst, v[i].name, v[i].granularity, NULL);
        if (r == 0) {
            r = prl_bitmap_merge(dst, v[i].name, src, v[i].name);
        }
        if (r == 0 && !v[i].enabled) {
            r = prl_bitmap_disable(dst, v[i].name);
        }
    }
    free(v);
    if (r < 0) {
        img_lib_err();
    }
    return r;
}

/* The command line of convert. */
struct cv_args {
    const char *src_fmt, *dst_fmt;
    char *opts; /* the -o arguments joined with ',', NULL when none */
    bool no_create, progress, quiet, dst_fmt_given, unordered;
    bool no_flush; /* -t unsafe, qemu-img convert's default */
    bool bitmaps;  /* --bitmaps */
    uint64_t sparse;
    unsigned long workers;
};

/* Parse the command line into *a.  Returns -1 to go on with the copy, or
 * the exit status (help printed, or an error). */
static int parse_args(int argc, char **argv, struct cv_args *a)
{
    enum { OPT_BITMAPS = 256 };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"bitmaps", no_argument, NULL, OPT_BITMAPS},
        {NULL, 0, NULL, 0},
    };
    char *end;
    int c;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":hf:O:o:S:m:npqWt:", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            convert_help();
            return IMG_EXIT_OK;
        case 'f':
            a->src_fmt = optarg;
            break;
        case 'O':
            a->dst_fmt = optarg;
            a->dst_fmt_given = true;
            break;
        case 'o':
            if (img_opts_append(&a->opts, optarg) < 0) {
                return IMG_EXIT_FAIL;
            }
            break;
        case 'S':
            if (img_parse_size(optarg, "sparse size", &a->sparse) < 0) {
                return IMG_EXIT_FAIL;
            }
            if (a->sparse % 512 != 0 || a->sparse > CV_SPARSE_MAX) {
                return img_usage("convert", IMG_EXIT_FAIL,
                                 "-S must be a multiple of 512 up to 16M, "
                                 "not '%s'",
                                 optarg);
            }
            break;
        case 'm':
            a->workers = strtoul(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || a->workers < 1 ||
                a->workers > CV_WORKERS_MAX) {
                return img_usage("convert", IMG_EXIT_FAIL,
                                 "-m must be 1 to %d, not '%s'", CV_WORKERS_MAX,
                                 optarg);
            }
            break;
        case 'n':
            a->no_create = true;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'W':
            a->unordered = true;
            break;
        case OPT_BITMAPS:
            a->bitmaps = true;
            break;
        case 't':
            if (strcmp(optarg, "unsafe") == 0) {
                a->no_flush = true;
            } else if (strcmp(optarg, "writeback") == 0 ||
                       strcmp(optarg, "writethrough") == 0 ||
                       strcmp(optarg, "none") == 0 ||
                       strcmp(optarg, "directsync") == 0) {
                a->no_flush = false;
            } else {
                return img_usage("convert", IMG_EXIT_FAIL,
                                 "invalid cache "
                                 "mode '%s' (unsafe, writeback, "
                                 "writethrough, none, directsync)",
                                 optarg);
            }
            break;
        default:
            return img_bad_option("convert", c, argv, IMG_EXIT_FAIL);
        }
    }
    if (img_opts_want_help(a->opts)) {
        return img_print_create_options(a->dst_fmt) == 0 ? IMG_EXIT_OK
                                                         : IMG_EXIT_FAIL;
    }
    if (argc - optind != 2) {
        return img_usage("convert", IMG_EXIT_FAIL,
                         "expecting a source and a target file name");
    }
    if (a->no_create && a->opts) {
        return img_usage("convert", IMG_EXIT_FAIL,
                         "-o has no effect with -n: the target is not "
                         "created");
    }
    return -1;
}

int cmd_convert(int argc, char **argv)
{
    struct cv_args a = {
        .dst_fmt = "raw",
        .sparse = CV_SPARSE_DEFAULT,
        .workers = CV_WORKERS_DEFAULT,
        .no_flush = true,
    };
    struct cv_state s;
    int r, status;

    status = parse_args(argc, argv, &a);
    if (status >= 0) {
        free(a.opts);
        return status;
    }
    status = IMG_EXIT_FAIL;

    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.turn_cond, NULL);
    pthread_cond_init(&s.flush_cond, NULL);
    pthread_mutex_init(&s.src_lock, NULL);
    pthread_mutex_init(&s.dst_lock, NULL);
    if (img_open(argv[optind], a.src_fmt, 0, &s.src) < 0) {
        goto out;
    }
    if (check_not_source(argv[optind], argv[optind + 1]) < 0) {
        goto out;
    }
    if (a.bitmaps && !a.no_create && strcmp(a.dst_fmt, "parallels") != 0) {
        img_err("--bitmaps: format %s cannot store dirty bitmaps; use -O "
                "parallels",
                a.dst_fmt);
        goto out;
    }
    if (open_target(argv[optind + 1], a.dst_fmt, a.dst_fmt_given, a.opts,
                    a.no_create, a.no_flush, prl_block_size(s.src),
                    &s.dst) < 0) {
        goto out;
    }
    if (a.bitmaps && strcmp(prl_block_format(s.dst), "parallels") != 0) {
        /* Refuse before copying anything, not after. */
        img_err("--bitmaps: format %s cannot store dirty bitmaps; use -O "
                "parallels",
                prl_block_format(s.dst));
        goto out;
    }
    if (plan_copy(&s, a.sparse, a.unordered) < 0) {
        goto out;
    }
    s.fresh = !a.no_create;
    if (!s.fresh && s.sparse != 0) {
        /* An existing target: as qemu-img does, first try to make the
         * whole range read as zeroes in one fast request (holes punched,
         * clusters freed, an NBD WRITE_ZEROES with FAST_ZERO); then the
         * source's zero runs need no request at all.  A target that
         * cannot (-ENOTSUP), or fails part way, gets its zero runs
         * zeroed one by one as before. */
        if (prl_block_zero(s.dst, s.size, 0, PRL_REQ_FAST_ZERO) == 0) {
            s.fresh = true;
        } else {
            prl_error_clear();
        }
    }
    img_progress_start(&s.progress, a.progress && !a.quiet);
    r = run_copy(&s, (int)a.workers);
    if (r < 0) {
        img_progress_finish(&s.progress);
        img_err("%s", s.error_msg ? s.error_msg : "out of memory");
        goto out;
    }
    img_progress_finish(&s.progress);
    if (a.bitmaps && copy_bitmaps(s.src, s.dst) < 0) {
        goto out;
    }
    status = IMG_EXIT_OK;
out:
    if (s.dst && img_close(s.dst) < 0) {
        status = IMG_EXIT_FAIL;
    }
    if (s.src) {
        prl_block_close(s.src);
    }
    free(s.error_msg);
    free(a.opts);
    pthread_mutex_destroy(&s.dst_lock);
    pthread_mutex_destroy(&s.src_lock);
    pthread_cond_destroy(&s.flush_cond);
    pthread_cond_destroy(&s.turn_cond);
    pthread_mutex_destroy(&s.lock);
    return status;
}
