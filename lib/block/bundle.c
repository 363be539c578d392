/* SPDX-License-Identifier: MIT */
/* The bundle driver: a Parallels disk (DiskDescriptor.xml and a chain of
 * images) as one block device, with copy-on-write into the top image, and
 * the crash-safe snapshot operations of prl/bundle.h. */
#include "block/bundle-xml.h"
#include "block/driver.h"
#include "block/parallels-format.h"
#include "common/util.h"
#include "io/file.h"
#include "prl/bundle.h"
#include "prl/error.h"
#include "prl/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Names of files a half-done operation may leave behind, one a line,
 * beside the descriptor.  Whatever it lists and the descriptor does not
 * reference is removed by the next read-write open. */
#define BUNDLE_JOURNAL BUNDLE_DESC_NAME ".prl-journal"
#define BUNDLE_JOURNAL_MAX 65536
/* Largest buffer for copying between layers, bytes. */
#define BUNDLE_COPY_CHUNK (4u << 20)

struct bundle_layer {
    struct prl_block *bs;
    uint64_t cs; /* cluster size in bytes; 0 for a Plain (raw) image */
};

/*
 * A chain of open images, l[0] the one written to, l[n-1] the root.
 *
 * Locking: |lock| orders writes into l[0] against copy-on-write.  Writes
 * that need no copy (whole clusters, clusters l[0] already holds, ranges
 * no lower layer holds) take it shared; a copy-on-write of a partial
 * cluster takes it exclusive, so no other write lands in that cluster
 * between reading the lower layers and writing the merged cluster.  Reads
 * take no lock: during a copy-on-write the bytes outside the new write
 * read the same from l[0] or from below.  Lower layers are read-only.
 */
struct bundle_chain {
    struct bundle_layer *l;
    size_t n;
    uint64_t size; /* guest bytes */
    pthread_rwlock_t lock;
};

struct bundle_state {
    struct bundle_chain ch;
    int lock_fd;        /* flock on the bundle directory */
    uint64_t blocksize; /* bytes */
};

/* The directory and descriptor of a bundle named by either. */
static int bundle_paths(const char *path, char **dir, char **desc)
{
    struct stat st;
    size_t n = strlen(path), b;
    int r;

    *dir = NULL;
    *desc = NULL;
    while (n > 1 && path[n - 1] == '/') {
        n--;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        r = asprintf(dir, "%.*s", (int)n, path);
        if (r >= 0) {
            r = asprintf(desc, "%s/%s", *dir, BUNDLE_DESC_NAME);
            if (r < 0) {
                *desc = NULL;
            }
        } else {
            *dir = NULL;
        }
    } else {
        b = n;
        while (b > 0 && path[b - 1] != '/') {
            b--;
        }
        /* b is 0 (no slash), 1 (under "/") or just past the slash. */
        r = b == 0 ? asprintf(dir, ".")
                   : asprintf(dir, "%.*s", (int)(b == 1 ? 1 : b - 1), path);
        if (r >= 0) {
            r = asprintf(desc, "%.*s", (int)n, path);
            if (r < 0) {
                *desc = NULL;
            }
        } else {
            *dir = NULL;
        }
    }
    if (r < 0) {
        free(*dir);
        *dir = NULL;
        return prl_error(ENOMEM, "out of memory");
    }
    return 0;
}

/* flock the bundle directory: exclusive for changes, shared for reads, so
 * no one commits a bundle another process is serving. */
static int bundle_lock(const char *dir, bool exclusive, int *fd_out)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    *fd_out = -1;
    if (fd < 0) {
        return prl_error_errno(errno,
                               "could not open bundle directory "
                               "'%s'",
                               dir);
    }
    if (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK) {
            return prl_error(EBUSY,
                             "bundle '%s' is in use by another "
                             "process",
                             dir);
        }
        return prl_error_errno(e, "lock bundle directory '%s'", dir);
    }
    *fd_out = fd;
    return 0;
}

static void bundle_unlock(int fd)
{
    if (fd >= 0) {
        close(fd);
    }
}

/* The path to open for image |file|.  Unless |external|, it must resolve
 * (symlinks included) to a place inside |dir|, and the resolved path is
 * what gets opened, so the check and the open see the same file. */
static int resolve_file(const char *dir, const char *file, bool external,
                        char **out)
{
    char *joined = NULL, *real = NULL, *rdir = NULL;
    size_t k;
    int r = 0;

    *out = NULL;
    if (file[0] == '/') {
        if (!external) {
            return prl_error(EPERM,
                             "image file '%s' is an absolute path; "
                             "use --allow-external-files to open it",
                             file);
        }
        *out = strdup(file);
        return *out ? 0 : prl_error(ENOMEM, "out of memory");
    }
    if (asprintf(&joined, "%s/%s", dir, file) < 0) {
        return prl_error(ENOMEM, "out of memory");
    }
    if (external) {
        *out = joined;
        return 0;
    }
    real = realpath(joined, NULL);
    if (!real) {
        r = prl_error_errno(errno, "image file '%s' of bundle '%s'", file, dir);
        goto out;
    }
    rdir = realpath(dir, NULL);
    if (!rdir) {
        r = prl_error_errno(errno, "bundle directory '%s'", dir);
        goto out;
    }
    k = strlen(rdir);
    if (strncmp(real, rdir, k) != 0 ||
        (real[k] != '/' && !(k == 1 && rdir[0] == '/'))) {
        r = prl_error(EPERM,
                      "image file '%s' resolves to '%s', outside "
                      "the bundle directory '%s'; use "
                      "--allow-external-files to open it",
                      file, real, rdir);
        goto out;
    }
    *out = real;
    real = NULL;
out:
    free(joined);
    free(real);
    free(rdir);
    return r;
}

/* True when |path| is a Parallels image whose in_use says it was not
 * closed cleanly. */
static bool layer_is_dirty(const char *path)
{
    uint8_t buf[PARALLELS_HEADER_SIZE];
    struct parallels_header h;
    struct prl_file f;
    bool dirty = false;

    if (prl_file_open(&f, path, false, false) < 0) {
        prl_error_clear();
        return false;
    }
    if (prl_file_pread(&f, buf, sizeof(buf), 0) == 0) {
        parallels_header_decode(buf, &h);
        dirty = h.magic_ok && h.in_use == PARALLELS_IN_USE_DIRTY;
    }
    prl_file_close(&f);
    return dirty;
}

