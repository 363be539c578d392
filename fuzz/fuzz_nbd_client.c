/* SPDX-License-Identifier: MIT */
/* Fuzz target for the NBD client (lib/nbd/client): the input is what a
 * server sends, byte for byte, to a client that runs a fixed script
 * (handshake listing the server's dirty bitmaps, then asking for
 * base:allocation, qemu:allocation-depth, bitmap "b0" and the listed
 * ones; read, block status, write, zero, trim, flush, cache,
 * read at the end; disconnect); then the same bytes go to a second
 * client that lists the server's exports (NBD_OPT_LIST, then INFO and
 * LIST_META_CONTEXT of each, as prl-nbd -L).  Whatever the bytes, each
 * client must fail cleanly (a negative errno and a message) or succeed
 * with results inside what it asked for, and never touch memory outside
 * its buffers.
 *
 * With FUZZ_NBD_RECORD=SOCKET:OUT in the environment the target instead
 * runs the script once against a real server on the Unix socket SOCKET
 * and writes what the server sent to OUT, and what it sent to the
 * listing client to OUT-list: seeds that replay the same conversations
 * (fuzz/make-client-corpus uses it with qemu-nbd, nbdkit and prl-nbd). */
#include "nbd/client/client.h"
#include "nbd/wire.h"
#include "prl/error.h"

#include "fuzz-util.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Largest range the script reads or writes, bytes. */
#define SCRIPT_MAX (4u << 10)

/* A result is 0, or a negative errno with a message. */
static void check_result(int r)
{
    CHECK(r <= 0);
    if (r < 0) {
        CHECK(prl_error_message() != NULL);
        if (getenv("FUZZ_VERBOSE")) {
            fprintf(stderr, "fuzz_nbd_client: %s\n", prl_error_message());
        }
    }
}

/* The fixed script over a connected stream |fd| (the client owns it). */
static void script(int fd)
{
    struct prl_nbd_client_opts opts = {
        .bitmap = "b0", .want_depth = true, .all_bitmaps = true};
    struct prl_nbd_client *c = NULL;
    const struct prl_nbd_export *e;
    uint8_t *buf;
    uint64_t len;
    int r = prl_nbd_client_connect_fd(fd, "fuzz", "", &opts, &c);

    check_result(r);
    if (r < 0) {
        CHECK(c == NULL);
        return;
    }
    e = prl_nbd_client_export(c);
    CHECK(e->min_block >= 1 && e->min_block <= 65536);
    CHECK((e->min_block & (e->min_block - 1)) == 0);
    CHECK(e->max_block >= e->min_block && e->max_block % e->min_block == 0);
    CHECK(e->max_block <= (32u << 20));
    len = e->size < SCRIPT_MAX ? e->size : SCRIPT_MAX;
    len -= len % e->min_block;
    if (len > 0) {
        struct prl_nbd_extent a = {0, 0}, d = {0, 0}, b = {0, 0};
        buf = malloc(len);
        CHECK(buf != NULL);
        check_result(prl_nbd_client_read(c, buf, len, 0));
        if (e->has_alloc) {
            r = prl_nbd_client_block_status(c, len, 0, &a, &d, &b);
            check_result(r);
            if (r == 0) {
                CHECK(a.length > 0 && a.length <= len);
                CHECK(!e->has_depth || (d.length > 0 && d.length <= len));
                CHECK(!e->has_bitmap || (b.length > 0 && b.length <= len));
            }
            const char *bm = prl_nbd_client_bitmap_name(c, e->n_bitmaps - 1);
            CHECK((bm != NULL) == (e->n_bitmaps > 0));
            r = prl_nbd_client_bitmap_status(c, bm ? bm : "b0", len, 0, &b);
            check_result(r);
            if (r == 0) {
                CHECK(b.length > 0 && b.length <= len);
            }
        }
        if (!(e->tflags & PRL_NBD_FLAG_READ_ONLY)) {
            check_result(prl_nbd_client_write(c, buf, len, 0, true));
            check_result(prl_nbd_client_zero(
                c, len, 0, PRL_NBD_CMD_FLAG_NO_HOLE | PRL_NBD_CMD_FLAG_FUA));
            check_result(prl_nbd_client_trim(c, len, 0, false));
        }
        check_result(prl_nbd_client_flush(c));
        check_result(prl_nbd_client_cache(c, len, 0));
        uint64_t end = e->size - e->size % e->min_block;
        check_result(prl_nbd_client_read(c, buf, len, end - len));
        free(buf);
    }
    prl_nbd_client_close(c);
}

