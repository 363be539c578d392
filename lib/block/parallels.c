/* SPDX-License-Identifier: MIT */
/* The Parallels expandable image driver (parallels.rst): both magics, BAT
 * translation, cluster allocation, zero/trim, resize and create. */
#include "block/driver.h"
#include "block/bitmap.h"
#include "block/parallels-check.h"
#include "block/parallels-ext.h"
#include "block/parallels-format.h"
#include "common/util.h"
#include "io/file.h"
#include "prl/error.h"
#include "prl/log.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/*
 * Locking: s->lock is a rwlock.  Reads, and writes into clusters that are
 * already allocated, hold it shared for the whole request, so a cluster
 * cannot be freed or reused under them.  Anything that changes the BAT,
 * the header or the used-cluster map holds it exclusive.
 *
 * The data area is indexed in clusters: index i is the host cluster at
 * data_off + i * cluster_size.  s->used has one bit per index, set for
 * clusters referenced by the BAT or by ext_off.
 */
/* Bytes of file blocks reserved at a time when clusters are appended. */
#define PARALLELS_RESERVE ((uint64_t)64 << 20)

struct parallels_state {
    struct prl_file file;
    struct parallels_header hdr;
    struct parallels_layout lay;
    uint32_t *bat;      /* host byte order, lay.bat_entries entries */
    uint8_t *used;      /* bit per data-area cluster index */
    uint64_t used_cap;  /* bits allocated in used */
    uint64_t data_end;  /* first index past the highest used cluster */
    uint64_t free_hint; /* no free index below this */
    uint64_t file_size; /* bytes, kept current under the lock */
    /* Bytes up to which the file's blocks were reserved past its end
     * (prl_file_reserve); given back by a truncate at close. */
    uint64_t reserved_end;
    pthread_rwlock_t lock;
    atomic_bool marked_dirty; /* we set in_use to DIRTY in the file */
    /* False when clusters may be referenced by something prl does not
     * track (a Format Extension): then nothing below the end of the file
     * is reused and the file is never truncated. */
    bool reuse_ok;
    bool rw;
    bool validated;   /* false with PRL_OPEN_UNSAFE */
    bool found_dirty; /* in_use was DIRTY at open */
    /* The Format Extension as on disk: its cluster and the bitmap data
     * clusters it references (host offsets), freed once a rewrite is
     * committed. */
    uint64_t *meta;
    size_t n_meta;
    uint8_t *transit; /* unknown TRANSIT features, kept byte for byte */
    size_t transit_len;
    bool ext_dirty;       /* the extension must be rewritten on close */
    uint64_t alloc_floor; /* no new cluster below this data-area index */
};

static bool used_get(const struct parallels_state *s, uint64_t i)
{
    return i < s->used_cap && (s->used[i / 8] >> (i % 8)) & 1;
}

static int used_set(struct parallels_state *s, uint64_t i, bool v)
{
    if (i >= s->used_cap) {
        uint64_t cap = PRL_MAX(s->used_cap * 2, PRL_MAX(i + 1, 1024));
        uint8_t *n = realloc(s->used, (size_t)prl_div_round_up(cap, 8));
        if (!n) {
            return prl_error(ENOMEM, "out of memory for the cluster map");
        }
        memset(n + prl_div_round_up(s->used_cap, 8), 0,
               (size_t)(prl_div_round_up(cap, 8) -
                        prl_div_round_up(s->used_cap, 8)));
        s->used = n;
        s->used_cap = prl_div_round_up(cap, 8) * 8;
    }
    if (v) {
        s->used[i / 8] |= (uint8_t)(1u << (i % 8));
        if (i >= s->data_end) {
            s->data_end = i + 1;
        }
    } else {
        s->used[i / 8] &= (uint8_t) ~(1u << (i % 8));
        if (i < s->free_hint) {
            s->free_hint = i;
        }
        while (s->data_end > 0 && !used_get(s, s->data_end - 1)) {
            s->data_end--;
        }
    }
    return 0;
}

static uint64_t host_index(const struct parallels_state *s, uint64_t off)
{
    return (off - s->lay.data_off) / s->lay.cluster_size;
}

static uint64_t index_host(const struct parallels_state *s, uint64_t i)
{
    return s->lay.data_off + i * s->lay.cluster_size;
}

/* Host offset of guest cluster |c|, 0 when it reads as zero. */
static uint64_t cluster_host(const struct parallels_state *s, uint64_t c)
{
    if (s->hdr.flags & PARALLELS_FLAG_EMPTY) {
        return 0;
    }
    if (c >= s->lay.bat_entries || s->bat[c] == 0) {
        return 0;
    }
    return parallels_entry_offset(&s->lay, s->bat[c]);
}

static int write_header(struct parallels_state *s)
{
    uint8_t buf[PARALLELS_HEADER_SIZE];

    parallels_header_encode(&s->hdr, buf);
    return prl_file_pwrite(&s->file, buf, sizeof(buf), 0);
}

static int write_bat_entry(struct parallels_state *s, uint64_t c)
{
    uint32_t le = htole32(s->bat[c]);

    return prl_file_pwrite(&s->file, &le, sizeof(le),
                           PARALLELS_HEADER_SIZE + c * 4);
}

/* Write entries [first, first + n) of the BAT. */
static int write_bat_range(struct parallels_state *s, uint64_t first,
                           uint64_t n)
{
    enum { CHUNK = 16384 };
    uint32_t buf[CHUNK];

    while (n > 0) {
        size_t k = (size_t)PRL_MIN(n, (uint64_t)CHUNK);
        for (size_t i = 0; i < k; i++) {
            buf[i] = htole32(s->bat[first + i]);
        }
        int r = prl_file_pwrite(&s->file, buf, k * 4,
                                PARALLELS_HEADER_SIZE + first * 4);
        if (r < 0) {
            return r;
        }
        first += k;
        n -= k;
    }
    return 0;
}

/* Before the first change of a read-write open: in_use = DIRTY, synced,
 * so a crash from here on is visible to the next open. */
