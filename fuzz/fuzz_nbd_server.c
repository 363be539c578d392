/* SPDX-License-Identifier: MIT */
/* Fuzz target for the NBD server's parsing of what a client sends: the
 * input is the client's byte stream (handshake, options, requests), served
 * against a read-write Parallels export and a read-only raw one, once by a
 * server without TLS and once by one that requires it (FORCEDTLS: the
 * option parser before STARTTLS, and GnuTLS reading whatever follows the
 * ACK as a ClientHello); whatever the client does, the server must not
 * crash and the Parallels image must check clean afterwards. */
#include "nbd/server/server.h"
#include "nbd/tls.h"
#include "prl/block.h"
#include "prl/check.h"
#include "prl/error.h"
#include "prl/log.h"

#include "fuzz-util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The exports: a Parallels image of IMG_SIZE bytes with IMG_CLUSTER
 * clusters and a little data, and a raw disk of RAW_SIZE bytes. */
#define IMG_SIZE (4u << 20)
#define IMG_CLUSTER "cluster_size=64k"
#define RAW_SIZE (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *img_template;
static size_t img_template_len;
static int null_fd = -1;
static struct prl_nbd_tls *tls; /* PSK credentials for the FORCEDTLS run */

/* Build the Parallels image once, with data in two clusters, and keep its
 * bytes: every input starts from a fresh copy. */
static void make_template(void)
{
    char path[64];
    struct prl_block *bs;
    uint8_t buf[4096];
    off_t len;
    int fd = fuzz_memfd("prl-fuzz-tmpl", NULL, 0, path, sizeof(path));

    if (prl_block_create(path, "parallels", IMG_SIZE, IMG_CLUSTER) < 0 ||
        prl_block_open(path, "parallels", PRL_OPEN_RDWR, &bs) < 0) {
        fprintf(stderr, "template: %s\n", prl_error_message());
        abort();
    }
    memset(buf, 0x5a, sizeof(buf));
    CHECK(prl_block_pwrite(bs, buf, sizeof(buf), 0, 0) == 0);
    CHECK(prl_block_pwrite(bs, buf, sizeof(buf), 3u << 20, 0) == 0);
    CHECK(prl_block_close(bs) == 0);
    len = lseek(fd, 0, SEEK_END);
    CHECK(len > 0);
    img_template_len = (size_t)len;
    img_template = malloc(img_template_len);
    CHECK(img_template != NULL);
    CHECK(pread(fd, img_template, img_template_len, 0) == len);
    close(fd);
}

/* FUZZ_LOG=1 shows what the server logs, to see how far a seed gets. */
static void log_to_stderr(enum prl_log_level level, const char *msg,
                          void *opaque)
{
    (void)opaque;
    fprintf(stderr, "log %d: %s\n", (int)level, msg);
}

/* PSK credentials from a keys.psk that exists only while they load. */
static void make_tls(void)
{
    char dir[] = "/tmp/prl-fuzz-tls.XXXXXX", file[64];
    struct prl_nbd_tls_config cfg = {.type = PRL_NBD_TLS_PSK, .dir = dir};
    FILE *f;

    CHECK(mkdtemp(dir) != NULL);
    snprintf(file, sizeof(file), "%s/keys.psk", dir);
    f = fopen(file, "w");
    CHECK(f != NULL);
    fputs("alice:00112233445566778899aabbccddeeff\n", f);
    CHECK(fclose(f) == 0);
    if (prl_nbd_tls_new_server(&cfg, &tls) < 0) {
        fprintf(stderr, "tls: %s\n", prl_error_message());
        abort();
    }
    unlink(file);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (getenv("FUZZ_LOG")) {
        prl_log_set_handler(log_to_stderr, NULL, PRL_LOG_DEBUG);
    } else {
        prl_log_set_handler(NULL, NULL, PRL_LOG_ERROR);
    }
    fuzz_limit_files();
    null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    CHECK(null_fd >= 0);
    make_template();
    make_tls();
    return 0;
}

/* Open |data| in a fresh memfd as an export handle; *fd keeps the file
 * alive for the check afterwards. */
static struct prl_block *open_export(const char *format, const void *data,
                                     size_t len, uint64_t size, bool rw,
                                     int *fd, char *path, size_t pathlen)
{
    struct prl_block *bs;

    *fd = fuzz_memfd("prl-fuzz-export", data, len, path, pathlen);
    if (!data) {
        CHECK(ftruncate(*fd, (off_t)size) == 0);
    }
    if (prl_block_open(path, format, rw ? PRL_OPEN_RDWR : 0, &bs) < 0) {
        fprintf(stderr, "export: %s\n", prl_error_message());
        abort();
    }
    return bs;
}

static void serve_once(const uint8_t *data, size_t size, bool with_tls)
{
    struct prl_nbd_server_config cfg = {
        .shared = 1,
        .discard = PRL_NBD_DISCARD_UNMAP,
        /* One worker: a failing input replays the same way. */
        .workers = 1,
        .tls = with_tls ? tls : NULL,
    };
    struct prl_nbd_server *srv;
    struct prl_check_result res;
    struct prl_block *img, *raw;
    char img_path[64], raw_path[64], in_path[64];
    int img_fd, raw_fd, in_fd;

    img = open_export("parallels", img_template, img_template_len, 0, true,
                      &img_fd, img_path, sizeof(img_path));
    raw = open_export("raw", NULL, 0, RAW_SIZE, false, &raw_fd, raw_path,
                      sizeof(raw_path));

    /* The client's bytes come from a file: read() returns them, then end
     * of file, as a socket whose peer has sent everything and closed. */
    in_fd = fuzz_memfd("prl-fuzz-client", data, size, in_path, sizeof(in_path));
    CHECK(lseek(in_fd, 0, SEEK_SET) == 0);

    CHECK(prl_nbd_server_new(&cfg, &srv) == 0);
    CHECK(prl_nbd_server_add_export(srv, "", "fuzz export", img) == 0);
    CHECK(prl_nbd_server_add_export(srv, "raw", NULL, raw) == 0);
    /* Errors from a hostile client are expected; crashes are not. */
    prl_nbd_server_serve_fds(srv, in_fd, null_fd);
    CHECK(prl_nbd_server_free(srv) == 0);
    close(in_fd);

    /* Whatever the client wrote, zeroed or trimmed, the image is sound. */
    CHECK(prl_block_check(img_path, "parallels", 0, &res) == 0);
    if (res.corruptions != 0 || res.leaks != 0) {
        for (size_t i = 0; i < res.n_findings; i++) {
            fprintf(stderr, "  [%s] %s\n", res.findings[i].kind,
                    res.findings[i].message);
        }
        CHECK(!"an image served over NBD stays consistent");
    }
    prl_check_result_free(&res);
    close(img_fd);
    close(raw_fd);
    prl_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!img_template) {
        LLVMFuzzerInitialize(NULL, NULL);
    }
    serve_once(data, size, false);
    serve_once(data, size, true);
    return 0;
}
