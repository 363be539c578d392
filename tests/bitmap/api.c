/* SPDX-License-Identifier: MIT */
/* The bitmap API of libprl where the tools cannot reach it: read-only and
 * raw handles refuse changes, status argument errors, bitmaps following a
 * resize, marking from many threads at once, and merges in both
 * directions between two handles at once (no deadlock).  Built and run
 * by api.sh; usage: api DIR. */
#include "prl/bitmap.h"
#include "prl/block.h"
#include "prl/error.h"
#include "prl/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024u * 1024u)

static int failures;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__,   \
                    #cond);                                                    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, " (last error: %s)\n",                             \
                    prl_error_message() ? prl_error_message() : "none");       \
            failures++;                                                        \
        }                                                                      \
    } while (0)

static const char *dir;

static char *path_of(const char *name)
{
    static char buf[4][4096];
    static int k;
    char *p = buf[k++ % 4];

    snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
    return p;
}

static struct prl_block *open_img(const char *path, const char *fmt,
                                  unsigned flags)
{
    struct prl_block *bs = NULL;
    int r = prl_block_open(path, fmt, flags, &bs);

    if (r < 0) {
        fprintf(stderr, "open %s: %s\n", path, prl_error_message());
        exit(1);
    }
    return bs;
}

/* Length of the dirty prefix of [off, off+len) of |name|, or -errno. */
static long long dirty_prefix(struct prl_block *bs, const char *name,
                              uint64_t off, uint64_t len, bool *dirty)
{
    uint64_t pnum = 0;
    int r = prl_bitmap_status(bs, name, off, len, dirty, &pnum);

    return r < 0 ? r : (long long)pnum;
}

static void test_read_only(void)
{
    const char *p = path_of("ro.hdd");
    const char *a = "0a000000-0000-4000-8000-000000000001";
    const char *b = "0b000000-0000-4000-8000-000000000002";
    struct prl_bitmap_info *v = NULL;
    struct prl_block *bs;
    size_t n = 0;
    bool dirty;

    CHECK(prl_block_create(p, "parallels", 4 * MIB, "cluster_size=4096") == 0,
          "create");
    bs = open_img(p, "parallels", PRL_OPEN_RDWR);
    CHECK(prl_bitmap_add(bs, a, 512, NULL) == 0, "add a");
    CHECK(prl_bitmap_add(bs, b, 4096, NULL) == 0, "add b");
    CHECK(prl_block_pwrite(bs, "x", 1, 5000, 0) == 0, "write");
    CHECK(prl_block_close(bs) == 0, "close");

    bs = open_img(p, "parallels", 0);
    CHECK(prl_bitmap_add(bs, "auto", 0, NULL) == -EROFS, "add");
    CHECK(prl_bitmap_remove(bs, a) == -EROFS, "remove");
    CHECK(prl_bitmap_clear(bs, a) == -EROFS, "clear");
    CHECK(prl_bitmap_enable(bs, a) == -EROFS, "enable");
    CHECK(prl_bitmap_disable(bs, a) == -EROFS, "disable");
    CHECK(prl_bitmap_merge(bs, a, bs, b) == -EROFS, "merge");
    CHECK(strstr(prl_error_message(), "read-only") != NULL, "message: %s",
          prl_error_message());
    /* Reading works. */
    CHECK(prl_bitmap_list(bs, &v, &n) == 0 && n == 2, "list");
    CHECK(n == 2 && v[0].dirty_bytes == 512 && v[1].dirty_bytes == 4096,
          "dirty bytes");
    free(v);
    CHECK(dirty_prefix(bs, a, 0, 4 * MIB, &dirty) == 4608 && !dirty,
          "status clean prefix");
    CHECK(dirty_prefix(bs, a, 4608, 100, &dirty) == 100 && dirty,
          "status dirty");
    CHECK(dirty_prefix(bs, b, 4097, 4 * MIB - 4097, &dirty) == 4095 && dirty,
          "status from inside a granule");
    /* Argument errors. */
    CHECK(dirty_prefix(bs, a, 0, 0, &dirty) == -EINVAL, "length 0");
    CHECK(dirty_prefix(bs, a, 4 * MIB, 1, &dirty) == -EINVAL, "past end");
    CHECK(dirty_prefix(bs, a, 1, UINT64_MAX, &dirty) == -EINVAL, "overflow");
    CHECK(dirty_prefix(bs, "0c000000-0000-4000-8000-000000000003", 0, 1,
                       &dirty) == -ENOENT,
          "unknown");
    CHECK(dirty_prefix(bs, "not-a-uuid", 0, 1, &dirty) == -ENOENT,
          "not a uuid");
    CHECK(prl_block_close(bs) == 0, "close ro");

    /* Raw images cannot store bitmaps. */
    p = path_of("r.raw");
    CHECK(prl_block_create(p, "raw", MIB, NULL) == 0, "create raw");
    bs = open_img(p, "raw", PRL_OPEN_RDWR);
    CHECK(prl_bitmap_add(bs, "auto", 0, NULL) == -ENOTSUP, "raw add");
    CHECK(prl_bitmap_list(bs, &v, &n) == 0 && n == 0, "raw list");
    free(v);
    CHECK(prl_block_close(bs) == 0, "close raw");
}

