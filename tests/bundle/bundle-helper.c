/* SPDX-License-Identifier: MIT */
/* bundle-helper: the bundle suite's driver of prl/bundle.h (list, snapshot,
 * delete, commit, parse) and a multi-threaded copy-on-write stress test,
 * so the shell tests can kill it at random points. */
#include "block/bundle-xml.h"
#include "prl/block.h"
#include "prl/bundle.h"
#include "prl/check.h"
#include "prl/error.h"
#include "prl/log.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void log_to_stderr(enum prl_log_level level, const char *msg,
                          void *opaque)
{
    fprintf(stderr, "bundle-helper: %s%s\n",
            level == PRL_LOG_WARNING ? "warning: " : "", msg);
}

static int fail(int r, const char *what)
{
    fprintf(stderr, "bundle-helper: %s: %s\n", what, prl_error_message());
    return r < 0 ? 1 : 2;
}

static int cmd_list(const char *path, unsigned flags)
{
    struct prl_snapshot_list l;
    int r = prl_bundle_list(path, flags, &l);

    if (r < 0) {
        return fail(r, "list");
    }
    for (size_t i = 0; i < l.n; i++) {
        printf("%s %s %u %d %s\n", l.v[i].guid, l.v[i].parent, l.v[i].depth,
               l.v[i].top, l.v[i].file);
    }
    prl_snapshot_list_free(&l);
    return 0;
}

/* Parse a descriptor file without opening images: the validation alone. */
static int cmd_parse(const char *path)
{
    struct bundle_desc d;
    int r = bundle_desc_load(path, &d);

    if (r < 0) {
        return fail(r, "parse");
    }
    printf("ok %zu images, top %s\n", d.n_images, d.shots[d.top].guid);
    bundle_desc_free(&d);
    return 0;
}

/* prl_block_check on a bundle: the counts, then one line per finding. */
static int cmd_check(const char *path, bool fix)
{
    struct prl_check_result res;
    int r = prl_block_check(path, NULL, fix ? PRL_CHECK_FIX_ALL : 0, &res);

    if (r < 0) {
        prl_check_result_free(&res);
        return fail(r, "check");
    }
    printf("corruptions %d leaks %d fixed %d %d errors %d\n", res.corruptions,
           res.leaks, res.corruptions_fixed, res.leaks_fixed, res.check_errors);
    for (size_t i = 0; i < res.n_findings; i++) {
        printf("%s: %s%s%s\n", res.findings[i].kind, res.findings[i].message,
               res.findings[i].action ? ": " : "",
               res.findings[i].action ? res.findings[i].action : "");
    }
    r = res.corruptions || res.leaks || res.check_errors;
    prl_check_result_free(&res);
    return r;
}

struct stress {
    struct prl_block *bs;
    uint8_t *model; /* what the guest must read at the end */
    uint64_t size;
    uint64_t cs;
    unsigned threads;
    unsigned rounds;
    unsigned id;
    unsigned seed;
};

/* Thread |id| owns the bytes whose (offset / 512) % threads == id inside
 * every cluster, so the writers never overlap while they all hit the same
 * clusters with partial writes. */
static void *stress_thread(void *arg)
{
    struct stress *st = arg;
    unsigned seed = st->seed * 7919u + st->id;
    uint8_t sector[512];
    uint64_t nsec = st->size / 512;

    for (unsigned i = 0; i < st->rounds; i++) {
        uint64_t s = (uint64_t)rand_r(&seed) % nsec;
        s -= s % st->threads;
        s += st->id;
        if (s >= nsec) {
            continue;
        }
        memset(sector, (int)(1 + rand_r(&seed) % 255), sizeof(sector));
        int r = prl_block_pwrite(st->bs, sector, 512, s * 512, 0);
        if (r < 0) {
            fprintf(stderr, "bundle-helper: stress write: %s\n",
                    prl_error_message());
            return (void *)1;
        }
        memcpy(st->model + s * 512, sector, 512);
    }
    return NULL;
}

/* Concurrent partial writes into clusters the top does not hold yet; the
 * final contents must equal the model (the old contents plus every
 * thread's sectors). */
