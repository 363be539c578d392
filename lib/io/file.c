/* SPDX-License-Identifier: MIT */
/* POSIX file I/O for the drivers (see io/file.h). */
#include "io/file.h"
#include "common/util.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest single write of zeroes when nothing faster works. */
#define ZERO_CHUNK (1u << 20)

int prl_file_open(struct prl_file *f, const char *path, bool writable,
                  bool create)
{
    int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;

    memset(f, 0, sizeof(*f));
    f->fd = -1;
    if (create) {
        flags |= O_CREAT | O_TRUNC;
    }
    f->path = strdup(path);
    if (!f->path) {
        return prl_error(ENOMEM, "out of memory");
    }
    f->fd = open(path, flags, 0644);
    if (f->fd < 0) {
        int e = errno;
        free(f->path);
        f->path = NULL;
        return prl_error_errno(e, "could not open '%s'", path);
    }
    f->writable = writable;
    return 0;
}

int prl_file_close(struct prl_file *f)
{
    int r = 0;

    if (f->fd >= 0 && close(f->fd) < 0) {
        r = prl_error_errno(errno, "close '%s'", f->path);
    }
    f->fd = -1;
    free(f->path);
    f->path = NULL;
    return r;
}

int prl_file_pread(struct prl_file *f, void *buf, size_t len, uint64_t off)
{
    char *p = buf;

    while (len > 0) {
        ssize_t n = pread(f->fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return prl_error_errno(
                errno, "read '%s' at offset %" PRIu64 " (%zu bytes)", f->path,
                off, len);
        }
        if (n == 0) {
            memset(p, 0, len); /* past end of file */
            break;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int prl_file_pwrite(struct prl_file *f, const void *buf, size_t len,
                    uint64_t off)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = pwrite(f->fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return prl_error_errno(
                errno, "write '%s' at offset %" PRIu64 " (%zu bytes)", f->path,
                off, len);
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static bool fallocate_unsupported(int e)
{
    return e == EOPNOTSUPP || e == ENOSYS || e == EINVAL || e == ENODEV;
}

int prl_file_punch(struct prl_file *f, uint64_t off, uint64_t len)
{
    if (f->no_punch_hole) {
        return -ENOTSUP;
    }
    if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) == 0) {
        return 0;
    }
    if (fallocate_unsupported(errno)) {
        f->no_punch_hole = true;
        return -ENOTSUP;
    }
    return prl_error_errno(errno, "punch hole in '%s' at %" PRIu64, f->path,
                           off);
}

static int file_write_zeroes(struct prl_file *f, uint64_t off, uint64_t len)
{
    static const char zeroes[65536];

    while (len > 0) {
        size_t n = len < sizeof(zeroes) ? (size_t)len : sizeof(zeroes);
        int r = prl_file_pwrite(f, zeroes, n, off);
        if (r < 0) {
            return r;
        }
        off += n;
        len -= n;
    }
    return 0;
}

int prl_file_zero(struct prl_file *f, uint64_t off, uint64_t len,
                  bool keep_allocated, bool fast_only)
{
    int r;

    if (!keep_allocated) {
        /* Give the space back when allowed: a punched hole reads zero. */
        uint64_t size;
        r = prl_file_size(f, &size);
        if (r < 0) {
            return r;
        }
        r = prl_file_punch(f, off, len);
        if (r == 0) {
            /* A punch keeps the size: extend the file when the range
             * ended past it, as a zero write would have. */
            return off + len > size ? prl_file_truncate(f, off + len) : 0;
        }
        if (r != -ENOTSUP) {
            return r;
        }
    }
    if (!f->no_zero_range) {
        if (fallocate(f->fd, FALLOC_FL_ZERO_RANGE, (off_t)off, (off_t)len) ==
            0) {
            return 0;
        }
        if (!fallocate_unsupported(errno)) {
            return prl_error_errno(errno, "zero range of '%s' at %" PRIu64,
                                   f->path, off);
        }
        f->no_zero_range = true;
    }
    if (fast_only) {
        return prl_error(ENOTSUP, "'%s': no fast way to zero", f->path);
    }
    return file_write_zeroes(f, off, len);
}

int prl_file_allocate(struct prl_file *f, uint64_t off, uint64_t len)
{
    if (fallocate(f->fd, 0, (off_t)off, (off_t)len) == 0) {
        return 0;
    }
    if (!fallocate_unsupported(errno)) {
        return prl_error_errno(errno, "allocate space in '%s' at %" PRIu64,
                               f->path, off);
    }
    uint64_t size;
    int r = prl_file_size(f, &size);
    if (r < 0) {
        return r;
    }
    if (off + len <= size) {
        return 0;
    }
    if (off < size) {
        len -= size - off;
        off = size;
    }
    return file_write_zeroes(f, off, len);
}

void prl_file_reserve(struct prl_file *f, uint64_t off, uint64_t len)
{
    if (f->no_reserve || len == 0) {
        return;
    }
    if (fallocate(f->fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0 &&
        fallocate_unsupported(errno)) {
        f->no_reserve = true;
    }
}

int prl_file_sync(struct prl_file *f)
{
    if (f->no_sync) {
        return 0;
    }
    if (fdatasync(f->fd) < 0) {
        return prl_error_errno(errno, "sync '%s'", f->path);
    }
    return 0;
}

int prl_file_size(struct prl_file *f, uint64_t *size)
{
    struct stat st;

    if (fstat(f->fd, &st) < 0) {
        return prl_error_errno(errno, "stat '%s'", f->path);
    }
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(f->fd, 0, SEEK_END);
        if (end < 0) {
            return prl_error_errno(errno, "size of '%s'", f->path);
        }
        *size = (uint64_t)end;
        return 0;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

int prl_file_allocated(struct prl_file *f, uint64_t *bytes)
{
    struct stat st;

    if (fstat(f->fd, &st) < 0) {
        return prl_error_errno(errno, "stat '%s'", f->path);
    }
    *bytes = (uint64_t)st.st_blocks * 512;
    return 0;
}

int prl_file_truncate(struct prl_file *f, uint64_t size)
{
    if (ftruncate(f->fd, (off_t)size) < 0) {
        return prl_error_errno(errno, "resize '%s' to %" PRIu64 " bytes",
                               f->path, size);
    }
    return 0;
}

int prl_file_extent(struct prl_file *f, uint64_t off, uint64_t len,
                    bool *is_data, uint64_t *pnum)
{
    off_t data, hole;

    data = lseek(f->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* No data from off to end of file: a hole. */
            *is_data = false;
            *pnum = len;
            return 0;
        }
        *is_data = true; /* SEEK_DATA unsupported: all data */
        *pnum = len;
        return 0;
    }
    if ((uint64_t)data > off) {
        *is_data = false;
        *pnum = PRL_MIN((uint64_t)data - off, len);
        return 0;
    }
    hole = lseek(f->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        *is_data = true;
        *pnum = len;
        return 0;
    }
    *is_data = true;
    *pnum = PRL_MIN((uint64_t)hole - off, len);
    return 0;
}
