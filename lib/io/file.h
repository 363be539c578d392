/* SPDX-License-Identifier: MIT */
/* Host file I/O: whole-buffer pread/pwrite, space management and sync,
 * each failure recorded as a prl_error naming the file. */
#ifndef PRL_IO_FILE_H
#define PRL_IO_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct prl_file {
    int fd;
    char *path;
    bool writable;
    /* Learned at run time: fallocate modes this file system refused. */
    bool no_zero_range;
    bool no_punch_hole;
    bool no_reserve; /* fallocate modes 0 and KEEP_SIZE refused */
    /* Set by the owner: syncs are no-ops (qemu's cache=unsafe). */
    bool no_sync;
};

/* Open |path| read-only or read-write; with |create|, create or truncate
 * it (mode 0644).  Returns 0 and fills *f, or a negative errno. */
int prl_file_open(struct prl_file *f, const char *path, bool writable,
                  bool create);
/* Close the descriptor and free the path; returns close()'s error. */
int prl_file_close(struct prl_file *f);

/* Read exactly |len| bytes at |off|; bytes past end of file read as zero.
 * Returns 0 or a negative errno. */
int prl_file_pread(struct prl_file *f, void *buf, size_t len, uint64_t off);
/* Write exactly |len| bytes at |off|. */
int prl_file_pwrite(struct prl_file *f, const void *buf, size_t len,
                    uint64_t off);

/* Make [off, off+len) read as zeroes: unless |keep_allocated|, punch a
 * hole (space goes back to the host), else FALLOC_FL_ZERO_RANGE, else
 * write zeroes.  With |fast_only|, -ENOTSUP instead of writing zeroes. */
int prl_file_zero(struct prl_file *f, uint64_t off, uint64_t len,
                  bool keep_allocated, bool fast_only);
/* Punch a hole (reads back zero).  -ENOTSUP when the file system can't. */
int prl_file_punch(struct prl_file *f, uint64_t off, uint64_t len);
/* Allocate space without changing contents (fallocate mode 0); falls back
 * to writing zeroes past end of file when fallocate is not supported. */
int prl_file_allocate(struct prl_file *f, uint64_t off, uint64_t len);
/* A hint before writing [off, off+len): let the file system allocate its
 * blocks in one go (fallocate) rather than page by page as the data
 * arrives.  Contents and size do not change (blocks past the end of the
 * file stay reserved until prl_file_truncate).  Failures are ignored. */
void prl_file_reserve(struct prl_file *f, uint64_t off, uint64_t len);

int prl_file_sync(struct prl_file *f); /* fdatasync */
int prl_file_size(struct prl_file *f, uint64_t *size);
/* Bytes the file occupies on the host (st_blocks * 512). */
int prl_file_allocated(struct prl_file *f, uint64_t *bytes);
int prl_file_truncate(struct prl_file *f, uint64_t size);

/* SEEK_DATA/SEEK_HOLE: describe [off, off+len) as *is_data for the first
 * *pnum bytes.  When the file system does not support it, everything is
 * data.  off < file size. */
int prl_file_extent(struct prl_file *f, uint64_t off, uint64_t len,
                    bool *is_data, uint64_t *pnum);

#endif