/* Open the image of shot |si|.  |repair|: an image left dirty by a crash
 * is first opened read-write once, which repairs it.  |extra|: open flags
 * (PRL_OPEN_NO_FLUSH) for a read-write layer. */
static int layer_open(const struct bundle_desc *d, const char *dir, size_t si,
                      bool rw, bool repair, bool external, unsigned extra,
                      struct bundle_layer *L)
{
    const struct bundle_image *im = &d->images[d->shots[si].image];
    const char *fmt = im->plain ? "raw" : "parallels";
    struct prl_image_info info;
    char *path;
    int r;

    memset(L, 0, sizeof(*L));
    r = resolve_file(dir, im->file, external, &path);
    if (r < 0) {
        return r;
    }
    if (repair && !rw && !im->plain && layer_is_dirty(path)) {
        struct prl_block *tmp;
        r = prl_block_open(path, fmt, PRL_OPEN_RDWR, &tmp);
        if (r == 0) {
            r = prl_block_close(tmp);
        }
        if (r < 0) {
            r = prl_error_context(r, "repair image %s of bundle '%s'", im->guid,
                                  dir);
            free(path);
            return r;
        }
    }
    r = prl_block_open(path, fmt, rw ? PRL_OPEN_RDWR | extra : 0, &L->bs);
    if (r < 0) {
        r = prl_error_context(r, "image %s of bundle '%s'", im->guid, dir);
        free(path);
        return r;
    }
    if (prl_block_size(L->bs) != d->disk_sectors * 512) {
        r = prl_error(EINVAL,
                      "image %s ('%s') of bundle '%s' is %" PRIu64
                      " bytes; <Disk_size> says %" PRIu64 " (%" PRIu64
                      " sectors)",
                      im->guid, path, dir, prl_block_size(L->bs),
                      d->disk_sectors * 512, d->disk_sectors);
        goto fail;
    }
    if (!im->plain) {
        r = prl_block_info(L->bs, &info);
        if (r < 0) {
            goto fail;
        }
        if (info.cluster_size != d->blocksize * 512) {
            r = prl_error(EINVAL,
                          "image %s ('%s') of bundle '%s' has "
                          "clusters of %" PRIu64 " sectors; <Blocksize> "
                          "says %" PRIu64,
                          im->guid, path, dir, info.cluster_size / 512,
                          d->blocksize);
            goto fail;
        }
        L->cs = info.cluster_size;
    }
    free(path);
    return 0;

fail:
    prl_block_close(L->bs);
    L->bs = NULL;
    free(path);
    return r;
}

static int chain_close(struct bundle_chain *ch)
{
    int r = 0;

    for (size_t i = 0; i < ch->n; i++) {
        int r2 = prl_block_close(ch->l[i].bs);
        if (r == 0) {
            r = r2;
        }
    }
    free(ch->l);
    if (ch->l) {
        pthread_rwlock_destroy(&ch->lock);
    }
    memset(ch, 0, sizeof(*ch));
    return r;
}

/* Open the chain from shot |si| down to the root; the first image
 * read-write when |rw|, every other one read-only. */
static int chain_open(const struct bundle_desc *d, const char *dir, size_t si,
                      bool rw, bool repair, bool external, unsigned extra,
                      struct bundle_chain *ch)
{
    size_t n = 0;
    int r;

    memset(ch, 0, sizeof(*ch));
    for (size_t k = si; k != SIZE_MAX; k = d->shots[k].parent_shot) {
        n++;
    }
    ch->l = prl_calloc(n, sizeof(*ch->l));
    if (!ch->l) {
        return -ENOMEM;
    }
    pthread_rwlock_init(&ch->lock, NULL);
    ch->size = d->disk_sectors * 512;
    for (size_t k = si; k != SIZE_MAX; k = d->shots[k].parent_shot) {
        r = layer_open(d, dir, k, rw && ch->n == 0, repair, external, extra,
                       &ch->l[ch->n]);
        if (r < 0) {
            chain_close(ch);
            return r;
        }
        ch->n++;
    }
    return 0;
}

/* Read through layers i.. of the chain: each range from the first layer
 * that holds it, zeroes where none does. */
