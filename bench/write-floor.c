/* SPDX-License-Identifier: MIT */
/* The floor under any convert into a new file: hold every data byte of
 * SRC in memory, then time one thread writing it, in order, 4 MiB per
 * pwrite, into a new file DST whose blocks are reserved first.  No tool
 * that writes the same bytes through the page cache into one file can
 * finish faster: the file system takes one buffered write into a file at
 * a time.  Prints the seconds.  Usage: write-floor SRC DST */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK ((size_t)4 << 20)

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "write-floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    struct stat st;
    uint8_t *data;
    size_t n = 0;
    int src, dst;

    if (argc != 3) {
        fprintf(stderr, "usage: write-floor SRC DST\n");
        return 2;
    }
    src = open(argv[1], O_RDONLY);
    if (src < 0 || fstat(src, &st) != 0) {
        die(argv[1]);
    }
    data = malloc((size_t)st.st_size);
    if (!data) {
        die("malloc");
    }
    /* Only the data regions, as a sparse convert copies them. */
    for (off_t pos = 0; pos < st.st_size;) {
        off_t d = lseek(src, pos, SEEK_DATA);
        if (d < 0) {
            break;
        }
        off_t h = lseek(src, d, SEEK_HOLE);
        if (h < 0) {
            die("SEEK_HOLE");
        }
        if (pread(src, data + n, (size_t)(h - d), d) != h - d) {
            die("pread");
        }
        n += (size_t)(h - d);
        pos = h;
    }
    unlink(argv[2]);
    dst = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (dst < 0) {
        die(argv[2]);
    }
    double t0 = now();
    if (fallocate(dst, FALLOC_FL_KEEP_SIZE, 0, (off_t)n) != 0) {
        die("fallocate");
    }
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t len = n - off < CHUNK ? n - off : CHUNK;
        if (pwrite(dst, data + off, len, (off_t)off) != (ssize_t)len) {
            die("pwrite");
        }
    }
    double t1 = now();
    printf("%.3f\n", t1 - t0);
    close(dst);
    close(src);
    free(data);
    return 0;
}