/* Bitmaps follow the disk size: grown space starts clean, bits past a
 * shrink are gone when the space comes back, and the stored size
 * matches after reopening. */
static void test_resize(void)
{
    const char *p = path_of("rs.hdd");
    char name[PRL_BITMAP_NAME_SIZE];
    struct prl_block *bs;
    bool dirty;

    CHECK(prl_block_create(p, "parallels", 4 * MIB, "cluster_size=4096") == 0,
          "create");
    bs = open_img(p, "parallels", PRL_OPEN_RDWR);
    CHECK(prl_bitmap_add(bs, "auto", 512, name) == 0, "add");
    CHECK(prl_block_pwrite(bs, "xy", 2, 4 * MIB - 2, 0) == 0, "write end");
    CHECK(prl_block_resize(bs, 6 * MIB, false) == 0, "grow");
    CHECK(dirty_prefix(bs, name, 4 * MIB - 512, 2 * MIB + 512, &dirty) == 512 &&
              dirty,
          "old end dirty");
    CHECK(dirty_prefix(bs, name, 4 * MIB, 2 * MIB, &dirty) == 2 * MIB && !dirty,
          "grown space clean");
    CHECK(prl_block_pwrite(bs, "z", 1, 6 * MIB - 1, 0) == 0, "write new end");
    CHECK(prl_block_close(bs) == 0, "close");

    bs = open_img(p, "parallels", PRL_OPEN_RDWR);
    CHECK(prl_block_size(bs) == 6 * MIB, "size");
    CHECK(dirty_prefix(bs, name, 6 * MIB - 512, 512, &dirty) == 512 && dirty,
          "new end dirty after reopen");
    CHECK(prl_block_resize(bs, 3 * MIB, true) == 0, "shrink");
    CHECK(prl_block_resize(bs, 5 * MIB, false) == 0, "grow again");
    CHECK(dirty_prefix(bs, name, 3 * MIB, 2 * MIB, &dirty) == 2 * MIB && !dirty,
          "space past a shrink comes back clean");
    CHECK(prl_block_close(bs) == 0, "close");
    bs = open_img(p, "parallels", 0);
    CHECK(dirty_prefix(bs, name, 0, 5 * MIB, &dirty) == 5 * MIB && !dirty,
          "stored clean after shrink and grow");
    CHECK(prl_block_close(bs) == 0, "close");
}

/* A grow that would make the bitmaps overflow the Format Extension
 * cluster is refused before anything changes; the close then keeps them
 * all. */