static int cmd_stress(const char *path, unsigned threads, unsigned rounds,
                      unsigned seed)
{
    struct prl_block *bs;
    struct stress st[16];
    pthread_t tid[16];
    uint8_t *model, *got;
    uint64_t size;
    int r, bad = 0;

    if (threads == 0 || threads > 16) {
        fprintf(stderr, "bundle-helper: 1..16 threads\n");
        return 2;
    }
    r = prl_block_open(path, "bundle", PRL_OPEN_RDWR, &bs);
    if (r < 0) {
        return fail(r, "open");
    }
    if (!(prl_block_caps(bs) & PRL_CAP_PARALLEL)) {
        fprintf(stderr, "bundle-helper: bundle without PRL_CAP_PARALLEL\n");
        prl_block_close(bs);
        return 1;
    }
    size = prl_block_size(bs);
    model = malloc(size);
    got = malloc(size);
    if (!model || !got || prl_block_pread(bs, model, size, 0, 0) < 0) {
        fprintf(stderr, "bundle-helper: stress setup failed\n");
        return 1;
    }
    for (unsigned i = 0; i < threads; i++) {
        st[i] = (struct stress){bs, model, size, 0, threads, rounds, i, seed};
        pthread_create(&tid[i], NULL, stress_thread, &st[i]);
    }
    for (unsigned i = 0; i < threads; i++) {
        void *ret;
        pthread_join(tid[i], &ret);
        bad |= ret != NULL;
    }
    r = prl_block_pread(bs, got, size, 0, 0);
    if (r < 0 || bad || memcmp(model, got, size) != 0) {
        for (uint64_t i = 0; i < size && r == 0; i++) {
            if (model[i] != got[i]) {
                fprintf(stderr,
                        "bundle-helper: stress: byte %" PRIu64
                        " is 0x%02x, want 0x%02x\n",
                        i, got[i], model[i]);
                break;
            }
        }
        bad = 1;
    }
    if (prl_block_close(bs) < 0) {
        bad = 1;
    }
    free(model);
    free(got);
    return bad;
}

static int usage(void)
{
    fprintf(stderr, "usage: bundle-helper [-x] list BUNDLE\n"
                    "       bundle-helper [-x] snapshot BUNDLE\n"
                    "       bundle-helper [-x] delete BUNDLE GUID\n"
                    "       bundle-helper [-x] commit BUNDLE\n"
                    "       bundle-helper parse DESCRIPTOR\n"
                    "       bundle-helper check|repair BUNDLE\n"
                    "       bundle-helper stress BUNDLE THREADS ROUNDS SEED\n"
                    "-x allows image files outside the bundle directory\n");
    return 2;
}

int main(int argc, char **argv)
{
    unsigned flags = 0;
    char guid[39];
    int r;

    prl_log_set_handler(log_to_stderr, NULL, PRL_LOG_INFO);
    if (argc > 1 && strcmp(argv[1], "-x") == 0) {
        flags |= PRL_OPEN_BUNDLE_EXTERNAL;
        argv++;
        argc--;
    }
    if (argc == 3 && strcmp(argv[1], "list") == 0) {
        return cmd_list(argv[2], flags);
    }
    if (argc == 3 && strcmp(argv[1], "parse") == 0) {
        return cmd_parse(argv[2]);
    }
    if (argc == 3 && strcmp(argv[1], "snapshot") == 0) {
        r = prl_bundle_snapshot_create(argv[2], flags, guid);
        if (r < 0) {
            return fail(r, "snapshot");
        }
        printf("%s\n", guid);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "delete") == 0) {
        r = prl_bundle_snapshot_delete(argv[2], argv[3], flags);
        return r < 0 ? fail(r, "delete") : 0;
    }
    if (argc == 3 && strcmp(argv[1], "commit") == 0) {
        r = prl_bundle_commit(argv[2], flags);
        return r < 0 ? fail(r, "commit") : 0;
    }
    if (argc == 3 && strcmp(argv[1], "check") == 0) {
        return cmd_check(argv[2], false);
    }
    if (argc == 3 && strcmp(argv[1], "repair") == 0) {
        return cmd_check(argv[2], true);
    }
    if (argc == 6 && strcmp(argv[1], "stress") == 0) {
        return cmd_stress(argv[2], (unsigned)atoi(argv[3]),
                          (unsigned)atoi(argv[4]), (unsigned)atoi(argv[5]));
    }
    return usage();
}