static int chain_read(struct bundle_chain *ch, size_t i, void *buf,
                      uint64_t len, uint64_t off)
{
    uint8_t *p = buf;

    while (len > 0) {
        struct prl_extent e = {0};
        uint64_t n = len;
        size_t k;
        int r;

        for (k = i; k < ch->n; k++) {
            r = prl_block_status(ch->l[k].bs, off, n, &e);
            if (r < 0) {
                return r;
            }
            n = e.length;
            if (e.flags & PRL_EXT_ALLOCATED) {
                break;
            }
        }
        if (k == ch->n || !(e.flags & PRL_EXT_DATA)) {
            memset(p, 0, (size_t)n);
        } else {
            r = prl_block_pread(ch->l[k].bs, p, n, off, 0);
            if (r < 0) {
                return r;
            }
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Status through layers i..: depth counts from layer i (1) down. */
static int chain_status(struct bundle_chain *ch, size_t i, uint64_t off,
                        uint64_t len, struct prl_extent *ext)
{
    uint64_t n = len;

    for (size_t k = i; k < ch->n; k++) {
        struct prl_extent e;
        int r = prl_block_status(ch->l[k].bs, off, n, &e);
        if (r < 0) {
            return r;
        }
        n = e.length;
        if (e.flags & PRL_EXT_ALLOCATED) {
            *ext = e;
            ext->depth = (uint32_t)(k - i + 1);
            return 0;
        }
    }
    memset(ext, 0, sizeof(*ext));
    ext->length = n;
    ext->flags = PRL_EXT_ZERO;
    return 0;
}

/* Whether any of layers i.. holds data in [off, off+len). */
static int lower_holds(struct bundle_chain *ch, size_t i, uint64_t off,
                       uint64_t len, bool *any)
{
    *any = false;
    while (len > 0) {
        struct prl_extent e;
        int r = chain_status(ch, i, off, len, &e);
        if (r < 0) {
            return r;
        }
        if (e.depth > 0) {
            *any = true;
            return 0;
        }
        off += e.length;
        len -= e.length;
    }
    return 0;
}

static bool layer_holds(struct bundle_layer *L, uint64_t off, uint64_t len,
                        int *err)
{
    struct prl_extent e;

    *err = prl_block_status(L->bs, off, len, &e);
    return *err == 0 && (e.flags & PRL_EXT_ALLOCATED);
}

/* Write |n| bytes of |p| (zeroes when p is NULL) at |off| inside the
 * cluster [cs0, ce) of layer i, copying the rest of the cluster from the
 * layers below when layer i does not hold it yet.  The caller knows some
 * lower layer holds data in the cluster. */
static int cow_piece(struct bundle_chain *ch, size_t i, const uint8_t *p,
                     uint64_t n, uint64_t off, uint64_t cs0, uint64_t ce,
                     unsigned flags)
{
    struct bundle_layer *L = &ch->l[i];
    uint64_t clen = ce - cs0;
    uint8_t *buf;
    bool whole = off == cs0 && n == clen;
    int r = 0;

    pthread_rwlock_rdlock(&ch->lock);
    if (layer_holds(L, cs0, clen, &r) || r < 0) {
        if (r == 0) {
            r = p ? prl_block_pwrite(L->bs, p, n, off, flags & PRL_REQ_FUA)
                  : prl_block_zero(L->bs, n, off,
                                   (flags & PRL_REQ_FUA) | PRL_REQ_NO_UNMAP);
        }
        pthread_rwlock_unlock(&ch->lock);
        return r;
    }
    if (!p && (flags & PRL_REQ_FAST_ZERO)) {
        pthread_rwlock_unlock(&ch->lock);
        return prl_error(ENOTSUP, "zero: hiding a snapshot's data needs "
                                  "written zeroes, which is not fast");
    }
    if (whole) {
        /* A whole cluster needs no copy; only zeroes must be written
         * rather than freed, so the lower data stays hidden. */
        if (p) {
            r = prl_block_pwrite(L->bs, p, n, off, flags & PRL_REQ_FUA);
        } else if ((buf = prl_calloc(1, (size_t)clen)) != NULL) {
            r = prl_block_pwrite(L->bs, buf, clen, off, flags & PRL_REQ_FUA);
            free(buf);
        } else {
            r = -ENOMEM;
        }
        pthread_rwlock_unlock(&ch->lock);
        return r;
    }
    pthread_rwlock_unlock(&ch->lock);

    buf = prl_malloc((size_t)clen);
    if (!buf) {
        return -ENOMEM;
    }
    pthread_rwlock_wrlock(&ch->lock);
    if (layer_holds(L, cs0, clen, &r) || r < 0) {
        /* Another writer copied it meanwhile. */
        if (r == 0) {
            r = p ? prl_block_pwrite(L->bs, p, n, off, flags & PRL_REQ_FUA)
                  : prl_block_zero(L->bs, n, off,
                                   (flags & PRL_REQ_FUA) | PRL_REQ_NO_UNMAP);
        }
    } else {
        r = chain_read(ch, i + 1, buf, clen, cs0);
        if (r == 0) {
            if (p) {
                memcpy(buf + (off - cs0), p, (size_t)n);
            } else {
                memset(buf + (off - cs0), 0, (size_t)n);
            }
            r = prl_block_pwrite(L->bs, buf, clen, cs0, flags & PRL_REQ_FUA);
        }
    }
    pthread_rwlock_unlock(&ch->lock);
    free(buf);
    return r;
}

/* Write into layer i of the chain, copy-on-write from the layers below. */
static int chain_pwrite(struct bundle_chain *ch, size_t i, const void *buf,
                        uint64_t len, uint64_t off, unsigned flags)
{
    struct bundle_layer *L = &ch->l[i];
    const uint8_t *p = buf;
    uint64_t cs = L->cs;
    int r = 0;

    if (cs == 0 || i + 1 == ch->n) {
        /* A raw image or the root: nothing below to copy from. */
        pthread_rwlock_rdlock(&ch->lock);
        r = prl_block_pwrite(L->bs, buf, len, off, flags);
        pthread_rwlock_unlock(&ch->lock);
        return r;
    }
    while (len > 0 && r == 0) {
        uint64_t cs0 = prl_round_down(off, cs);
        uint64_t ce = PRL_MIN(cs0 + cs, ch->size);
        uint64_t n = PRL_MIN(len, ce - off);
        bool any;

        if (off == cs0 && off + len >= ce) {
            /* Whole clusters: nothing to copy. */
            n = off + len == ch->size ? len : prl_round_down(len, cs);
            pthread_rwlock_rdlock(&ch->lock);
            r = prl_block_pwrite(L->bs, p, n, off, flags);
            pthread_rwlock_unlock(&ch->lock);
        } else {
            r = lower_holds(ch, i + 1, cs0, ce - cs0, &any);
            if (r == 0 && any) {
                r = cow_piece(ch, i, p, n, off, cs0, ce, flags);
            } else if (r == 0) {
                pthread_rwlock_rdlock(&ch->lock);
                r = prl_block_pwrite(L->bs, p, n, off, flags);
                pthread_rwlock_unlock(&ch->lock);
            }
        }
        p += n;
        off += n;
        len -= n;
    }
    return r;
}

/* Zero (or trim) in layer i so that the range reads as zeroes through the
 * chain: where no lower layer holds data the top may free its clusters;
 * elsewhere it must hold explicit zeroes. */
static int chain_zero(struct bundle_chain *ch, size_t i, uint64_t len,
                      uint64_t off, unsigned flags, bool trim)
{
    struct bundle_layer *L = &ch->l[i];
    uint64_t cs = L->cs;
    int r = 0;

    while (len > 0 && r == 0) {
        struct prl_extent e;
        uint64_t n;

        if (cs == 0 || i + 1 == ch->n) {
            e.depth = 0;
            e.length = len;
        } else {
            r = chain_status(ch, i + 1, off, len, &e);
            if (r < 0) {
                return r;
            }
        }
        if (e.depth == 0) {
            n = e.length;
            pthread_rwlock_rdlock(&ch->lock);
            r = trim ? prl_block_trim(L->bs, n, off, flags & PRL_REQ_FUA)
                     : prl_block_zero(L->bs, n, off, flags);
            pthread_rwlock_unlock(&ch->lock);
        } else {
            /* One cluster at a time over the part lower layers hold. */
            uint64_t cs0 = prl_round_down(off, cs);
            uint64_t ce = PRL_MIN(cs0 + cs, ch->size);
            n = PRL_MIN(PRL_MIN(len, ce - off), e.length);
            r = cow_piece(ch, i, NULL, n, off, cs0, ce,
                          trim ? (flags & PRL_REQ_FUA) : flags);
        }
        off += n;
        len -= n;
    }
    return r;
}

/* ---- journal of files to remove ---- */

static int journal_path(const char *dir, char **out)
{
    if (asprintf(out, "%s/%s", dir, BUNDLE_JOURNAL) < 0) {
        *out = NULL;
        return prl_error(ENOMEM, "out of memory");
    }
    return 0;
}

/* Only a plain name inside the bundle directory may be listed. */
static bool journal_name_ok(const char *name)
{
    return name[0] != '\0' && !strchr(name, '/') && strcmp(name, ".") != 0 &&
           strcmp(name, "..") != 0 &&
           strncmp(name, BUNDLE_DESC_NAME, strlen(BUNDLE_DESC_NAME)) != 0;
}

static int journal_write(const char *dir, const char *name)
{
    char *path, *text;
    int r = journal_path(dir, &path);

    if (r < 0) {
        return r;
    }
    if (asprintf(&text, "%s\n", name) < 0) {
        free(path);
        return prl_error(ENOMEM, "out of memory");
    }
    r = bundle_write_atomic(path, text, strlen(text));
    free(text);
    free(path);
    return r;
}

static bool referenced(const struct bundle_desc *d, const char *dir,
                       const char *name)
{
    char *a = NULL, *ra, *rb;
    bool same = false;

    for (size_t i = 0; i < d->n_images; i++) {
        if (strcmp(d->images[i].file, name) == 0) {
            return true;
        }
    }
    if (asprintf(&a, "%s/%s", dir, name) < 0) {
        return true; /* when in doubt, keep the file */
    }
    ra = realpath(a, NULL);
    free(a);
    if (!ra) {
        return false;
    }
    for (size_t i = 0; i < d->n_images && !same; i++) {
        char *b = NULL;
        if (d->images[i].file[0] == '/') {
            b = strdup(d->images[i].file);
        } else if (asprintf(&b, "%s/%s", dir, d->images[i].file) < 0) {
            b = NULL;
        }
        if (!b) {
            same = true;
            break;
        }
        rb = realpath(b, NULL);
        same = rb && strcmp(ra, rb) == 0;
        free(rb);
        free(b);
    }
    free(ra);
    return same;
}

/* Finish or roll back what a crashed operation left: remove the files the
 * journal lists that the descriptor does not reference, then the journal.
 * Caller holds the exclusive lock. */
static int journal_replay(const struct bundle_desc *d, const char *dir,
                          bool quiet)
{
    char *path, *text = NULL;
    struct prl_file f;
    uint64_t size;
    int r = journal_path(dir, &path);

    if (r < 0) {
        return r;
    }
    /* Temporary files of an atomic replacement that never happened. */
    for (int i = 0; i < 2; i++) {
        char *tmp;
        if (asprintf(&tmp, "%s.prl-tmp", i ? path : d->name) >= 0) {
            if (unlink(tmp) < 0 && errno != ENOENT) {
                prl_warn("could not remove '%s': %s", tmp, strerror(errno));
            }
            free(tmp);
        }
    }
    if (access(path, F_OK) != 0) {
        free(path);
        return 0;
    }
    r = prl_file_open(&f, path, false, false);
    if (r == 0) {
        r = prl_file_size(&f, &size);
        if (r == 0 && size > BUNDLE_JOURNAL_MAX) {
            r = prl_error(EFBIG,
                          "'%s' is %" PRIu64 " bytes, more than a "
                          "journal ever holds",
                          path, size);
        }
        if (r == 0 && !(text = prl_calloc(1, (size_t)size + 1))) {
            r = -ENOMEM;
        }
        if (r == 0) {
            r = prl_file_pread(&f, text, (size_t)size, 0);
        }
        prl_file_close(&f);
    }
    for (char *line = text, *next; r == 0 && line && *line; line = next) {
        struct stat st;
        char *file;

        next = strchr(line, '\n');
        if (next) {
            *next++ = '\0';
        } else {
            next = line + strlen(line);
        }
        if (!journal_name_ok(line) || referenced(d, dir, line)) {
            continue;
        }
        if (asprintf(&file, "%s/%s", dir, line) < 0) {
            r = prl_error(ENOMEM, "out of memory");
            break;
        }
        if (lstat(file, &st) == 0 && S_ISREG(st.st_mode)) {
            if (unlink(file) < 0) {
                r = prl_error_errno(errno, "remove '%s'", file);
            } else if (!quiet) {
                prl_info("removed '%s', left by an unfinished snapshot "
                         "operation",
                         file);
            }
        }
        free(file);
    }
    free(text);
    if (r == 0 && unlink(path) < 0 && errno != ENOENT) {
        r = prl_error_errno(errno, "remove '%s'", path);
    }
    if (r == 0) {
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            if (fsync(fd) < 0) {
                r = prl_error_errno(errno, "sync directory '%s'", dir);
            }
            close(fd);
        }
    }
    free(path);
    return r;
}

/* ---- the driver ---- */

static int bundle_open(struct prl_block *bs)
{
    bool rw = bs->open_flags & PRL_OPEN_RDWR;
    bool external = bs->open_flags & PRL_OPEN_BUNDLE_EXTERNAL;
    struct bundle_state *s;
    struct bundle_desc d;
    char *dir, *desc;
    bool parallel = true;
    int r;

    r = bundle_paths(bs->filename, &dir, &desc);
    if (r < 0) {
        return r;
    }
    s = prl_calloc(1, sizeof(*s));
    if (!s) {
        r = -ENOMEM;
        goto out;
    }
    r = bundle_lock(dir, rw, &s->lock_fd);
    if (r < 0) {
        goto out;
    }
    r = bundle_desc_load(desc, &d);
    if (r < 0) {
        goto out;
    }
    if (d.geometry_mismatch) {
        prl_warn("'%s': Cylinders %" PRIu64 " x Heads %" PRIu64 " x "
                 "Sectors %" PRIu64 " differs from Disk_size %" PRIu64
                 "; the size is taken from Disk_size",
                 desc, d.cylinders, d.heads, d.sectors, d.disk_sectors);
    }
    if (rw) {
        r = journal_replay(&d, dir, false);
    }
    if (r == 0) {
        r = chain_open(&d, dir, d.top, rw, rw, external,
                       bs->open_flags & PRL_OPEN_NO_FLUSH, &s->ch);
    }
    s->blocksize = d.blocksize * 512;
    bundle_desc_free(&d);
    if (r < 0) {
        goto out;
    }
    for (size_t i = 0; i < s->ch.n; i++) {
        parallel =
            parallel && (prl_block_caps(s->ch.l[i].bs) & PRL_CAP_PARALLEL);
    }
    bs->opaque = s;
    bs->size = s->ch.size;
    bs->caps = PRL_CAP_ZERO | PRL_CAP_TRIM | (rw ? PRL_CAP_WRITE : 0) |
               (parallel ? PRL_CAP_PARALLEL : 0);
    bs->request_alignment = 1;
    bs->preferred_size = prl_block_preferred_size(s->ch.l[0].bs);
    s = NULL;
out:
    if (s) {
        bundle_unlock(s->lock_fd);
        free(s);
    }
    free(dir);
    free(desc);
    return r;
}

static int bundle_close(struct prl_block *bs)
{
    struct bundle_state *s = bs->opaque;
    int r = chain_close(&s->ch);

    bundle_unlock(s->lock_fd);
    free(s);
    return r;
}

static int bundle_pread(struct prl_block *bs, void *buf, uint64_t length,
                        uint64_t offset)
{
    struct bundle_state *s = bs->opaque;
    return chain_read(&s->ch, 0, buf, length, offset);
}

static int bundle_pwrite(struct prl_block *bs, const void *buf, uint64_t length,
                         uint64_t offset, unsigned flags)
{
    struct bundle_state *s = bs->opaque;
    return chain_pwrite(&s->ch, 0, buf, length, offset, flags);
}

static int bundle_zero(struct prl_block *bs, uint64_t length, uint64_t offset,
                       unsigned flags)
{
    struct bundle_state *s = bs->opaque;
    return chain_zero(&s->ch, 0, length, offset, flags, false);
}

static int bundle_trim(struct prl_block *bs, uint64_t length, uint64_t offset,
                       unsigned flags)
{
    struct bundle_state *s = bs->opaque;
    return chain_zero(&s->ch, 0, length, offset, flags, true);
}

static int bundle_flush(struct prl_block *bs)
{
    struct bundle_state *s = bs->opaque;
    return prl_block_flush(s->ch.l[0].bs);
}

static int bundle_block_status(struct prl_block *bs, uint64_t offset,
                               uint64_t length, struct prl_extent *ext)
{
    struct bundle_state *s = bs->opaque;
    return chain_status(&s->ch, 0, offset, length, ext);
}

static int bundle_data_fd(struct prl_block *bs, const struct prl_extent *ext)
{
    struct bundle_state *s = bs->opaque;
    struct prl_extent e = *ext;

    if (ext->depth == 0 || ext->depth > s->ch.n) {
        return -ENOTSUP;
    }
    e.depth = 1; /* as the layer itself reported it */
    return prl_block_data_fd(s->ch.l[ext->depth - 1].bs, &e);
}

static int bundle_info(struct prl_block *bs, struct prl_image_info *info)
{
    struct bundle_state *s = bs->opaque;

    info->cluster_size = s->blocksize;
    for (size_t i = 0; i < s->ch.n; i++) {
        struct prl_image_info li;
        int r = prl_block_info(s->ch.l[i].bs, &li);
        if (r < 0) {
            return r;
        }
        info->actual_size += li.actual_size;
        info->file_size += li.file_size;
    }
    return 0;
}

/* Base name of a directory path, trailing slashes ignored. */
static char *dir_basename(const char *dir)
{
    size_t n = strlen(dir), b;

    while (n > 1 && dir[n - 1] == '/') {
        n--;
    }
    b = n;
    while (b > 0 && dir[b - 1] != '/') {
        b--;
    }
    if (b == n) {
        return strdup("disk");
    }
    return strndup(dir + b, n - b);
}

static int bundle_create(const char *path, uint64_t size, struct prl_opts *opts)
{
    uint64_t cs = 1 << 20, sectors;
    char *dir = NULL, *desc = NULL, *name = NULL, *file = NULL;
    char *img = NULL, opt[64];
    struct stat st;
    int r;

    r = prl_opts_get_size(opts, "cluster_size", &cs);
    if (r < 0) {
        return r;
    }
    r = prl_opts_check_unused(opts, "bundle");
    if (r < 0) {
        return r;
    }
    if (cs == 0 || cs % 512 != 0 || cs / 512 > PARALLELS_MAX_TRACKS) {
        return prl_error(EINVAL,
                         "bundle: cluster_size %" PRIu64 " must be "
                         "a non-zero multiple of 512 of at most %u bytes",
                         cs, PARALLELS_MAX_TRACKS * 512);
    }
    if (size == 0 || size > UINT64_MAX - 511) {
        return prl_error(EINVAL,
                         "bundle: size %" PRIu64 " must be at "
                         "least one sector and below 2^64",
                         size);
    }
    sectors = prl_div_round_up(size, 512);
    dir = strdup(path);
    if (!dir) {
        return prl_error(ENOMEM, "out of memory");
    }
    if (mkdir(dir, 0755) < 0) {
        if (errno != EEXIST || stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
            r = prl_error_errno(errno == EEXIST ? ENOTDIR : errno,
                                "bundle: could not create directory '%s'", dir);
            goto out;
        }
    }
    if (asprintf(&desc, "%s/%s", dir, BUNDLE_DESC_NAME) < 0) {
        desc = NULL;
        r = prl_error(ENOMEM, "out of memory");
        goto out;
    }
    if (access(desc, F_OK) == 0) {
        r = prl_error(EEXIST,
                      "bundle: '%s' already exists; remove the "
                      "bundle first",
                      desc);
        goto out;
    }
    name = dir_basename(dir);
    if (!name || asprintf(&file, "%s.0.%s.hds", name, BUNDLE_GUID_TOP) < 0 ||
        asprintf(&img, "%s/%s", dir, file) < 0) {
        r = prl_error(ENOMEM, "out of memory");
        goto out;
    }
    snprintf(opt, sizeof(opt), "cluster_size=%" PRIu64, cs);
    r = prl_block_create(img, "parallels", sectors * 512, opt);
    if (r == 0) {
        r = bundle_desc_write_new(desc, sectors, cs / 512, BUNDLE_GUID_TOP,
                                  file);
    }
out:
    free(dir);
    free(desc);
    free(name);
    free(file);
    free(img);
    return r;
}

/* Append a finding about the bundle itself (not one of its images). */
static int bundle_finding(struct prl_check_result *res,
                          enum prl_finding_class cls, const char *kind,
                          const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int bundle_finding(struct prl_check_result *res,
                          enum prl_finding_class cls, const char *kind,
                          const char *fmt, ...)
{
    struct prl_finding *n, *f;
    char buf[1024];
    va_list ap;

    n = realloc(res->findings, (res->n_findings + 1) * sizeof(*n));
    if (!n) {
        return prl_error(ENOMEM, "out of memory");
    }
    res->findings = n;
    f = &n[res->n_findings++];
    memset(f, 0, sizeof(*f));
    f->cls = cls;
    f->kind = kind;
    f->bat_index = -1;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    f->message = strdup(buf);
    res->corruptions += cls == PRL_FINDING_CORRUPTION;
    res->leaks += cls == PRL_FINDING_LEAK;
    return f->message ? 0 : prl_error(ENOMEM, "out of memory");
}

/* Check one Compressed image with the Parallels check and fold its result
 * into |res|, each message prefixed with the image's file. */
static int check_image(const char *path, const char *file, unsigned fix,
                       struct prl_check_result *res)
{
    struct prl_check_result sub;
    int r = prl_block_check(path, "parallels", fix, &sub);

    if (r < 0) {
        r = bundle_finding(res, PRL_FINDING_CORRUPTION, "bundle-image",
                           "image '%s': %s", file, prl_error_message());
        res->check_errors++;
        prl_check_result_free(&sub);
        return r;
    }
    res->check_errors += sub.check_errors;
    res->corruptions += sub.corruptions;
    res->leaks += sub.leaks;
    res->corruptions_fixed += sub.corruptions_fixed;
    res->leaks_fixed += sub.leaks_fixed;
    res->total_clusters += sub.total_clusters;
    res->allocated_clusters += sub.allocated_clusters;
    for (size_t i = 0; i < sub.n_findings && r == 0; i++) {
        struct prl_finding *n, *f = &sub.findings[i];
        char *msg;

        if (asprintf(&msg, "image '%s': %s", file, f->message) < 0) {
            r = prl_error(ENOMEM, "out of memory");
            break;
        }
        n = realloc(res->findings, (res->n_findings + 1) * sizeof(*n));
        if (!n) {
            free(msg);
            r = prl_error(ENOMEM, "out of memory");
            break;
        }
        res->findings = n;
        n[res->n_findings] = *f;
        n[res->n_findings].message = msg;
        f->action = NULL; /* moved */
        res->n_findings++;
    }
    prl_check_result_free(&sub);
    return r;
}

/* Check a bundle: the descriptor (which must parse: without it there is
 * no list of images), every image file it names, each Parallels image
 * with the Parallels check and its size and cluster size against the
 * descriptor.  Repairs go to the images; the descriptor is never
 * rewritten by a check. */
static int bundle_check(const char *path, unsigned fix,
                        struct prl_check_result *res)
{
    struct bundle_desc d;
    char *dir, *desc;
    int lock_fd = -1;
    int r = bundle_paths(path, &dir, &desc);

    if (r < 0) {
        return r;
    }
    bool external = fix & PRL_CHECK_ALLOW_EXTERNAL;
    fix &= PRL_CHECK_FIX_ALL;
    r = bundle_lock(dir, fix != 0, &lock_fd);
    if (r == 0) {
        r = bundle_desc_load(desc, &d);
    }
    if (r < 0) {
        bundle_unlock(lock_fd);
        free(dir);
        free(desc);
        return r;
    }
    for (size_t i = 0; i < d.n_shots && r == 0; i++) {
        const struct bundle_image *im = &d.images[d.shots[i].image];
        struct prl_block *bs;
        char *file;

        if (resolve_file(dir, im->file, external, &file) < 0) {
            r = bundle_finding(res, PRL_FINDING_CORRUPTION, "bundle-file",
                               "image %s: %s", im->guid, prl_error_message());
            continue;
        }
        if (!im->plain) {
            r = check_image(file, im->file, fix, res);
        }
        if (r == 0 && prl_block_open(file, im->plain ? "raw" : "parallels", 0,
                                     &bs) == 0) {
            struct prl_image_info info;
            if (prl_block_size(bs) != d.disk_sectors * 512) {
                r = bundle_finding(
                    res, PRL_FINDING_CORRUPTION, "bundle-image-size",
                    "image '%s' is %" PRIu64 " bytes; "
                    "<Disk_size> says %" PRIu64,
                    im->file, prl_block_size(bs), d.disk_sectors * 512);
            }
            if (r == 0 && !im->plain && prl_block_info(bs, &info) == 0 &&
                info.cluster_size != d.blocksize * 512) {
                r = bundle_finding(
                    res, PRL_FINDING_CORRUPTION, "bundle-cluster-size",
                    "image '%s' has clusters of %" PRIu64
                    " bytes; <Blocksize> says %" PRIu64,
                    im->file, info.cluster_size, d.blocksize * 512);
            }
            prl_block_close(bs);
        }
        prl_error_clear();
        free(file);
    }
    bundle_desc_free(&d);
    bundle_unlock(lock_fd);
    free(dir);
    free(desc);
    return r;
}

const struct prl_driver prl_driver_bundle = {
    .name = "bundle",
    .open = bundle_open,
    .close = bundle_close,
    .create = bundle_create,
    .pread = bundle_pread,
    .pwrite = bundle_pwrite,
    .zero = bundle_zero,
    .trim = bundle_trim,
    .flush = bundle_flush,
    .block_status = bundle_block_status,
    .data_fd = bundle_data_fd,
    .info = bundle_info,
    .check = bundle_check,
};

/* ---- snapshot operations ---- */

/* A bundle held for an operation: locked, descriptor loaded. */
struct bundle_op {
    char *dir;
    char *desc_path;
    int lock_fd;
    struct bundle_desc d;
    bool external;
};

static void op_end(struct bundle_op *op)
{
    bundle_desc_free(&op->d);
    bundle_unlock(op->lock_fd);
    free(op->dir);
    free(op->desc_path);
}

static int op_begin(const char *path, unsigned flags, bool exclusive,
                    struct bundle_op *op)
{
    int r;

    memset(op, 0, sizeof(*op));
    op->lock_fd = -1;
    op->external = flags & PRL_OPEN_BUNDLE_EXTERNAL;
    r = bundle_paths(path, &op->dir, &op->desc_path);
    /* Listing reads only the descriptor, which is always replaced
     * atomically: it needs no lock and works while a server holds one. */
    if (r == 0 && exclusive) {
        r = bundle_lock(op->dir, true, &op->lock_fd);
    }
    if (r == 0) {
        r = bundle_desc_load(op->desc_path, &op->d);
    }
    if (r == 0 && exclusive) {
        /* Every image of the active chain must open and match the
         * descriptor before anything changes. */
        struct bundle_chain ch;
        r = chain_open(&op->d, op->dir, op->d.top, false, true, op->external, 0,
                       &ch);
        if (r == 0) {
            r = chain_close(&ch);
        }
    }
    if (r == 0 && exclusive) {
        r = journal_replay(&op->d, op->dir, false);
    }
    if (r < 0) {
        op_end(op);
    }
    return r;
}

/* Remove the journal after a finished operation, dropping the files it
 * lists that the descriptor no longer references. */
static int op_finish(struct bundle_op *op)
{
    return journal_replay(&op->d, op->dir, true);
}

int prl_bundle_list(const char *path, unsigned flags,
                    struct prl_snapshot_list *out)
{
    struct bundle_op op;
    int r;

    memset(out, 0, sizeof(*out));
    r = op_begin(path, flags, false, &op);
    if (r < 0) {
        return r;
    }
    out->v = prl_calloc(op.d.n_shots, sizeof(*out->v));
    if (!out->v) {
        op_end(&op);
        return -ENOMEM;
    }
    out->disk_size = op.d.disk_sectors * 512;
    out->cluster_size = op.d.blocksize * 512;
    for (size_t i = 0; i < op.d.n_shots && r == 0; i++) {
        const struct bundle_shot *sh = &op.d.shots[i];
        const struct bundle_image *im = &op.d.images[sh->image];
        struct prl_snapshot *v = &out->v[out->n++];
        struct stat st;
        unsigned depth = 1;

        memcpy(v->guid, sh->guid, sizeof(v->guid));
        memcpy(v->parent, sh->parent, sizeof(v->parent));
        v->plain = im->plain;
        v->top = i == op.d.top;
        for (size_t k = op.d.top; k != SIZE_MAX;
             k = op.d.shots[k].parent_shot, depth++) {
            if (k == i) {
                v->depth = depth;
                break;
            }
        }
        v->file = strdup(im->file);
        if (!v->file) {
            r = prl_error(ENOMEM, "out of memory");
            break;
        }
        if (resolve_file(op.dir, im->file, op.external, &v->path) < 0) {
            prl_error_clear();
            v->path = NULL;
        } else if (stat(v->path, &st) == 0) {
            v->allocated = (uint64_t)st.st_blocks * 512;
        }
    }
    op_end(&op);
    if (r < 0) {
        prl_snapshot_list_free(out);
    }
    return r;
}

void prl_snapshot_list_free(struct prl_snapshot_list *list)
{
    for (size_t i = 0; i < list->n; i++) {
        free(list->v[i].file);
        free(list->v[i].path);
    }
    free(list->v);
    memset(list, 0, sizeof(*list));
}

/* File name for a new image: the top's name with its GUID replaced, the
 * way Parallels names them, else "<dir>.0.<guid>.hds". */
static char *new_file_name(const struct bundle_op *op, const char *guid)
{
    const struct bundle_shot *top = &op->d.shots[op->d.top];
    const char *f = op->d.images[top->image].file;
    const char *at = strcasestr(f, top->guid);
    char *name, *out = NULL;

    if (at && !strchr(f, '/')) {
        if (asprintf(&out, "%.*s%s%s", (int)(at - f), f, guid,
                     at + strlen(top->guid)) < 0) {
            out = NULL;
        }
        return out;
    }
    name = dir_basename(op->dir);
    if (name && asprintf(&out, "%s.0.%s.hds", name, guid) < 0) {
        out = NULL;
    }
    free(name);
    return out;
}

int prl_bundle_snapshot_create(const char *path, unsigned flags, char guid[39])
{
    struct bundle_op op;
    char *file = NULL, *img = NULL, opt[64], top[BUNDLE_GUID_LEN];
    int r = op_begin(path, flags, true, &op);

    if (r < 0) {
        return r;
    }
    do {
        r = bundle_guid_random(guid);
    } while (r == 0 && bundle_desc_find(&op.d, guid) != SIZE_MAX);
    if (r < 0) {
        goto out;
    }
    file = new_file_name(&op, guid);
    if (!file || asprintf(&img, "%s/%s", op.dir, file) < 0) {
        img = NULL;
        r = prl_error(ENOMEM, "out of memory");
        goto out;
    }
    if (access(img, F_OK) == 0) {
        r = prl_error(EEXIST, "snapshot: '%s' already exists", img);
        goto out;
    }
    /* Journal first: a crash before the descriptor names the new image
     * leaves a file the next open removes. */
    r = journal_write(op.dir, file);
    if (r < 0) {
        goto out;
    }
    snprintf(opt, sizeof(opt), "cluster_size=%" PRIu64, op.d.blocksize * 512);
    r = prl_block_create(img, "parallels", op.d.disk_sectors * 512, opt);
    if (r < 0) {
        goto out;
    }
    memcpy(top, op.d.shots[op.d.top].guid, sizeof(top));
    r = bundle_desc_add_top(&op.d, guid, file, top);
    if (r == 0) {
        r = bundle_desc_save(&op.d, op.desc_path);
    }
    if (r == 0) {
        r = op_finish(&op);
    }
out:
    free(file);
    free(img);
    op_end(&op);
    return r;
}

/* Copy into layer 0 every cluster of it that layer 1 provides and layer 0
 * does not hold, read through layers 1.. of the chain.  The guest view
 * through layer 0 does not change at any point. */
static int merge_down(struct bundle_chain *ch)
{
    struct bundle_layer *C = &ch->l[0];
    uint64_t cs = C->cs, off = 0, next = 0;
    bool root = ch->n == 2;
    uint8_t *buf = prl_malloc((size_t)cs);
    int r = 0;

    if (!buf) {
        return -ENOMEM;
    }
    while (off < ch->size && r == 0) {
        struct prl_extent e;
        r = prl_block_status(ch->l[1].bs, off, ch->size - off, &e);
        if (r < 0 || !(e.flags & PRL_EXT_ALLOCATED)) {
            off += r < 0 ? 0 : e.length;
            continue;
        }
        for (uint64_t c0 = prl_round_down(off, cs);
             c0 < off + e.length && r == 0; c0 += cs) {
            uint64_t clen = PRL_MIN(cs, ch->size - c0);
            if (c0 < next || layer_holds(C, c0, clen, &r) || r < 0) {
                continue;
            }
            next = c0 + clen;
            r = chain_read(ch, 1, buf, clen, c0);
            /* Zeroes of a root being removed need not be copied: the
             * cluster reads as zeroes without it. */
            if (r == 0 && !(root && prl_is_zero(buf, (size_t)clen))) {
                r = prl_block_pwrite(C->bs, buf, clen, c0, 0);
            }
        }
        off += e.length;
    }
    free(buf);
    if (r == 0) {
        r = prl_block_flush(C->bs);
    }
    return r;
}

/* Journal the file of shot |si| for removal when it is a plain name inside
 * the bundle; an external image file is left alone. */
static int journal_image(struct bundle_op *op, size_t si)
{
    const char *file = op->d.images[op->d.shots[si].image].file;

    if (!journal_name_ok(file)) {
        prl_info("'%s' is no longer part of the bundle; it is not removed "
                 "since it lies outside the bundle directory",
                 file);
        return 0;
    }
    return journal_write(op->dir, file);
}

int prl_bundle_snapshot_delete(const char *path, const char *guid,
                               unsigned flags)
{
    struct bundle_op op;
    struct bundle_chain ch;
    char g[BUNDLE_GUID_LEN];
    size_t s, child = SIZE_MAX;
    int r = op_begin(path, flags, true, &op);

    if (r < 0) {
        return r;
    }
    s = bundle_desc_find(&op.d, guid);
    if (s == SIZE_MAX) {
        r = prl_error(ENOENT, "snapshot: bundle '%s' has no snapshot '%s'",
                      op.dir, guid);
        goto out;
    }
    memcpy(g, op.d.shots[s].guid, sizeof(g));
    if (s == op.d.top) {
        r = prl_error(EINVAL,
                      "snapshot: %s is the top (the active image);"
                      " use 'prl-img commit' to merge it into its parent",
                      g);
        goto out;
    }
    if (op.d.shots[s].n_children > 1) {
        r = prl_error(ENOTSUP,
                      "snapshot: %s has %zu children; only a "
                      "snapshot with one child can be merged into it",
                      g, op.d.shots[s].n_children);
        goto out;
    }
    for (size_t k = 0; k < op.d.n_shots; k++) {
        if (op.d.shots[k].parent_shot == s) {
            child = k;
        }
    }
    if (child != SIZE_MAX) {
        r = chain_open(&op.d, op.dir, child, true, true, op.external, 0, &ch);
        if (r < 0) {
            goto out;
        }
        r = merge_down(&ch);
        int r2 = chain_close(&ch);
        r = r < 0 ? r : r2;
        if (r < 0) {
            goto out;
        }
    }
    /* The child now holds everything it read from |s|: the descriptor can
     * drop it. */
    r = journal_image(&op, s);
    if (r == 0) {
        r = bundle_desc_remove(&op.d, g);
    }
    if (r == 0) {
        r = bundle_desc_save(&op.d, op.desc_path);
    }
    if (r == 0) {
        r = op_finish(&op);
    }
out:
    op_end(&op);
    return r;
}

/* Copy every range the top holds into the chain below it. */
static int commit_copy(struct bundle_layer *T, struct bundle_chain *ch)
{
    uint64_t off = 0;
    size_t chunk = (size_t)PRL_MAX((uint64_t)BUNDLE_COPY_CHUNK, T->cs);
    uint8_t *buf = prl_malloc(chunk);
    int r = 0;

    if (!buf) {
        return -ENOMEM;
    }
    while (off < ch->size && r == 0) {
        struct prl_extent e;
        uint64_t n;

        r = prl_block_status(T->bs, off, PRL_MIN(ch->size - off, chunk), &e);
        if (r < 0) {
            break;
        }
        n = e.length;
        if (e.flags & PRL_EXT_ALLOCATED) {
            r = prl_block_pread(T->bs, buf, n, off, 0);
            if (r == 0) {
                r = chain_pwrite(ch, 0, buf, n, off, 0);
            }
        }
        off += n;
    }
    free(buf);
    if (r == 0) {
        r = prl_block_flush(ch->l[0].bs);
    }
    return r;
}

int prl_bundle_commit(const char *path, unsigned flags)
{
    struct bundle_op op;
    struct bundle_chain ch;
    struct bundle_layer T;
    char g[BUNDLE_GUID_LEN];
    size_t t, p;
    int r = op_begin(path, flags, true, &op);

    if (r < 0) {
        return r;
    }
    t = op.d.top;
    p = op.d.shots[t].parent_shot;
    memcpy(g, op.d.shots[t].guid, sizeof(g));
    if (p == SIZE_MAX) {
        r = prl_error(EINVAL,
                      "commit: the top %s of bundle '%s' has no "
                      "parent; there is nothing to commit into",
                      g, op.dir);
        goto out;
    }
    if (op.d.shots[p].n_children != 1) {
        r = prl_error(ENOTSUP,
                      "commit: the parent %s of the top has %zu "
                      "children; committing into it would change the "
                      "other branches",
                      op.d.shots[p].guid, op.d.shots[p].n_children);
        goto out;
    }
    r = layer_open(&op.d, op.dir, t, false, true, op.external, 0, &T);
    if (r < 0) {
        goto out;
    }
    r = chain_open(&op.d, op.dir, p, true, true, op.external, 0, &ch);
    if (r == 0) {
        r = commit_copy(&T, &ch);
        int r2 = chain_close(&ch);
        r = r < 0 ? r : r2;
    }
    int r3 = prl_block_close(T.bs);
    r = r < 0 ? r : r3;
    /* The parent holds everything the top held: drop the top. */
    if (r == 0) {
        r = journal_image(&op, t);
    }
    if (r == 0) {
        r = bundle_desc_remove(&op.d, g);
    }
    if (r == 0) {
        r = bundle_desc_save(&op.d, op.desc_path);
    }
    if (r == 0) {
        r = op_finish(&op);
    }
out:
    op_end(&op);
    return r;
}