static void test_resize_full(void)
{
    const char *p = path_of("rsfull.hdd");
    char name[PRL_BITMAP_NAME_SIZE];
    struct prl_bitmap_info *v = NULL;
    struct prl_block *bs;
    size_t n = 0;
    int r;

    CHECK(prl_block_create(p, "parallels", MIB, "cluster_size=512") == 0,
          "create");
    bs = open_img(p, "parallels", PRL_OPEN_RDWR);
    CHECK(prl_bitmap_add(bs, "auto", 512, name) == 0, "add");
    CHECK(prl_block_resize(bs, 2 * MIB, false) == 0, "grow that fits");
    r = prl_block_resize(bs, 1024 * MIB, false);
    CHECK(r == -ENOSPC && strstr(prl_error_message(), "remove a bitmap"),
          "grow past the extension cluster: %d %s", r, prl_error_message());
    CHECK(prl_block_size(bs) == 2 * MIB, "size after the refused grow");
    CHECK(prl_block_close(bs) == 0, "close keeps the bitmap");
    bs = open_img(p, "parallels", 0);
    CHECK(prl_bitmap_list(bs, &v, &n) == 0 && n == 1 &&
              strcmp(v[0].name, name) == 0,
          "bitmap after reopen");
    free(v);
    CHECK(prl_block_close(bs) == 0, "close");
}

#define THREADS 4
#define WRITES 400
#define SPAN (256u * 1024u) /* each thread's own region */

struct writer {
    struct prl_block *bs;
    unsigned id;
};

/* Writes of 1..2048 bytes at odd places in its own region; every byte of
 * the region ends up written, so every 512-byte granule is dirty. */
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint64_t base = (uint64_t)w->id * SPAN;
    char buf[2048];
    unsigned seed = w->id * 7919u + 1;

    memset(buf, 'a' + (int)w->id, sizeof(buf));
    for (unsigned i = 0; i < WRITES; i++) {
        seed = seed * 1103515245u + 12345u;
        uint64_t off = base + (seed >> 8) % (SPAN - 2048);
        uint64_t len = 1 + (seed >> 4) % 2048;
        if (prl_block_pwrite(w->bs, buf, len, off, 0) < 0) {
            return (void *)1;
        }
    }
    /* Then the whole region, in 1000-byte pieces. */
    for (uint64_t off = base; off < base + SPAN; off += 1000) {
        uint64_t len = base + SPAN - off < 1000 ? base + SPAN - off : 1000;
        if (prl_block_pwrite(w->bs, buf, len, off, 0) < 0) {
            return (void *)1;
        }
    }
    return NULL;
}

struct reader {
    struct prl_block *bs;
    const char *name, *other;
    volatile bool stop;
};

/* Lists, queries, and clears/disables a second bitmap meanwhile. */
static void *reader_main(void *arg)
{
    struct reader *r = arg;

    for (unsigned i = 0; !r->stop && i < 100000; i++) {
        struct prl_bitmap_info *v = NULL;
        size_t n = 0;
        bool dirty;
        uint64_t pnum;

        if (prl_bitmap_list(r->bs, &v, &n) == 0) {
            free(v);
        }
        prl_bitmap_status(r->bs, r->name, 0, THREADS * SPAN, &dirty, &pnum);
        if (i % 3 == 0) {
            prl_bitmap_clear(r->bs, r->other);
        } else if (i % 3 == 1) {
            prl_bitmap_disable(r->bs, r->other);
        } else {
            prl_bitmap_enable(r->bs, r->other);
        }
    }
    return NULL;
}

