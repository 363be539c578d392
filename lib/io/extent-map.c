/* SPDX-License-Identifier: MIT */
/* The FIEMAP window behind raw block status (see io/extent-map.h). */
#include "io/extent-map.h"
#include "common/util.h"
#include "prl/error.h"

#include <errno.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>
#include <time.h>

/* File systems whose FIEMAP reports delayed allocations (dirty pages not
 * yet given blocks) as extents, so a hole in its answer is a hole. */
#define EXT4_MAGIC 0xEF53u
#define XFS_MAGIC 0x58465342u
#define BTRFS_MAGIC 0x9123683Eu

/* A window is asked for at least this much of the file, so that short
 * queries in a row share one FIEMAP. */
#define MIN_WINDOW ((uint64_t)1 << 30)
/* Windows older than this are read again: other processes' changes. */
#define MAX_AGE_NS 1000000000

void prl_extent_map_init(struct prl_extent_map *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    atomic_init(&m->gen, 0);
}

void prl_extent_map_destroy(struct prl_extent_map *m)
{
    pthread_mutex_destroy(&m->lock);
}

void prl_extent_map_invalidate(struct prl_extent_map *m)
{
    atomic_fetch_add(&m->gen, 1);
}

static int64_t coarse_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool fiemap_trusted(int fd)
{
    struct statfs st;

    if (fstatfs(fd, &st) != 0) {
        return false;
    }
    switch ((unsigned long)st.f_type & 0xffffffffu) {
    case EXT4_MAGIC:
    case XFS_MAGIC:
    case BTRFS_MAGIC:
        return true;
    default:
        return false;
    }
}

/* Read the window from |off| (at least |len| bytes of the file).  0, or
 * 1 when FIEMAP does not work on this file (use lseek), or a negative
 * errno.  Lock held. */
static int refill_locked(struct prl_extent_map *m, struct prl_file *f,
                         uint64_t off, uint64_t len)
{
    size_t size = sizeof(struct fiemap) +
                  PRL_EXTENT_MAP_RUNS * sizeof(struct fiemap_extent);
    struct fiemap *fm = calloc(1, size);
    uint64_t gen = atomic_load(&m->gen);
    uint64_t want = PRL_MAX(len, MIN_WINDOW), end;
    bool last = false, cut = false;

    if (!fm) {
        return prl_error(ENOMEM, "out of memory");
    }
    if (want > UINT64_MAX - off) {
        want = UINT64_MAX - off;
    }
    fm->fm_start = off;
    fm->fm_length = want;
    fm->fm_extent_count = PRL_EXTENT_MAP_RUNS;
    if (ioctl(f->fd, FS_IOC_FIEMAP, fm) != 0) {
        free(fm);
        return 1;
    }
    end = off + want;
    m->n = 0;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; i++) {
        const struct fiemap_extent *e = &fm->fm_extents[i];
        uint64_t lo = PRL_MAX(e->fe_logical, off);
        uint64_t hi = e->fe_logical + e->fe_length;
        bool unwritten = e->fe_flags & FIEMAP_EXTENT_UNWRITTEN;
        struct prl_extent_run *prev = m->n ? &m->runs[m->n - 1] : NULL;

        last |= e->fe_flags & FIEMAP_EXTENT_LAST;
        if (hi <= lo) {
            continue;
        }
        if (prev && prev->off + prev->len == lo &&
            prev->unwritten == unwritten) {
            prev->len = hi - prev->off;
        } else if (prev && prev->off + prev->len > lo) {
            cut = true; /* overlapping extents: trust none of the rest */
            break;
        } else {
            m->runs[m->n++] = (struct prl_extent_run){lo, hi - lo, unwritten};
        }
    }
    /* Extents past the last one kept are unknown when the array was full
     * or the rest was not believable: the window ends with it. */
    if (cut ||
        (fm->fm_mapped_extents == PRL_EXTENT_MAP_RUNS && !last && m->n > 0)) {
        end = PRL_MIN(end, m->runs[m->n - 1].off + m->runs[m->n - 1].len);
    }
    free(fm);
    if (end <= off) {
        return 1; /* nothing usable: let lseek answer */
    }
    m->start = off;
    m->end = end;
    m->wgen = gen;
    m->stamp_ns = coarse_ns();
    m->valid = true;
    return 0;
}

int prl_extent_map_extent(struct prl_extent_map *m, struct prl_file *f,
                          uint64_t off, uint64_t len, bool *is_data,
                          uint64_t *pnum)
{
    const struct prl_extent_run *run = NULL;
    uint64_t stop;
    size_t lo, hi;
    int r;

    pthread_mutex_lock(&m->lock);
    if (m->mode == 0) {
        m->mode = fiemap_trusted(f->fd) ? 1 : -1;
    }
    if (m->mode > 0 &&
        (!m->valid || m->wgen != atomic_load(&m->gen) || off < m->start ||
         off >= m->end || coarse_ns() - m->stamp_ns > MAX_AGE_NS)) {
        m->valid = false;
        r = refill_locked(m, f, off, len);
        if (r < 0) {
            pthread_mutex_unlock(&m->lock);
            return r;
        }
        if (r > 0) {
            m->mode = -1;
        }
    }
    if (m->mode < 0) {
        pthread_mutex_unlock(&m->lock);
        return prl_file_extent(f, off, len, is_data, pnum);
    }
    /* The first run that ends after off. */
    lo = 0;
    hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (m->runs[mid].off + m->runs[mid].len <= off) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < m->n) {
        run = &m->runs[lo];
    }
    if (run && run->off <= off) {
        stop = PRL_MIN(run->off + run->len - off, len);
        if (run->unwritten) {
            /* Zero on disk, but written data may sit in the page cache
             * until writeback converts the extent: lseek knows. */
            pthread_mutex_unlock(&m->lock);
            return prl_file_extent(f, off, stop, is_data, pnum);
        }
        *is_data = true;
    } else {
        stop = PRL_MIN((run ? run->off : m->end) - off, len);
        *is_data = false;
    }
    *pnum = stop;
    pthread_mutex_unlock(&m->lock);
    return 0;
}