static int mark_dirty(struct parallels_state *s)
{
    int r = 0;

    if (atomic_load(&s->marked_dirty)) {
        return 0;
    }
    pthread_rwlock_wrlock(&s->lock);
    if (!atomic_load(&s->marked_dirty)) {
        s->hdr.in_use = PARALLELS_IN_USE_DIRTY;
        r = write_header(s);
        if (r == 0) {
            r = prl_file_sync(&s->file);
        }
        if (r == 0) {
            atomic_store(&s->marked_dirty, true);
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return r;
}

/* The Empty flag says the image reads as zeroes whatever the BAT holds.
 * Before the first write clears it, drop every BAT entry, so old clusters
 * do not reappear.  Caller holds the lock exclusive. */
static int clear_empty_locked(struct parallels_state *s)
{
    int r;

    if (!(s->hdr.flags & PARALLELS_FLAG_EMPTY)) {
        return 0;
    }
    bool any = false;
    for (uint64_t c = 0; c < s->lay.bat_entries; c++) {
        if (s->bat[c]) {
            any = true;
            uint64_t off = parallels_entry_offset(&s->lay, s->bat[c]);
            s->bat[c] = 0;
            r = used_set(s, host_index(s, off), false);
            if (r < 0) {
                return r;
            }
        }
    }
    if (any) {
        r = write_bat_range(s, 0, s->lay.bat_entries);
        if (r == 0) {
            r = prl_file_sync(&s->file);
        }
        if (r < 0) {
            return r;
        }
    }
    s->hdr.flags &= ~PARALLELS_FLAG_EMPTY;
    r = write_header(s);
    if (r == 0) {
        r = prl_file_sync(&s->file);
    }
    return r;
}

/* Pick a host cluster for new data: the lowest free one inside the data
 * area when reuse is safe, else the next one past the end.  Does not mark
 * it used.  Caller holds the lock exclusive. */
static int find_free_cluster_locked(struct parallels_state *s, uint64_t *idx)
{
    uint64_t i = PRL_MAX(s->data_end, s->alloc_floor);

    if (s->reuse_ok) {
        for (uint64_t j = PRL_MAX(s->free_hint, s->alloc_floor);
             j < s->data_end; j++) {
            if (!used_get(s, j)) {
                i = j;
                break;
            }
        }
        s->free_hint = i;
    } else {
        /* Append past everything in the file. */
        uint64_t end = s->file_size > s->lay.data_off
                           ? prl_div_round_up(s->file_size - s->lay.data_off,
                                              s->lay.cluster_size)
                           : 0;
        i = PRL_MAX(i, end);
    }
    uint64_t host = index_host(s, i);
    if (host + s->lay.cluster_size < host || host > s->lay.max_offset) {
        return prl_error(ENOSPC,
                         "'%s': the image file cannot grow past %" PRIu64
                         " bytes (the largest offset a BAT entry can "
                         "hold)",
                         s->file.path, s->lay.max_offset);
    }
    *idx = i;
    return 0;
}

/* Allocate guest cluster |c| and write |len| bytes of |buf| at |in| inside
 * it; the rest of the cluster reads as zero.  The data reaches the file
 * before the BAT entry that points to it.  Lock held exclusive. */
static int allocate_and_write_locked(struct parallels_state *s, uint64_t c,
                                     const void *buf, uint64_t in, uint64_t len)
{
    uint64_t cs = s->lay.cluster_size, idx = 0, host;
    int r;

    r = find_free_cluster_locked(s, &idx);
    if (r < 0) {
        return r;
    }
    host = index_host(s, idx);
    if (host >= s->file_size && host + cs > s->reserved_end) {
        /* Appending: reserve the blocks of the next clusters in one
         * call, as the file system would otherwise allocate them page by
         * page while the data arrives. */
        uint64_t n = PRL_MAX(cs, PARALLELS_RESERVE);
        prl_file_reserve(&s->file, host, n);
        s->reserved_end = host + n;
    }
    if (host < s->file_size && (in > 0 || len < cs)) {
        /* Reusing space that may hold old bytes: clear what this write
         * does not cover. */
        if (in > 0) {
            r = prl_file_zero(&s->file, host, in, false, false);
        }
        if (r == 0 && in + len < cs) {
            r = prl_file_zero(&s->file, host + in + len, cs - in - len, false,
                              false);
        }
        if (r < 0) {
            return r;
        }
    }
    if (buf) {
        r = prl_file_pwrite(&s->file, buf, (size_t)len, host + in);
        if (r < 0) {
            return r;
        }
        /* A write that ends the cluster extended the file already. */
        s->file_size = PRL_MAX(s->file_size, host + in + len);
    }
    if (host + cs > s->file_size) {
        /* The whole cluster lies inside the file; the extension reads as
         * zero. */
        r = prl_file_truncate(&s->file, host + cs);
        if (r < 0) {
            return r;
        }
        s->file_size = host + cs;
    }
    r = used_set(s, idx, true);
    if (r < 0) {
        return r;
    }
    s->bat[c] = (uint32_t)(host / s->lay.entry_unit);
    r = write_bat_entry(s, c);
    if (r < 0) {
        s->bat[c] = 0;
        used_set(s, idx, false);
    }
    return r;
}

/* Allocate the |k| (>= 2) unallocated guest clusters from |c| on and fill
 * them with the |k| whole clusters at |buf|: when new clusters go to the
 * end of the data area, the run gets consecutive host clusters, one data
 * write and one BAT write.  Otherwise cluster by cluster.  Sets *done to
 * the clusters written.  Lock held exclusive. */
static int allocate_run_locked(struct parallels_state *s, uint64_t c,
                               uint64_t k, const uint8_t *buf, uint64_t *done)
{
    uint64_t cs = s->lay.cluster_size, idx = 0, host, end;
    int r;

    *done = 0;
    r = find_free_cluster_locked(s, &idx);
    if (r < 0) {
        return r;
    }
    host = index_host(s, idx);
    if (idx < s->data_end || k > (UINT64_MAX - host) / cs ||
        host + (k - 1) * cs > s->lay.max_offset) {
        /* Reusing a hole, or the run would not fit: one at a time. */
        r = allocate_and_write_locked(s, c, buf, 0, cs);
        *done = r == 0;
        return r;
    }
    end = host + k * cs;
    if (end > s->reserved_end) {
        uint64_t n = PRL_MAX(end - host, PARALLELS_RESERVE);
        prl_file_reserve(&s->file, host, n);
        s->reserved_end = host + n;
    }
    r = prl_file_pwrite(&s->file, buf, (size_t)(k * cs), host);
    if (r < 0) {
        return r;
    }
    s->file_size = PRL_MAX(s->file_size, end);
    for (uint64_t i = 0; i < k; i++) {
        r = used_set(s, idx + i, true);
        if (r < 0) {
            while (i-- > 0) {
                used_set(s, idx + i, false);
            }
            return r;
        }
        s->bat[c + i] = (uint32_t)((host + i * cs) / s->lay.entry_unit);
    }
    r = write_bat_range(s, c, k);
    if (r < 0) {
        for (uint64_t i = 0; i < k; i++) {
            s->bat[c + i] = 0;
            used_set(s, idx + i, false);
        }
        return r;
    }
    *done = k;
    return 0;
}

static int parallels_pread(struct prl_block *bs, void *buf, uint64_t length,
                           uint64_t offset)
{
    struct parallels_state *s = bs->opaque;
    uint64_t cs = s->lay.cluster_size;
    uint8_t *p = buf;
    int r = 0;

    pthread_rwlock_rdlock(&s->lock);
    while (length > 0 && r == 0) {
        uint64_t c = offset / cs, in = offset % cs;
        uint64_t n = PRL_MIN(length, cs - in);
        uint64_t host = cluster_host(s, c);

        if (host == 0) {
            /* Coalesce a run of holes. */
            while (n < length && cluster_host(s, c + 1) == 0) {
                c++;
                n += PRL_MIN(length - n, cs);
            }
            memset(p, 0, (size_t)n);
        } else {
            /* Coalesce clusters that are contiguous in the file. */
            uint64_t next = host + cs;
            while (n < length && cluster_host(s, c + 1) == next) {
                c++;
                next += cs;
                n += PRL_MIN(length - n, cs);
            }
            r = prl_file_pread(&s->file, p, (size_t)n, host + in);
        }
        p += n;
        offset += n;
        length -= n;
    }
    pthread_rwlock_unlock(&s->lock);
    return r;
}

static int parallels_pwrite(struct prl_block *bs, const void *buf,
                            uint64_t length, uint64_t offset, unsigned flags)
{
    struct parallels_state *s = bs->opaque;
    uint64_t cs = s->lay.cluster_size;
    const uint8_t *p = buf;
    int r = mark_dirty(s);

    while (length > 0 && r == 0) {
        uint64_t c = offset / cs, in = offset % cs;
        uint64_t n = PRL_MIN(length, cs - in);
        uint64_t host;

        pthread_rwlock_rdlock(&s->lock);
        host = cluster_host(s, c);
        if (host != 0) {
            uint64_t next = host + cs;
            while (n < length && cluster_host(s, c + 1) == next) {
                c++;
                next += cs;
                n += PRL_MIN(length - n, cs);
            }
            r = prl_file_pwrite(&s->file, p, (size_t)n, host + in);
            pthread_rwlock_unlock(&s->lock);
        } else {
            pthread_rwlock_unlock(&s->lock);
            pthread_rwlock_wrlock(&s->lock);
            r = clear_empty_locked(s);
            if (r == 0) {
                host = cluster_host(s, c);
                /* Whole unallocated clusters that follow go in one run. */
                uint64_t k = 0;
                while (host == 0 && in == 0 && (k + 1) * cs <= length &&
                       c + k < s->lay.bat_entries &&
                       cluster_host(s, c + k) == 0) {
                    k++;
                }
                if (host != 0) {
                    /* Another writer allocated it meanwhile. */
                    r = prl_file_pwrite(&s->file, p, (size_t)n, host + in);
                } else if (k >= 2) {
                    uint64_t done = 0;
                    r = allocate_run_locked(s, c, k, p, &done);
                    n = done * cs;
                } else {
                    r = allocate_and_write_locked(s, c, p, in, n);
                }
            }
            pthread_rwlock_unlock(&s->lock);
        }
        p += n;
        offset += n;
        length -= n;
    }
    if (r == 0 && (flags & PRL_REQ_FUA)) {
        r = prl_file_sync(&s->file);
    }
    return r;
}

/* Free guest cluster |c|: clear its BAT entry, then release the space.
 * Lock held exclusive. */
static int free_cluster_locked(struct parallels_state *s, uint64_t c)
{
    uint64_t host = parallels_entry_offset(&s->lay, s->bat[c]);
    uint32_t old = s->bat[c];
    int r;

    s->bat[c] = 0;
    r = write_bat_entry(s, c);
    if (r < 0) {
        s->bat[c] = old;
        return r;
    }
    r = used_set(s, host_index(s, host), false);
    if (r < 0) {
        return r;
    }
    /* Punch so the space goes back to the host; a later reuse zeroes what
     * it does not overwrite anyway, so failure to punch is harmless. */
    r = prl_file_punch(&s->file, host, s->lay.cluster_size);
    return r == -ENOTSUP ? 0 : r;
}

/* Zero and trim: whole clusters are freed (unless NO_UNMAP), partial ones
 * are zeroed inside their host cluster, holes are left alone. */
static int zero_or_trim(struct prl_block *bs, uint64_t length, uint64_t offset,
                        unsigned flags)
{
    struct parallels_state *s = bs->opaque;
    uint64_t cs = s->lay.cluster_size;
    bool keep = flags & PRL_REQ_NO_UNMAP;
    bool fast = flags & PRL_REQ_FAST_ZERO;
    int r = mark_dirty(s);

    while (length > 0 && r == 0) {
        uint64_t c = offset / cs, in = offset % cs;
        uint64_t n = PRL_MIN(length, cs - in);
        uint64_t host;

        pthread_rwlock_rdlock(&s->lock);
        host = cluster_host(s, c);
        if (host == 0) {
            pthread_rwlock_unlock(&s->lock);
        } else if (n < cs || keep) {
            r = prl_file_zero(&s->file, host + in, n, keep, fast);
            pthread_rwlock_unlock(&s->lock);
        } else {
            pthread_rwlock_unlock(&s->lock);
            pthread_rwlock_wrlock(&s->lock);
            if (cluster_host(s, c) != 0) {
                r = free_cluster_locked(s, c);
            }
            pthread_rwlock_unlock(&s->lock);
        }
        offset += n;
        length -= n;
    }
    if (r == 0 && (flags & PRL_REQ_FUA)) {
        r = prl_file_sync(&s->file);
    }
    return r;
}

static int parallels_zero(struct prl_block *bs, uint64_t length,
                          uint64_t offset, unsigned flags)
{
    return zero_or_trim(bs, length, offset, flags);
}

static int parallels_trim(struct prl_block *bs, uint64_t length,
                          uint64_t offset, unsigned flags)
{
    return zero_or_trim(bs, length, offset, flags & PRL_REQ_FUA);
}

static int parallels_flush(struct prl_block *bs)
{
    struct parallels_state *s = bs->opaque;

    if (!s->rw) {
        return 0;
    }
    return prl_file_sync(&s->file);
}

static int parallels_block_status(struct prl_block *bs, uint64_t offset,
                                  uint64_t length, struct prl_extent *ext)
{
    struct parallels_state *s = bs->opaque;
    uint64_t cs = s->lay.cluster_size;
    uint64_t c = offset / cs, in = offset % cs;
    /* Clusters the range touches end before c_end; the BAT ends at nb
     * (clusters past it, and all of an Empty image, are unallocated). */
    uint64_t c_end = (offset + length - 1) / cs + 1, j = c + 1, nb;
    uint64_t host;

    pthread_rwlock_rdlock(&s->lock);
    nb = s->hdr.flags & PARALLELS_FLAG_EMPTY ? 0 : s->lay.bat_entries;
    host = cluster_host(s, c);
    /* One pass over the BAT entries of the run, not a lookup each. */
    if (host == 0) {
        while (j < c_end && j < nb && s->bat[j] == 0) {
            j++;
        }
        if (j >= nb) {
            j = c_end;
        }
        ext->flags = PRL_EXT_ZERO;
        ext->depth = 0;
    } else {
        uint64_t next = host + cs;
        while (j < c_end && j < nb && s->bat[j] != 0 &&
               parallels_entry_offset(&s->lay, s->bat[j]) == next) {
            j++;
            next += cs;
        }
        ext->flags = PRL_EXT_DATA | PRL_EXT_ALLOCATED | PRL_EXT_OFFSET;
        ext->depth = 1;
        ext->offset = host + in;
    }
    pthread_rwlock_unlock(&s->lock);
    ext->length = PRL_MIN(length, (j - c) * cs - in);
    return 0;
}

static int parallels_data_fd(struct prl_block *bs, const struct prl_extent *ext)
{
    struct parallels_state *s = bs->opaque;
    (void)ext;
    return s->file.fd;
}

static int parallels_info(struct prl_block *bs, struct prl_image_info *info)
{
    struct parallels_state *s = bs->opaque;
    int r;

    pthread_rwlock_rdlock(&s->lock);
    info->has_parallels = true;
    info->cluster_size = s->lay.cluster_size;
    info->subformat = s->hdr.ext ? PARALLELS_MAGIC_EXT : PARALLELS_MAGIC_LEGACY;
    info->in_use = s->hdr.in_use;
    info->dirty = s->found_dirty;
    info->empty_flag = s->hdr.flags & PARALLELS_FLAG_EMPTY;
    info->flags = s->hdr.flags;
    info->heads = s->hdr.heads;
    info->cylinders = s->hdr.cylinders;
    info->tracks = s->hdr.tracks;
    info->data_offset = s->lay.data_off;
    info->ext_offset = s->hdr.ext_off * PARALLELS_SECTOR;
    info->bat_entries = s->lay.bat_entries;
    info->file_size = s->file_size;
    for (uint64_t c = 0; c < s->lay.bat_entries; c++) {
        info->allocated_clusters += s->bat[c] != 0;
    }
    pthread_rwlock_unlock(&s->lock);
    r = prl_file_allocated(&s->file, &info->actual_size);
    return r;
}

/* Check every BAT entry and ext_off and build the used-cluster map. */
static int load_bat(struct parallels_state *s, const char *path)
{
    uint64_t n = s->lay.bat_entries;
    const char *why;
    int r;

    if (n > SIZE_MAX / 4) {
        return prl_error(EFBIG,
                         "'%s': BAT of %" PRIu64 " entries is too "
                         "large",
                         path, n);
    }
    s->bat = prl_alloc_aligned((size_t)(n * 4));
    if (!s->bat) {
        return prl_error_context(-ENOMEM, "'%s': BAT of %" PRIu64 " entries",
                                 path, n);
    }
    r = prl_file_pread(&s->file, s->bat, (size_t)(n * 4),
                       PARALLELS_HEADER_SIZE);
    if (r < 0) {
        return r;
    }
    for (uint64_t c = 0; c < n; c++) {
        s->bat[c] = le32toh(s->bat[c]);
    }
    if (!s->validated) {
        /* Unsafe open (check/repair): keep only entries that are usable,
         * without refusing the image. */
        for (uint64_t c = 0; c < n; c++) {
            if (s->bat[c]) {
                uint64_t off = parallels_entry_offset(&s->lay, s->bat[c]);
                if (!parallels_offset_problem(&s->lay, off, s->file_size)) {
                    r = used_set(s, host_index(s, off), true);
                    if (r < 0) {
                        return r;
                    }
                }
            }
        }
        return 0;
    }
    for (uint64_t c = 0; c < n; c++) {
        uint64_t off, idx;

        if (s->bat[c] == 0) {
            continue;
        }
        off = parallels_entry_offset(&s->lay, s->bat[c]);
        why = parallels_offset_problem(&s->lay, off, s->file_size);
        if (why) {
            return prl_error(EINVAL,
                             "'%s': BAT entry %" PRIu64 " = %" PRIu32
                             " (byte offset %" PRIu64 ") %s (data area "
                             "starts at byte %" PRIu64 ", file size %" PRIu64
                             "); run 'prl-img check -r all' to repair",
                             path, c, s->bat[c], off, why, s->lay.data_off,
                             s->file_size);
        }
        idx = host_index(s, off);
        if (used_get(s, idx)) {
            uint64_t other = 0;
            for (uint64_t d = 0; d < c; d++) {
                if (s->bat[d] == s->bat[c]) {
                    other = d;
                    break;
                }
            }
            return prl_error(EINVAL,
                             "'%s': BAT entries %" PRIu64 " and %" PRIu64
                             " both point to byte offset %" PRIu64
                             "; run 'prl-img check -r all' to repair",
                             path, other, c, off);
        }
        r = used_set(s, idx, true);
        if (r < 0) {
            return r;
        }
    }
    if (s->hdr.ext_off) {
        uint64_t off;
        why = parallels_sector_offset_problem(&s->lay, s->hdr.ext_off,
                                              s->file_size, &off);
        if (!why && used_get(s, host_index(s, off))) {
            why = "is the cluster of a BAT entry";
        }
        if (why) {
            return prl_error(EINVAL,
                             "'%s': header field ext_off = %" PRIu64
                             " (Format Extension at byte %" PRIu64 ") %s; "
                             "run 'prl-img check -r all' to repair",
                             path, s->hdr.ext_off, off, why);
        }
        r = used_set(s, host_index(s, off), true);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

static int add_meta(struct parallels_state *s, uint64_t off)
{
    uint64_t *n = realloc(s->meta, (s->n_meta + 1) * sizeof(*n));

    if (!n) {
        return prl_error(ENOMEM, "out of memory");
    }
    s->meta = n;
    s->meta[s->n_meta++] = off;
    return 0;
}

/* Load one dirty-bitmap feature into a new bitmap object.  On -EINVAL,
 * |err| says which field is wrong. */
static int load_bitmap(struct prl_block *bs, struct parallels_state *s,
                       const uint8_t *data, uint32_t size,
                       struct prl_dirty_bitmap **out, uint64_t **clusters,
                       size_t *n_clusters, char *err, size_t errlen)
{
    uint64_t cs = s->lay.cluster_size;
    struct parallels_bitmap_info bi;
    struct prl_dirty_bitmap *b;
    uint64_t bytes;
    uint8_t *buf = NULL;
    int r;

    r = parallels_bitmap_decode(data, size, &bi, err, errlen);
    if (r < 0) {
        return r;
    }
    r = parallels_bitmap_check_shape(&bi, s->hdr.nb_sectors, cs, err, errlen);
    if (r < 0) {
        return r;
    }
    /* The id is the bitmap's name: one bitmap per name. */
    for (size_t i = 0; i < bs->n_bitmaps; i++) {
        if (memcmp(bs->bitmaps[i]->id, bi.id, 16) == 0) {
            snprintf(err, errlen, "id = %s is the id of an earlier bitmap",
                     bs->bitmaps[i]->name);
            return -EINVAL;
        }
    }
    b = prl_dirty_bitmap_new(bi.id, (uint64_t)bi.granularity * PARALLELS_SECTOR,
                             bs->size);
    if (!b) {
        return -ENOMEM;
    }
    bytes = prl_dirty_bitmap_bytes(b);
    *clusters = prl_calloc(PRL_MAX(bi.l1_size, 1), sizeof(**clusters));
    *n_clusters = 0;
    if (!*clusters) {
        prl_dirty_bitmap_free(b);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < bi.l1_size; i++) {
        uint64_t e = parallels_get_le64(bi.l1 + (size_t)i * 8);
        uint64_t from = (uint64_t)i * cs;
        size_t n = (size_t)PRL_MIN(cs, bytes - from);
        const char *why;

        if (e == 0) {
            continue;
        }
        if (e == 1) {
            memset(b->bits + from, 0xff, n);
            continue;
        }
        uint64_t host;
        why = parallels_sector_offset_problem(&s->lay, e, s->file_size, &host);
        if (!why && used_get(s, host_index(s, host))) {
            why = "is a cluster already in use";
        }
        if (why) {
            snprintf(err, errlen, "L1 entry %" PRIu32 " = %" PRIu64 " %s", i, e,
                     why);
            r = -EINVAL;
            break;
        }
        if (!buf) {
            buf = prl_malloc((size_t)cs);
            if (!buf) {
                r = -ENOMEM;
                break;
            }
        }
        r = prl_file_pread(&s->file, buf, (size_t)cs, host);
        if (r < 0) {
            break;
        }
        memcpy(b->bits + from, buf, n);
        (*clusters)[(*n_clusters)++] = host;
        /* Taken now, so that a second entry naming it is refused. */
        r = used_set(s, host_index(s, host), true);
        if (r < 0) {
            break;
        }
    }
    free(buf);
    if (r < 0) {
        for (size_t j = 0; j < *n_clusters; j++) {
            used_set(s, host_index(s, (*clusters)[j]), false);
        }
        prl_dirty_bitmap_free(b);
        free(*clusters);
        *clusters = NULL;
        return r;
    }
    /* Bits past the disk end are not part of it. */
    for (uint64_t j = b->nbits; j < bytes * 8; j++) {
        b->bits[j / 8] &= (uint8_t) ~(1u << (j % 8));
    }
    *out = b;
    return 0;
}

/* Read the Format Extension: bitmaps into bs->bitmaps, unknown TRANSIT
 * features kept for rewriting, NECESSARY ones that cannot be loaded make
 * a read-write open fail.  |trusted|: the image was closed cleanly. */
static int load_ext(struct prl_block *bs, struct parallels_state *s,
                    bool trusted)
{
    uint64_t cs = s->lay.cluster_size;
    uint64_t off = s->hdr.ext_off * PARALLELS_SECTOR;
    struct parallels_ext ext;
    const uint8_t *attrs = NULL;
    uint32_t n_attrs = 0;
    uint8_t *buf;
    char err[256];
    int r;

    buf = prl_malloc((size_t)cs);
    if (!buf) {
        return -ENOMEM;
    }
    r = prl_file_pread(&s->file, buf, (size_t)cs, off);
    if (r < 0) {
        free(buf);
        return r;
    }
    r = parallels_ext_parse_valid(buf, (size_t)cs, &ext, err, sizeof(err));
    if (r < 0) {
        free(buf);
        if (r != -EINVAL) {
            return r;
        }
        if (s->rw) {
            return prl_error(EINVAL,
                             "'%s': the Format Extension at byte %" PRIu64
                             " is invalid (%s); run 'prl-img check "
                             "-r all' to drop it",
                             bs->filename, off, err);
        }
        prl_warn("'%s': ignoring the invalid Format Extension at byte %" PRIu64
                 " (%s)",
                 bs->filename, off, err);
        /* Its bitmaps' clusters are unknown: never reuse space. */
        s->reuse_ok = false;
        return 0;
    }
    r = add_meta(s, off);
    for (size_t i = 0; r == 0 && i < ext.n_features; i++) {
        struct parallels_feature *f = &ext.features[i];
        bool necessary = f->flags & PARALLELS_FEATURE_NECESSARY;
        struct prl_dirty_bitmap *b = NULL, **nv;
        uint64_t *clusters = NULL;
        size_t n_clusters = 0;

        if (f->magic == PARALLELS_FEATURE_PRL_ATTRS) {
            attrs = parallels_ext_attrs(buf, f, &n_attrs);
            continue;
        }
        if (f->magic != PARALLELS_FEATURE_DIRTY_BITMAP) {
            if (necessary) {
                if (s->rw) {
                    r = prl_error(EROFS,
                                  "'%s': Format Extension feature "
                                  "0x%016" PRIx64 " is unknown and marked "
                                  "NECESSARY; the image can only be opened "
                                  "read-only",
                                  bs->filename, f->magic);
                }
                s->reuse_ok = false;
            } else if (f->flags & PARALLELS_FEATURE_TRANSIT) {
                /* Kept byte for byte; it may own clusters we cannot see. */
                size_t len = PARALLELS_FEATURE_HEADER +
                             (((size_t)f->data_size + 7) & ~(size_t)7);
                len = PRL_MIN(
                    len, (size_t)cs - (f->data_pos - PARALLELS_FEATURE_HEADER));
                uint8_t *nt = realloc(s->transit, s->transit_len + len);
                if (!nt) {
                    r = prl_error(ENOMEM, "out of memory");
                    break;
                }
                s->transit = nt;
                memcpy(s->transit + s->transit_len,
                       buf + f->data_pos - PARALLELS_FEATURE_HEADER, len);
                s->transit_len += len;
                s->reuse_ok = false;
            } else {
                prl_info("'%s': Format Extension feature 0x%016" PRIx64
                         " is unknown and will be dropped on rewrite",
                         bs->filename, f->magic);
                s->ext_dirty = true;
            }
            continue;
        }
        r = load_bitmap(bs, s, buf + f->data_pos, f->data_size, &b, &clusters,
                        &n_clusters, err, sizeof(err));
        if (r == -EINVAL) {
            if (necessary && s->rw) {
                r = prl_error(EROFS,
                              "'%s': dirty bitmap feature marked "
                              "NECESSARY cannot be loaded (%s); the image can "
                              "only be opened read-only",
                              bs->filename, err);
                break;
            }
            prl_warn("'%s': dropping an invalid dirty bitmap: %s", bs->filename,
                     err);
            s->ext_dirty = true;
            r = 0;
            continue;
        }
        if (r < 0) {
            break;
        }
        for (size_t j = 0; r == 0 && j < n_clusters; j++) {
            r = used_set(s, host_index(s, clusters[j]), true);
            if (r == 0) {
                r = add_meta(s, clusters[j]);
            }
        }
        free(clusters);
        b->consistent = trusted;
        nv = r == 0 ? realloc(bs->bitmaps, (bs->n_bitmaps + 1) * sizeof(*nv))
                    : NULL;
        if (!nv) {
            prl_dirty_bitmap_free(b);
            r = r < 0 ? r : prl_error(ENOMEM, "out of memory");
            break;
        }
        bs->bitmaps = nv;
        bs->bitmaps[bs->n_bitmaps++] = b;
    }
    /* prl's attributes: disabled and inconsistent bitmaps. */
    for (uint32_t j = 0; r == 0 && j < n_attrs; j++) {
        const uint8_t *e = attrs + (size_t)j * PARALLELS_ATTR_ENTRY;
        uint32_t fl = parallels_get_le32(e + 16);
        for (size_t i = 0; i < bs->n_bitmaps; i++) {
            if (memcmp(bs->bitmaps[i]->id, e, 16) == 0) {
                if (fl & PARALLELS_ATTR_DISABLED) {
                    bs->bitmaps[i]->enabled = false;
                }
                if (fl & PARALLELS_ATTR_INCONSISTENT) {
                    bs->bitmaps[i]->consistent = false;
                }
            }
        }
    }
    parallels_ext_free(&ext);
    free(buf);
    return r;
}

/* Serialize bitmap |b| into feature data at |p| (room checked by the
 * caller), writing data clusters as needed.  Lock held exclusive. */
static int store_bitmap_locked(struct parallels_state *s, struct prl_block *bs,
                               const struct prl_dirty_bitmap *b, uint8_t *p,
                               uint32_t l1_size, uint64_t **fresh,
                               size_t *n_fresh)
{
    uint64_t cs = s->lay.cluster_size;
    uint64_t bytes = prl_dirty_bitmap_bytes(b);
    uint8_t *buf = NULL;
    int r = 0;

    parallels_put_le64(p, bs->size / PARALLELS_SECTOR);
    memcpy(p + 8, b->id, 16);
    parallels_put_le32(p + 24, (uint32_t)(b->granularity / PARALLELS_SECTOR));
    parallels_put_le32(p + 28, l1_size);
    for (uint32_t i = 0; i < l1_size && r == 0; i++) {
        uint64_t from = (uint64_t)i * cs;
        size_t n = (size_t)PRL_MIN(cs, bytes - from);
        const uint8_t *chunk = b->bits + from;
        uint64_t entry, idx, host;
        bool ones = true;

        if (prl_is_zero(chunk, n)) {
            entry = 0;
        } else {
            /* All ones, counting only bits inside the disk. */
            uint64_t first_bit = from * 8;
            uint64_t last_bit = PRL_MIN(b->nbits, (from + n) * 8);
            for (uint64_t j = first_bit; j < last_bit && ones;) {
                if (j % 8 == 0 && last_bit - j >= 8) {
                    ones = b->bits[j / 8] == 0xff;
                    j += 8;
                } else {
                    ones = prl_dirty_bitmap_get(b, j);
                    j++;
                }
            }
            entry = ones ? 1 : 0;
        }
        if (entry == 0 && !prl_is_zero(chunk, n)) {
            if (!buf) {
                buf = prl_malloc((size_t)cs);
                if (!buf) {
                    r = -ENOMEM;
                    break;
                }
            }
            memset(buf, 0, (size_t)cs);
            memcpy(buf, chunk, n);
            r = find_free_cluster_locked(s, &idx);
            if (r < 0) {
                break;
            }
            host = index_host(s, idx);
            r = prl_file_pwrite(&s->file, buf, (size_t)cs, host);
            if (r < 0) {
                break;
            }
            s->file_size = PRL_MAX(s->file_size, host + cs);
            r = used_set(s, idx, true);
            if (r < 0) {
                break;
            }
            uint64_t *nf = realloc(*fresh, (*n_fresh + 1) * sizeof(*nf));
            if (!nf) {
                r = prl_error(ENOMEM, "out of memory");
                break;
            }
            *fresh = nf;
            (*fresh)[(*n_fresh)++] = host;
            entry = host / PARALLELS_SECTOR;
        }
        parallels_put_le64(p + PARALLELS_BITMAP_FIXED + (size_t)i * 8, entry);
    }
    free(buf);
    return r;
}

/* QEMU 7.2's check counts everything past the last BAT cluster as leaked
 * and its repair truncates it, which would destroy the extension.  Keep a
 * BAT cluster last in the file: move the highest one past the metadata.
 * Lock held exclusive. */
static int keep_data_last_locked(struct parallels_state *s)
{
    uint64_t cs = s->lay.cluster_size, max_meta = 0, hmax = 0, c_max = 0;
    uint64_t idx, to;
    uint8_t *buf;
    int r;

    for (size_t i = 0; i < s->n_meta; i++) {
        max_meta = PRL_MAX(max_meta, s->meta[i]);
    }
    for (uint64_t c = 0; c < s->lay.bat_entries; c++) {
        uint64_t h = s->bat[c] ? parallels_entry_offset(&s->lay, s->bat[c]) : 0;
        if (h > hmax) {
            hmax = h;
            c_max = c;
        }
    }
    if (s->n_meta == 0 || hmax == 0 || hmax > max_meta) {
        return 0;
    }
    uint64_t floor = s->alloc_floor;
    s->alloc_floor = host_index(s, max_meta) + 1;
    r = find_free_cluster_locked(s, &idx);
    s->alloc_floor = floor;
    if (r < 0) {
        return r;
    }
    to = index_host(s, idx);
    buf = prl_malloc((size_t)cs);
    if (!buf) {
        return -ENOMEM;
    }
    r = prl_file_pread(&s->file, buf, (size_t)cs, hmax);
    if (r == 0) {
        r = prl_file_pwrite(&s->file, buf, (size_t)cs, to);
    }
    free(buf);
    if (r == 0) {
        s->file_size = PRL_MAX(s->file_size, to + cs);
        r = used_set(s, idx, true);
    }
    if (r == 0) {
        r = prl_file_sync(&s->file);
    }
    if (r < 0) {
        return r;
    }
    s->bat[c_max] = (uint32_t)(to / s->lay.entry_unit);
    r = write_bat_entry(s, c_max);
    if (r == 0) {
        r = prl_file_sync(&s->file);
    }
    if (r == 0) {
        r = used_set(s, host_index(s, hmax), false);
    }
    if (r == 0) {
        r = prl_file_punch(&s->file, hmax, cs);
        r = r == -ENOTSUP ? 0 : r;
    }
    return r;
}

/* Bytes of the Format Extension cluster that the bitmaps and kept
 * features need when the disk is |size| bytes (the bitmaps follow the
 * disk's size).  bitmap_lock held. */
static uint64_t ext_need_locked(struct prl_block *bs, struct parallels_state *s,
                                uint64_t size)
{
    uint64_t cs = s->lay.cluster_size, n_attrs = 0;
    uint64_t need =
        PARALLELS_EXT_HEADER + PARALLELS_FEATURE_HEADER + s->transit_len;

    for (size_t i = 0; i < bs->n_bitmaps; i++) {
        struct prl_dirty_bitmap *b = bs->bitmaps[i];
        uint64_t bytes =
            prl_div_round_up(prl_div_round_up(size, b->granularity), 8);
        uint64_t l1 = prl_div_round_up(bytes, cs);
        need += PARALLELS_FEATURE_HEADER +
                prl_round_up(PARALLELS_BITMAP_FIXED + l1 * 8, 8);
        n_attrs += !b->enabled || !b->consistent;
    }
    if (n_attrs) {
        need += PARALLELS_FEATURE_HEADER + 8 + n_attrs * PARALLELS_ATTR_ENTRY;
    }
    return need;
}

/* Drop the newest bitmaps until the rest fit in the extension cluster,
 * so that a bitmap too many costs only itself, not the clean close that
 * keeps the others consistent.  Returns 0, or -ENOSPC naming the last
 * bitmap dropped.  Lock held exclusive. */
static int drop_unfit_bitmaps_locked(struct prl_block *bs,
                                     struct parallels_state *s)
{
    int r = 0;

    pthread_rwlock_wrlock(&bs->bitmap_lock);
    while (bs->n_bitmaps > 0 &&
           ext_need_locked(bs, s, bs->size) > s->lay.cluster_size) {
        struct prl_dirty_bitmap *b = bs->bitmaps[--bs->n_bitmaps];
        r = prl_error(ENOSPC,
                      "'%s': bitmap '%s' does not fit in the Format "
                      "Extension cluster (%" PRIu64 " bytes) and was not "
                      "stored",
                      bs->filename, b->name, s->lay.cluster_size);
        prl_dirty_bitmap_free(b);
        bs->bitmaps_changed = true;
    }
    pthread_rwlock_unlock(&bs->bitmap_lock);
    return r;
}

/* Write the bitmaps and kept features as a new Format Extension: data
 * clusters and the extension cluster first (never over the old ones),
 * synced, then ext_off in the header, then the old clusters are freed.
 * Every step leaves a valid image.  Lock held exclusive. */
static int store_ext_locked(struct prl_block *bs, struct parallels_state *s)
{
    uint64_t cs = s->lay.cluster_size;
    struct parallels_ext_writer w;
    uint64_t *fresh = NULL, idx, host = 0;
    size_t n_fresh = 0, n_attrs = 0;
    uint8_t *buf;
    int r = 0;

    buf = prl_malloc((size_t)cs);
    if (!buf) {
        return -ENOMEM;
    }
    parallels_ext_writer_init(&w, buf, (size_t)cs);
    pthread_rwlock_rdlock(&bs->bitmap_lock);
    for (size_t i = 0; i < bs->n_bitmaps && r == 0; i++) {
        struct prl_dirty_bitmap *b = bs->bitmaps[i];
        uint64_t l1 = prl_div_round_up(prl_dirty_bitmap_bytes(b), cs);
        uint8_t *p;

        if (!b->enabled || !b->consistent) {
            n_attrs++;
        }
        p = l1 > (UINT32_MAX - PARALLELS_BITMAP_FIXED) / 8
                ? NULL
                : parallels_ext_writer_reserve(
                      &w, PARALLELS_FEATURE_DIRTY_BITMAP, 0,
                      (uint32_t)(PARALLELS_BITMAP_FIXED + l1 * 8));
        if (!p) {
            r = prl_error(ENOSPC,
                          "'%s': the dirty bitmaps do not fit in "
                          "the Format Extension cluster (%" PRIu64 " bytes)",
                          bs->filename, cs);
            break;
        }
        r = store_bitmap_locked(s, bs, b, p, (uint32_t)l1, &fresh, &n_fresh);
    }
    if (r == 0 && n_attrs) {
        uint8_t *p = parallels_ext_writer_reserve(
            &w, PARALLELS_FEATURE_PRL_ATTRS, PARALLELS_FEATURE_TRANSIT,
            (uint32_t)(8 + n_attrs * PARALLELS_ATTR_ENTRY));
        if (!p) {
            r = prl_error(ENOSPC,
                          "'%s': the bitmap attributes do not fit "
                          "in the Format Extension cluster",
                          bs->filename);
        } else {
            parallels_put_le32(p, (uint32_t)n_attrs);
            p += 8;
            for (size_t i = 0; i < bs->n_bitmaps; i++) {
                struct prl_dirty_bitmap *b = bs->bitmaps[i];
                if (b->enabled && b->consistent) {
                    continue;
                }
                memcpy(p, b->id, 16);
                parallels_put_le32(
                    p + 16,
                    (b->enabled ? 0 : PARALLELS_ATTR_DISABLED) |
                        (b->consistent ? 0 : PARALLELS_ATTR_INCONSISTENT));
                p += PARALLELS_ATTR_ENTRY;
            }
        }
    }
    bool empty = bs->n_bitmaps == 0 && s->transit_len == 0;
    pthread_rwlock_unlock(&bs->bitmap_lock);
    if (r == 0 && s->transit_len) {
        if (w.pos + s->transit_len + PARALLELS_FEATURE_HEADER > cs) {
            r = prl_error(ENOSPC,
                          "'%s': kept features do not fit in the "
                          "Format Extension cluster",
                          bs->filename);
        } else {
            memcpy(buf + w.pos, s->transit, s->transit_len);
            w.pos += s->transit_len;
        }
    }
    if (r == 0 && !empty) {
        r = parallels_ext_writer_finish(&w);
        if (r == 0) {
            r = find_free_cluster_locked(s, &idx);
        }
        if (r == 0) {
            host = index_host(s, idx);
            r = prl_file_pwrite(&s->file, buf, (size_t)cs, host);
        }
        if (r == 0) {
            s->file_size = PRL_MAX(s->file_size, host + cs);
            r = used_set(s, idx, true);
        }
        if (r == 0) {
            uint64_t *nf = realloc(fresh, (n_fresh + 1) * sizeof(*nf));
            if (!nf) {
                r = prl_error(ENOMEM, "out of memory");
            } else {
                fresh = nf;
                fresh[n_fresh++] = host;
            }
        }
    }
    free(buf);
    if (r == 0) {
        r = prl_file_sync(&s->file);
    }
    if (r == 0) {
        s->hdr.ext_off = empty ? 0 : host / PARALLELS_SECTOR;
        r = write_header(s);
    }
    if (r == 0) {
        r = prl_file_sync(&s->file);
    }
    if (r < 0) {
        /* The header still names the old clusters; give back ours. */
        for (size_t i = 0; i < n_fresh; i++) {
            used_set(s, host_index(s, fresh[i]), false);
        }
        free(fresh);
        return r;
    }
    for (size_t i = 0; i < s->n_meta; i++) {
        used_set(s, host_index(s, s->meta[i]), false);
        int pr = prl_file_punch(&s->file, s->meta[i], cs);
        (void)pr; /* freed space is zeroed again on reuse */
    }
    free(s->meta);
    s->meta = fresh;
    s->n_meta = n_fresh;
    s->ext_dirty = false;
    bs->bitmaps_changed = false;
    return s->reuse_ok ? keep_data_last_locked(s) : 0;
}

static void parallels_free_state(struct parallels_state *s)
{
    free(s->meta);
    free(s->transit);
    free(s->bat);
    free(s->used);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

/* A read-write open of an image that was not closed cleanly repairs it
 * first, as `prl-img check -r all` would, and logs what it did. */
static int repair_if_dirty(const char *path)
{
    uint8_t buf[PARALLELS_HEADER_SIZE];
    struct parallels_header h;
    struct prl_check_result res;
    struct prl_file f;
    int r;

    r = prl_file_open(&f, path, false, false);
    if (r < 0) {
        return r;
    }
    r = prl_file_pread(&f, buf, sizeof(buf), 0);
    prl_file_close(&f);
    if (r < 0) {
        return r;
    }
    parallels_header_decode(buf, &h);
    if (!h.magic_ok || h.in_use != PARALLELS_IN_USE_DIRTY) {
        return 0;
    }
    memset(&res, 0, sizeof(res));
    prl_warn("'%s' was not closed cleanly; repairing it as 'prl-img check "
             "-r all' would",
             path);
    r = parallels_check(path, PRL_CHECK_FIX_ALL, &res);
    for (size_t i = 0; i < res.n_findings; i++) {
        struct prl_finding *fd = &res.findings[i];
        prl_log(fd->cls == PRL_FINDING_CORRUPTION && !fd->fixed
                    ? PRL_LOG_WARNING
                    : PRL_LOG_INFO,
                "'%s': %s%s%s", path, fd->message, fd->action ? ": " : "",
                fd->action ? fd->action : "");
    }
    if (r == 0 && res.corruptions > 0) {
        r = prl_error(EINVAL,
                      "'%s': %d corruption(s) remain after repair; "
                      "run 'prl-img check' for details",
                      path, res.corruptions);
    }
    if (r == 0) {
        r = 1;
    }
    for (size_t i = 0; i < res.n_findings; i++) {
        free(res.findings[i].message);
        free(res.findings[i].action);
    }
    free(res.findings);
    return r;
}

static int parallels_open(struct prl_block *bs)
{
    uint8_t buf[PARALLELS_HEADER_SIZE];
    struct parallels_state *s;
    char why[256];
    bool rw = bs->open_flags & PRL_OPEN_RDWR;
    int r;

    bool repaired = false;
    if (rw && !(bs->open_flags & PRL_OPEN_UNSAFE)) {
        r = repair_if_dirty(bs->filename);
        if (r < 0) {
            return r;
        }
        repaired = r == 1;
    }
    s = prl_calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    pthread_rwlock_init(&s->lock, NULL);
    s->rw = rw;
    s->reuse_ok = true;
    s->validated = !(bs->open_flags & PRL_OPEN_UNSAFE);
    r = prl_file_open(&s->file, bs->filename, rw, false);
    if (r < 0) {
        pthread_rwlock_destroy(&s->lock);
        free(s);
        return r;
    }
    s->file.no_sync = bs->open_flags & PRL_OPEN_NO_FLUSH;
    r = prl_file_size(&s->file, &s->file_size);
    if (r < 0) {
        goto fail;
    }
    if (s->file_size < PARALLELS_HEADER_SIZE) {
        r = prl_error(EINVAL,
                      "'%s': file of %" PRIu64 " bytes is too short "
                      "for a Parallels header (64 bytes)",
                      bs->filename, s->file_size);
        goto fail;
    }
    r = prl_file_pread(&s->file, buf, sizeof(buf), 0);
    if (r < 0) {
        goto fail;
    }
    parallels_header_decode(buf, &s->hdr);
    if (!s->hdr.magic_ok) {
        r = prl_error(EINVAL,
                      "'%s' is not a Parallels image: its magic is "
                      "neither \"" PARALLELS_MAGIC_LEGACY
                      "\" nor \"" PARALLELS_MAGIC_EXT "\"",
                      bs->filename);
        goto fail;
    }
    r = parallels_layout(&s->hdr, s->file_size, &s->lay, why, sizeof(why));
    if (r < 0) {
        r = prl_error(EINVAL,
                      "'%s': invalid Parallels image: %s; run "
                      "'prl-img check' for details",
                      bs->filename, why);
        goto fail;
    }
    r = load_bat(s, bs->filename);
    if (r < 0) {
        goto fail;
    }
    if (s->hdr.in_use == PARALLELS_IN_USE_DIRTY) {
        s->found_dirty = true;
        prl_warn("'%s' was not closed cleanly (in_use = 0x%08" PRIx32 "); "
                 "run 'prl-img check' on it",
                 bs->filename, s->hdr.in_use);
    }
    if (rw && !s->validated) {
        r = prl_error(EINVAL,
                      "'%s': an unvalidated image cannot be opened "
                      "read-write",
                      bs->filename);
        goto fail;
    }
    bs->size = s->lay.virtual_size;
    if (s->hdr.ext_off && s->validated) {
        /* Bitmaps are trusted only after a clean close; a repair of an
         * unclean image leaves them inconsistent, and says so on disk. */
        bool trusted = s->hdr.in_use == PARALLELS_IN_USE_CLEAN && !repaired;
        r = load_ext(bs, s, trusted);
        if (r < 0) {
            goto fail;
        }
        if (!trusted && bs->n_bitmaps) {
            s->ext_dirty = rw;
        }
    }
    bs->opaque = s;
    bs->caps = PRL_CAP_PARALLEL | PRL_CAP_ZERO | PRL_CAP_TRIM |
               PRL_CAP_FAST_ZERO | (rw ? PRL_CAP_WRITE : 0);
    bs->request_alignment = 1;
    bs->preferred_size =
        (uint32_t)PRL_MIN(s->lay.cluster_size, (uint64_t)1 << 30);
    return 0;

fail:
    prl_file_close(&s->file);
    parallels_free_state(s);
    return r;
}

/* Bitmaps or kept features need writing back on close. */
static bool need_store(struct prl_block *bs, struct parallels_state *s)
{
    if (!s->rw || !s->validated) {
        return false;
    }
    if (!atomic_load(&s->marked_dirty) && !bs->bitmaps_changed &&
        !s->ext_dirty) {
        return false;
    }
    return bs->n_bitmaps || s->hdr.ext_off || s->transit_len;
}

static int parallels_close(struct prl_block *bs)
{
    struct parallels_state *s = bs->opaque;
    int r = 0, r2, dropped = 0;

    if (need_store(bs, s)) {
        r = mark_dirty(s);
        if (r == 0) {
            pthread_rwlock_wrlock(&s->lock);
            dropped = drop_unfit_bitmaps_locked(bs, s);
            r = store_ext_locked(bs, s);
            pthread_rwlock_unlock(&s->lock);
        }
    }
    if (r == 0 && s->rw && atomic_load(&s->marked_dirty)) {
        /* Give back a tail of freed clusters, and blocks reserved past
         * the end (a truncate to the same size frees those). */
        uint64_t end = s->file_size;
        if (s->reuse_ok) {
            end = PRL_MIN(end,
                          PRL_MAX(index_host(s, s->data_end), s->lay.data_off));
        }
        if (end < s->file_size || s->reserved_end > s->file_size) {
            r = prl_file_truncate(&s->file, end);
            if (r == 0) {
                s->file_size = end;
                s->reserved_end = 0;
            }
        }
        if (r == 0) {
            r = prl_file_sync(&s->file);
        }
        if (r == 0) {
            s->hdr.in_use = PARALLELS_IN_USE_CLEAN;
            r = write_header(s);
        }
        if (r == 0) {
            r = prl_file_sync(&s->file);
        }
    }
    r2 = prl_file_close(&s->file);
    parallels_free_state(s);
    if (r == 0 && r2 == 0) {
        r = dropped; /* closed cleanly, but without some bitmaps */
    }
    return r < 0 ? r : r2;
}

/* Zero [old_size, min(new_size, end of old_size's cluster)) when that
 * cluster is allocated.  Lock held exclusive. */
static int zero_tail_locked(struct parallels_state *s, uint64_t old_size,
                            uint64_t new_size)
{
    uint64_t cs = s->lay.cluster_size;
    uint64_t in = old_size % cs, host;

    if (in == 0 || (host = cluster_host(s, old_size / cs)) == 0) {
        return 0;
    }
    return prl_file_zero(&s->file, host + in,
                         PRL_MIN(cs - in, new_size - old_size), false, false);
}

/* Shrinking: refuse when data would be dropped unless |shrink|. */
static int shrink_locked(struct prl_block *bs, struct parallels_state *s,
                         uint64_t new_size, uint64_t new_bat, bool shrink)
{
    uint64_t cs = s->lay.cluster_size;
    uint64_t tail_in = new_size % cs;
    int r;

    if (!shrink) {
        for (uint64_t c = new_bat; c < s->lay.bat_entries; c++) {
            if (cluster_host(s, c)) {
                return prl_error(ENOTEMPTY,
                                 "shrinking '%s' to %" PRIu64
                                 " bytes would drop the allocated cluster at"
                                 " guest offset %" PRIu64 "; use --shrink",
                                 bs->filename, new_size, c * cs);
            }
        }
        if (tail_in && new_bat && cluster_host(s, new_bat - 1)) {
            uint64_t host = cluster_host(s, new_bat - 1);
            uint64_t len = cs - tail_in;
            uint8_t *buf = prl_malloc((size_t)len);
            if (!buf) {
                return -ENOMEM;
            }
            r = prl_file_pread(&s->file, buf, (size_t)len, host + tail_in);
            bool zero = r == 0 && prl_is_zero(buf, (size_t)len);
            free(buf);
            if (r < 0) {
                return r;
            }
            if (!zero) {
                return prl_error(
                    ENOTEMPTY,
                    "shrinking '%s' to %" PRIu64
                    " bytes would drop data at guest offset %" PRIu64
                    "; use --shrink",
                    bs->filename, new_size, new_size);
            }
        }
    }
    r = clear_empty_locked(s);
    for (uint64_t c = new_bat; r == 0 && c < s->lay.bat_entries; c++) {
        if (s->bat[c]) {
            r = free_cluster_locked(s, c);
        }
    }
    if (r == 0 && tail_in && new_bat && cluster_host(s, new_bat - 1)) {
        /* Bytes past the new end must not come back on a later grow. */
        r = prl_file_zero(&s->file, cluster_host(s, new_bat - 1) + tail_in,
                          cs - tail_in, false, false);
    }
    if (r < 0) {
        return r;
    }
    r = prl_file_sync(&s->file);
    if (r < 0) {
        return r;
    }
    /* The BAT shrinks; its old tail is zero and becomes padding. */
    s->hdr.bat_entries = (uint32_t)new_bat;
    s->hdr.nb_sectors = new_size / PARALLELS_SECTOR;
    s->hdr.cylinders = parallels_cylinders(s->hdr.nb_sectors);
    if (s->hdr.data_off == 0) {
        s->hdr.data_off = (uint32_t)(s->lay.data_off / PARALLELS_SECTOR);
    }
    r = write_header(s);
    if (r == 0) {
        r = prl_file_sync(&s->file);
    }
    if (r == 0) {
        s->lay.bat_entries = new_bat;
        s->lay.bat_end = PARALLELS_HEADER_SIZE + new_bat * 4;
        s->lay.virtual_size = new_size;
        bs->size = new_size;
    }
    return r;
}

/* Move the used clusters in the first |k| data-area indices out of the
 * way of a growing BAT, then zero that space. */
static int make_room_locked(struct parallels_state *s, uint64_t k)
{
    uint64_t cs = s->lay.cluster_size;
    uint8_t *buf = NULL;
    uint64_t *owner;
    int r = 0;

    if (k == 0) {
        return 0;
    }
    if (!s->reuse_ok) {
        return prl_error(ENOTSUP,
                         "resize: growing the BAT of '%s' needs "
                         "its first data clusters moved, and its Format "
                         "Extension may own clusters prl does not track",
                         s->file.path);
    }
    /* owner[i]: the BAT entry pointing at data-area index i < k. */
    owner = prl_malloc((size_t)k * sizeof(*owner));
    if (!owner) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < k; i++) {
        owner[i] = UINT64_MAX;
    }
    for (uint64_t d = 0; d < s->lay.bat_entries; d++) {
        if (s->bat[d]) {
            uint64_t i =
                host_index(s, parallels_entry_offset(&s->lay, s->bat[d]));
            if (i < k) {
                owner[i] = d;
            }
        }
    }
    struct {
        uint64_t i, idx, c;
        bool is_ext;
    } *moved = prl_calloc((size_t)k, sizeof(*moved));
    size_t n_moved = 0;
    if (!moved) {
        free(owner);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < k && r == 0; i++) {
        uint64_t from = index_host(s, i), to, idx;
        uint64_t c = owner[i];
        bool is_ext =
            s->hdr.ext_off && s->hdr.ext_off * PARALLELS_SECTOR == from;

        if (!used_get(s, i)) {
            continue;
        }
        if (c == UINT64_MAX && !is_ext) {
            continue;
        }
        if (!buf) {
            buf = prl_malloc((size_t)cs);
            if (!buf) {
                r = -ENOMEM;
                break;
            }
        }
        /* Append only: the space below k is about to become the BAT. */
        idx = PRL_MAX(s->data_end, k);
        idx =
            PRL_MAX(idx, prl_div_round_up(s->file_size - s->lay.data_off, cs));
        to = index_host(s, idx);
        if (to > s->lay.max_offset) {
            r = prl_error(ENOSPC, "resize: no room to move a cluster");
            break;
        }
        r = prl_file_pread(&s->file, buf, (size_t)cs, from);
        if (r == 0) {
            r = prl_file_pwrite(&s->file, buf, (size_t)cs, to);
        }
        if (r < 0) {
            break;
        }
        s->file_size = PRL_MAX(s->file_size, to + cs);
        /* Reserve the target so the next move goes past it; the entry
         * switches in the second pass, after one sync for all copies. */
        r = used_set(s, idx, true);
        moved[n_moved].i = i;
        moved[n_moved].idx = idx;
        moved[n_moved].c = c;
        moved[n_moved].is_ext = is_ext;
        n_moved++;
    }
    if (r == 0 && n_moved) {
        r = prl_file_sync(&s->file);
    }
    for (size_t m = 0; r == 0 && m < n_moved; m++) {
        uint64_t to = index_host(s, moved[m].idx);
        if (moved[m].is_ext) {
            s->hdr.ext_off = to / PARALLELS_SECTOR;
            r = write_header(s);
        } else {
            s->bat[moved[m].c] = (uint32_t)(to / s->lay.entry_unit);
            r = write_bat_entry(s, moved[m].c);
        }
        if (r == 0) {
            r = used_set(s, moved[m].i, false);
        }
    }
    if (r == 0 && n_moved) {
        r = prl_file_sync(&s->file);
    }
    free(moved);
    free(buf);
    free(owner);
    return r;
}

static int grow_locked(struct prl_block *bs, struct parallels_state *s,
                       uint64_t new_size, uint64_t new_bat)
{
    uint64_t cs = s->lay.cluster_size;
    uint64_t new_bat_end = PARALLELS_HEADER_SIZE + new_bat * 4;
    uint64_t k = 0, new_data_off;
    uint32_t *nb;
    int r;

    if (new_bat_end > s->lay.data_off) {
        k = prl_div_round_up(new_bat_end - s->lay.data_off, cs);
    }
    if (k && s->n_meta && s->reuse_ok) {
        /* Rewrite the extension and bitmaps past the space the BAT is
         * about to take, so only BAT clusters need moving. */
        s->alloc_floor = k;
        r = store_ext_locked(bs, s);
        s->alloc_floor = 0;
        if (r < 0) {
            return r;
        }
    }
    new_data_off = s->lay.data_off + k * cs;
    if (new_data_off / PARALLELS_SECTOR > UINT32_MAX) {
        return prl_error(EFBIG,
                         "resize: the data offset of '%s' would "
                         "overflow",
                         bs->filename);
    }
    nb = realloc(s->bat, (size_t)(new_bat * 4));
    if (!nb) {
        return prl_error(ENOMEM, "out of memory growing the BAT");
    }
    s->bat = nb;
    memset(s->bat + s->lay.bat_entries, 0,
           (size_t)((new_bat - s->lay.bat_entries) * 4));

    r = make_room_locked(s, k);
    if (r < 0) {
        return r;
    }
    /* The new BAT entries and the moved-out space must read as zero
     * before the header points at them. */
    if (new_data_off > s->lay.bat_end) {
        /* Only what lies inside the file needs clearing (a punch zeroes
         * partial blocks); an extension past it is a sparse hole. */
        uint64_t zend = PRL_MIN(new_data_off, s->file_size);
        if (zend > s->lay.bat_end) {
            r = prl_file_punch(&s->file, s->lay.bat_end, zend - s->lay.bat_end);
            if (r == -ENOTSUP) {
                r = prl_file_zero(&s->file, s->lay.bat_end,
                                  zend - s->lay.bat_end, false, false);
            }
            if (r < 0) {
                return r;
            }
        }
        if (s->file_size < new_data_off) {
            r = prl_file_truncate(&s->file, new_data_off);
            if (r < 0) {
                return r;
            }
            s->file_size = new_data_off;
        }
        r = prl_file_sync(&s->file);
        if (r < 0) {
            return r;
        }
    }
    s->hdr.bat_entries = (uint32_t)new_bat;
    s->hdr.nb_sectors = new_size / PARALLELS_SECTOR;
    s->hdr.cylinders = parallels_cylinders(s->hdr.nb_sectors);
    s->hdr.data_off = (uint32_t)(new_data_off / PARALLELS_SECTOR);
    r = write_header(s);
    if (r == 0) {
        r = prl_file_sync(&s->file);
    }
    if (r < 0) {
        return r;
    }
    /* Re-index the used map from the new data offset. */
    uint8_t *old = s->used;
    uint64_t old_cap = s->used_cap;
    s->used = NULL;
    s->used_cap = 0;
    s->data_end = 0;
    s->free_hint = 0;
    for (uint64_t i = k; i < old_cap; i++) {
        if ((old[i / 8] >> (i % 8)) & 1) {
            r = used_set(s, i - k, true);
            if (r < 0) {
                break;
            }
        }
    }
    free(old);
    s->lay.bat_entries = new_bat;
    s->lay.bat_end = new_bat_end;
    s->lay.data_off = new_data_off;
    s->lay.virtual_size = new_size;
    bs->size = new_size;
    return r;
}

static int parallels_resize(struct prl_block *bs, uint64_t new_size,
                            bool shrink)
{
    struct parallels_state *s = bs->opaque;
    uint64_t sectors, new_bat;
    int r;

    new_size = prl_round_up(new_size, PARALLELS_SECTOR);
    sectors = new_size / PARALLELS_SECTOR;
    if (!s->hdr.ext && sectors > UINT32_MAX) {
        return prl_error(EFBIG,
                         "resize: \"" PARALLELS_MAGIC_LEGACY "\" "
                         "images hold at most %" PRIu64 " bytes",
                         (uint64_t)UINT32_MAX * PARALLELS_SECTOR);
    }
    new_bat = prl_div_round_up(sectors, s->hdr.tracks);
    if (new_bat > UINT32_MAX) {
        return prl_error(EFBIG,
                         "resize: %" PRIu64 " bytes need %" PRIu64
                         " BAT entries, more than 2^32-1",
                         new_size, new_bat);
    }
    if (new_size > bs->size) {
        /* Larger bitmaps must still fit in the extension cluster, or the
         * close would have to drop one. */
        pthread_rwlock_rdlock(&bs->bitmap_lock);
        uint64_t need = ext_need_locked(bs, s, new_size);
        pthread_rwlock_unlock(&bs->bitmap_lock);
        if (need > s->lay.cluster_size) {
            return prl_error(ENOSPC,
                             "resize: at %" PRIu64 " bytes the dirty bitmaps "
                             "need %" PRIu64 " bytes of the Format Extension "
                             "cluster, which holds %" PRIu64 "; remove a "
                             "bitmap first",
                             new_size, need, s->lay.cluster_size);
        }
    }
    r = mark_dirty(s);
    if (r < 0) {
        return r;
    }
    pthread_rwlock_wrlock(&s->lock);
    if (new_size < bs->size) {
        r = shrink_locked(bs, s, new_size, new_bat, shrink);
    } else {
        /* Bytes between the old end and the end of its cluster become
         * guest-visible: make sure they read as zero. */
        r = zero_tail_locked(s, bs->size, new_size);
        /* The BAT may hold more entries than the old size needed, and
         * they may point at clusters: those must not become visible. */
        uint64_t old_need = prl_div_round_up(bs->size, s->lay.cluster_size);
        for (uint64_t c = old_need;
             r == 0 && c < PRL_MIN(s->lay.bat_entries, new_bat); c++) {
            if (s->bat[c]) {
                r = free_cluster_locked(s, c);
            }
        }
        if (r == 0 && new_bat <= s->lay.bat_entries) {
            s->hdr.nb_sectors = sectors;
            s->hdr.cylinders = parallels_cylinders(sectors);
            r = write_header(s);
            if (r == 0) {
                r = prl_file_sync(&s->file);
            }
            if (r == 0) {
                s->lay.virtual_size = new_size;
                bs->size = new_size;
            }
        } else if (r == 0) {
            r = grow_locked(bs, s, new_size, new_bat);
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return r;
}

static int parallels_probe(const uint8_t *buf, size_t len)
{
    if (len < PARALLELS_MAGIC_LEN) {
        return 0;
    }
    if (memcmp(buf, PARALLELS_MAGIC_EXT, PARALLELS_MAGIC_LEN) == 0 ||
        memcmp(buf, PARALLELS_MAGIC_LEGACY, PARALLELS_MAGIC_LEN) == 0) {
        return 100;
    }
    return 0;
}

static int write_full_zeroes(struct prl_file *f, uint64_t off, uint64_t len)
{
    size_t chunk = 1 << 20;
    uint8_t *z = prl_calloc(1, chunk);
    int r = 0;

    if (!z) {
        return -ENOMEM;
    }
    while (len > 0 && r == 0) {
        size_t n = (size_t)PRL_MIN(len, (uint64_t)chunk);
        r = prl_file_pwrite(f, z, n, off);
        off += n;
        len -= n;
    }
    free(z);
    return r;
}

static int parallels_create(const char *path, uint64_t size,
                            struct prl_opts *opts)
{
    uint64_t cs = 1 << 20, sectors, bat, data_off;
    const char *sub = prl_opts_get(opts, "subformat");
    const char *prealloc = prl_opts_get(opts, "preallocation");
    struct parallels_header h;
    struct prl_file f;
    uint8_t hbuf[PARALLELS_HEADER_SIZE];
    bool ext = true;
    int mode = 0; /* 0 off, 1 metadata, 2 falloc, 3 full */
    int r;

    r = prl_opts_get_size(opts, "cluster_size", &cs);
    if (r < 0) {
        return r;
    }
    r = prl_opts_check_unused(opts, "parallels");
    if (r < 0) {
        return r;
    }
    if (cs == 0 || cs % PARALLELS_SECTOR != 0 ||
        cs / PARALLELS_SECTOR > PARALLELS_MAX_TRACKS) {
        return prl_error(EINVAL,
                         "parallels: cluster_size %" PRIu64 " must "
                         "be a non-zero multiple of 512 of at most %u bytes",
                         cs, PARALLELS_MAX_TRACKS * PARALLELS_SECTOR);
    }
    if (sub) {
        if (strcmp(sub, "ext") == 0 || strcmp(sub, PARALLELS_MAGIC_EXT) == 0) {
            ext = true;
        } else if (strcmp(sub, "legacy") == 0 ||
                   strcmp(sub, PARALLELS_MAGIC_LEGACY) == 0) {
            ext = false;
        } else {
            return prl_error(EINVAL,
                             "parallels: invalid subformat '%s' "
                             "(ext or legacy)",
                             sub);
        }
    }
    if (prealloc) {
        static const char *const names[] = {"off", "metadata", "falloc",
                                            "full"};
        mode = -1;
        for (int i = 0; i < 4; i++) {
            if (strcmp(prealloc, names[i]) == 0) {
                mode = i;
            }
        }
        if (mode < 0) {
            return prl_error(EINVAL,
                             "parallels: invalid preallocation '%s' "
                             "(off, metadata, falloc or full)",
                             prealloc);
        }
    }
    if (size > UINT64_MAX - PARALLELS_SECTOR) {
        return prl_error(EFBIG, "parallels: size %" PRIu64 " is too large",
                         size);
    }
    sectors = prl_div_round_up(size, PARALLELS_SECTOR);
    if (!ext && sectors > UINT32_MAX) {
        return prl_error(EFBIG,
                         "parallels: \"" PARALLELS_MAGIC_LEGACY "\" "
                         "images hold at most %" PRIu64 " bytes; use "
                         "subformat=ext",
                         (uint64_t)UINT32_MAX * PARALLELS_SECTOR);
    }
    bat = prl_div_round_up(sectors, cs / PARALLELS_SECTOR);
    if (bat > UINT32_MAX) {
        return prl_error(EFBIG,
                         "parallels: size %" PRIu64 " needs %" PRIu64
                         " clusters of %" PRIu64 " bytes, more than a BAT "
                         "holds (2^32-1); use a larger cluster_size",
                         size, bat, cs);
    }
    data_off = prl_round_up(PARALLELS_HEADER_SIZE + bat * 4, cs);
    if (data_off / PARALLELS_SECTOR > UINT32_MAX ||
        (mode > 0 &&
         (data_off + bat * cs) / (ext ? cs : PARALLELS_SECTOR) > UINT32_MAX)) {
        return prl_error(EFBIG,
                         "parallels: size %" PRIu64 " is too large "
                         "for cluster_size %" PRIu64,
                         size, cs);
    }

    memset(&h, 0, sizeof(h));
    h.ext = ext;
    h.version = PARALLELS_VERSION;
    h.heads = 16;
    h.cylinders = parallels_cylinders(sectors);
    h.tracks = (uint32_t)(cs / PARALLELS_SECTOR);
    h.bat_entries = (uint32_t)bat;
    h.nb_sectors = sectors;
    h.in_use = PARALLELS_IN_USE_CLEAN;
    h.data_off = (uint32_t)(data_off / PARALLELS_SECTOR);
    parallels_header_encode(&h, hbuf);

    r = prl_file_open(&f, path, true, true);
    if (r < 0) {
        return r;
    }
    r = prl_file_pwrite(&f, hbuf, sizeof(hbuf), 0);
    if (r == 0 && mode > 0) {
        uint32_t *b = prl_malloc((size_t)PRL_MAX(bat, 1) * 4);
        if (!b) {
            r = -ENOMEM;
        } else {
            for (uint64_t c = 0; c < bat; c++) {
                uint64_t off = data_off + c * cs;
                b[c] = htole32((uint32_t)(off / (ext ? cs : PARALLELS_SECTOR)));
            }
            r = prl_file_pwrite(&f, b, (size_t)bat * 4, PARALLELS_HEADER_SIZE);
            free(b);
        }
    }
    if (r == 0) {
        r = prl_file_truncate(&f, mode > 0 ? data_off + bat * cs : data_off);
    }
    if (r == 0 && mode == 2 && bat) {
        r = prl_file_allocate(&f, data_off, bat * cs);
    }
    if (r == 0 && mode == 3 && bat) {
        r = write_full_zeroes(&f, data_off, bat * cs);
    }
    if (r == 0) {
        r = prl_file_sync(&f);
    }
    int r2 = prl_file_close(&f);
    return r < 0 ? r : r2;
}

const struct prl_driver prl_driver_parallels = {
    .name = "parallels",
    .persistent_bitmaps = true,
    .probe = parallels_probe,
    .open = parallels_open,
    .close = parallels_close,
    .create = parallels_create,
    .pread = parallels_pread,
    .pwrite = parallels_pwrite,
    .zero = parallels_zero,
    .trim = parallels_trim,
    .flush = parallels_flush,
    .block_status = parallels_block_status,
    .data_fd = parallels_data_fd,
    .info = parallels_info,
    .resize = parallels_resize,
    .check = parallels_check,
};