static void test_threads(void)
{
    const char *p = path_of("mt.hdd");
    char a[PRL_BITMAP_NAME_SIZE], b[PRL_BITMAP_NAME_SIZE];
    struct writer w[THREADS];
    pthread_t t[THREADS], rt;
    struct prl_block *bs;
    struct reader rd;
    bool dirty;

    CHECK(prl_block_create(p, "parallels", THREADS * SPAN + MIB,
                           "cluster_size=4096") == 0,
          "create");
    bs = open_img(p, "parallels", PRL_OPEN_RDWR);
    CHECK(prl_bitmap_add(bs, "auto", 512, a) == 0, "add a");
    CHECK(prl_bitmap_add(bs, "auto", 1024, b) == 0, "add b");
    rd = (struct reader){bs, a, b, false};
    CHECK(pthread_create(&rt, NULL, reader_main, &rd) == 0, "reader");
    for (unsigned i = 0; i < THREADS; i++) {
        w[i] = (struct writer){bs, i};
        CHECK(pthread_create(&t[i], NULL, writer_main, &w[i]) == 0, "thread");
    }
    for (unsigned i = 0; i < THREADS; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        CHECK(ret == NULL, "writer %u failed", i);
    }
    rd.stop = true;
    pthread_join(rt, NULL);
    CHECK(dirty_prefix(bs, a, 0, THREADS * SPAN + MIB, &dirty) ==
                  THREADS * SPAN &&
              dirty,
          "every written granule dirty");
    CHECK(prl_block_close(bs) == 0, "close");
    bs = open_img(p, "parallels", 0);
    CHECK(dirty_prefix(bs, a, 0, THREADS * SPAN + MIB, &dirty) ==
                  THREADS * SPAN &&
              dirty,
          "every written granule dirty after reopen");
    CHECK(prl_block_close(bs) == 0, "close");
}

struct merger {
    struct prl_block *dst, *src;
    const char *dst_name, *src_name;
    int err;
};

static void *merger_main(void *arg)
{
    struct merger *m = arg;

    for (int i = 0; i < 3000; i++) {
        int r = prl_bitmap_merge(m->dst, m->dst_name, m->src, m->src_name);
        if (r < 0) {
            m->err = r;
            break;
        }
    }
    return NULL;
}

/* Two handles merging into each other at once must not deadlock; an
 * alarm ends the process if they do. */
static void test_cross_merge(void)
{
    const char *p1 = path_of("x1.hdd"), *p2 = path_of("x2.hdd");
    char n1[PRL_BITMAP_NAME_SIZE], n2[PRL_BITMAP_NAME_SIZE];
    struct prl_block *b1, *b2;
    struct merger m1, m2;
    pthread_t t1, t2;
    bool dirty;

    CHECK(prl_block_create(p1, "parallels", MIB, NULL) == 0, "create 1");
    CHECK(prl_block_create(p2, "parallels", MIB, NULL) == 0, "create 2");
    b1 = open_img(p1, "parallels", PRL_OPEN_RDWR);
    b2 = open_img(p2, "parallels", PRL_OPEN_RDWR);
    CHECK(prl_bitmap_add(b1, "auto", 512, n1) == 0, "add 1");
    CHECK(prl_bitmap_add(b2, "auto", 4096, n2) == 0, "add 2");
    CHECK(prl_block_pwrite(b1, "1", 1, 0, 0) == 0, "write 1");
    CHECK(prl_block_pwrite(b2, "2", 1, MIB - 1, 0) == 0, "write 2");
    m1 = (struct merger){b1, b2, n1, n2, 0};
    m2 = (struct merger){b2, b1, n2, n1, 0};
    alarm(60);
    pthread_create(&t1, NULL, merger_main, &m1);
    pthread_create(&t2, NULL, merger_main, &m2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    alarm(0);
    CHECK(m1.err == 0 && m2.err == 0, "merge errors %d %d", m1.err, m2.err);
    CHECK(dirty_prefix(b1, n1, MIB - 4096, 4096, &dirty) == 4096 && dirty,
          "2 merged into 1");
    CHECK(dirty_prefix(b2, n2, 0, 4096, &dirty) == 4096 && dirty,
          "1 merged into 2");
    CHECK(prl_block_close(b1) == 0 && prl_block_close(b2) == 0, "close");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: api DIR\n");
        return 2;
    }
    dir = argv[1];
    prl_log_set_handler(NULL, NULL, PRL_LOG_ERROR);
    test_read_only();
    test_resize();
    test_resize_full();
    test_threads();
    test_cross_merge();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("api: all checks passed\n");
    return 0;
}
