/* SPDX-License-Identifier: MIT */
/* A main() for fuzz targets built without libFuzzer: feeds each file named
 * on the command line, and each regular file in each named directory, to
 * LLVMFuzzerTestOneInput once, so corpora run as ordinary regression tests
 * under any compiler and sanitizer. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Inputs larger than this are refused rather than fed: libFuzzer's own
 * default -max_len is far smaller, and a corpus file this big is a
 * mistake. */
#define STANDALONE_MAX_INPUT (64u << 20)

static unsigned long n_run;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long len;
    int ret = -1;

    if (!f) {
        fprintf(stderr, "standalone: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "standalone: %s: cannot size: %s\n", path,
                strerror(errno));
        goto out;
    }
    if ((unsigned long)len > STANDALONE_MAX_INPUT) {
        fprintf(stderr, "standalone: %s: %ld bytes is more than %u\n", path,
                len, STANDALONE_MAX_INPUT);
        goto out;
    }
    /* Exactly |len| bytes, so that ASan sees a read one past the input;
     * an empty input still gets a valid pointer. */
    buf = malloc(len > 0 ? (size_t)len : 1);
    if (!buf) {
        fprintf(stderr, "standalone: %s: out of memory\n", path);
        goto out;
    }
    if (len > 0 && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "standalone: %s: short read\n", path);
        goto out;
    }
    if (getenv("FUZZ_VERBOSE")) {
        fprintf(stderr, "standalone: running %s (%ld bytes)\n", path, len);
    }
    LLVMFuzzerTestOneInput(buf, (size_t)len);
    n_run++;
    ret = 0;
out:
    free(buf);
    fclose(f);
    return ret;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run every regular file directly inside |dir|, in name order so that a
 * failure reproduces the same way twice. */
static int run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int ret = 0;

    if (!d) {
        fprintf(stderr, "standalone: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof(*names));
            if (!nn) {
                ret = -1;
                break;
            }
            names = nn;
        }
        if (asprintf(&names[n], "%s/%s", dir, e->d_name) < 0) {
            ret = -1;
            break;
        }
        n++;
    }
    closedir(d);
    if (n > 0) {
        qsort(names, n, sizeof(*names), by_name);
    }
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (ret == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            ret = run_file(names[i]);
        }
        free(names[i]);
    }
    free(names);
    return ret;
}

int main(int argc, char **argv)
{
    int bad = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize) {
        LLVMFuzzerInitialize(&argc, &argv);
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "standalone: %s: %s\n", argv[i], strerror(errno));
            bad = 1;
        } else if (S_ISDIR(st.st_mode)) {
            bad |= run_dir(argv[i]) != 0;
        } else {
            bad |= run_file(argv[i]) != 0;
        }
    }
    printf("standalone: %lu inputs run\n", n_run);
    return bad ? 1 : 0;
}