/* The listing client over |fd| (owned by the call). */
static void list_script(int fd)
{
    struct prl_nbd_export_info *v;
    size_t n;
    int r = prl_nbd_client_list_fd(fd, "fuzz", &v, &n);

    check_result(r);
    if (r < 0) {
        CHECK(v == NULL && n == 0);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct prl_nbd_export_info *e = &v[i];
        CHECK(e->name != NULL && e->description != NULL);
        if (e->has_block_sizes) {
            CHECK(e->exp.min_block >= 1 && e->exp.min_block <= 65536);
            CHECK((e->exp.min_block & (e->exp.min_block - 1)) == 0);
            CHECK(e->exp.pref_block >= e->exp.min_block);
        }
        CHECK(e->n_contexts == 0 || e->contexts != NULL);
        for (size_t j = 0; j < e->n_contexts; j++) {
            CHECK(e->contexts[j] != NULL && e->contexts[j][0] != '\0');
        }
    }
    prl_nbd_export_info_free(v, n);
}

struct pump {
    int from, to;
    FILE *record;        /* NULL: not kept */
    const uint8_t *data; /* instead of |from|: these bytes */
    size_t size;
};

/* Copy |from| to |to| (or |data| to |to|) until end of stream, then
 * shut |to| for writing. */
static void *pump_thread(void *arg)
{
    struct pump *p = arg;
    uint8_t buf[65536];

    if (p->data) {
        for (size_t off = 0; off < p->size;) {
            ssize_t n = send(p->to, p->data + off, p->size - off, MSG_NOSIGNAL);
            if (n <= 0) {
                break; /* the client hung up early */
            }
            off += (size_t)n;
        }
    } else {
        for (;;) {
            ssize_t n = read(p->from, buf, sizeof(buf));
            if (n <= 0) {
                break;
            }
            if (p->record) {
                fwrite(buf, 1, (size_t)n, p->record);
            }
            if (p->to >= 0 && send(p->to, buf, (size_t)n, MSG_NOSIGNAL) < 0) {
                p->to = -1; /* keep draining */
            }
        }
    }
    if (p->to >= 0) {
        shutdown(p->to, SHUT_WR);
    }
    return NULL;
}

/* Run |client| against the real server on Unix socket |sock|, writing
 * what the server sends to |path|. */
static void record_one(const char *sock, const char *path,
                       void (*client)(int fd))
{
    struct sockaddr_un sa;
    pthread_t t1, t2;
    int sp[2], srv;
    FILE *out = fopen(path, "wb");

    CHECK(out != NULL);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
    srv = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(srv >= 0 && connect(srv, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    struct pump up = {sp[1], srv, NULL, NULL, 0};
    struct pump down = {srv, sp[1], out, NULL, 0};
    CHECK(pthread_create(&t1, NULL, pump_thread, &up) == 0);
    CHECK(pthread_create(&t2, NULL, pump_thread, &down) == 0);
    client(sp[0]);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    close(srv);
    close(sp[1]);
    CHECK(fclose(out) == 0);
}

/* FUZZ_NBD_RECORD=SOCKET:OUT: record the two real conversations and
 * exit. */
static void record(const char *spec)
{
    char sock[108], list_path[4096];
    const char *colon = strrchr(spec, ':');

    CHECK(colon && (size_t)(colon - spec) < sizeof(sock));
    memcpy(sock, spec, (size_t)(colon - spec));
    sock[colon - spec] = '\0';
    record_one(sock, colon + 1, script);
    snprintf(list_path, sizeof(list_path), "%s-list", colon + 1);
    record_one(sock, list_path, list_script);
    exit(0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *rec = getenv("FUZZ_NBD_RECORD");

    (void)argc;
    (void)argv;
    if (rec) {
        record(rec);
    }
    return 0;
}

/* Feed |data| to |client| on a socketpair. */
static void replay(const uint8_t *data, size_t size, void (*client)(int fd))
{
    struct pump feed, drain;
    pthread_t t1, t2;
    int sp[2];

    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
    feed = (struct pump){-1, sp[1], NULL, data, size};
    drain = (struct pump){sp[1], -1, NULL, NULL, 0};
    CHECK(pthread_create(&t1, NULL, pump_thread, &feed) == 0);
    CHECK(pthread_create(&t2, NULL, pump_thread, &drain) == 0);
    client(sp[0]); /* closes sp[0], which ends both pumps */
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    close(sp[1]);
    prl_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    replay(data, size, script);
    replay(data, size, list_script);
    return 0;
}
