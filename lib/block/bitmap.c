/* SPDX-License-Identifier: MIT */
/* Dirty bitmap objects and the public bitmap API of the block layer. */
#include "block/bitmap.h"
#include "block/driver.h"
#include "common/util.h"
#include "prl/error.h"

#include <ctype.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

struct prl_dirty_bitmap *
prl_dirty_bitmap_new(const uint8_t id[16], uint64_t granularity, uint64_t size)
{
    struct prl_dirty_bitmap *b;

    /* At most 2 GiB: what QEMU and prl load back from a Parallels image
     * (a u32 of bytes). */
    if (granularity < 512 || granularity > ((uint64_t)1 << 31) ||
        !prl_is_power_of_2(granularity)) {
        prl_error(EINVAL,
                  "bitmap granularity %" PRIu64 " must be a power "
                  "of two from 512 bytes to 2 GiB",
                  granularity);
        return NULL;
    }
    b = prl_calloc(1, sizeof(*b));
    if (!b) {
        return NULL;
    }
    memcpy(b->id, id, 16);
    prl_uuid_unparse(id, b->name);
    b->granularity = granularity;
    b->size = size;
    b->nbits = prl_div_round_up(size, granularity);
    b->bits = prl_calloc(1, (size_t)PRL_MAX(prl_div_round_up(b->nbits, 8), 1));
    if (!b->bits) {
        free(b);
        return NULL;
    }
    b->enabled = true;
    b->consistent = true;
    return b;
}

void prl_dirty_bitmap_free(struct prl_dirty_bitmap *b)
{
    if (b) {
        free(b->bits);
        free(b);
    }
}

uint64_t prl_dirty_bitmap_bytes(const struct prl_dirty_bitmap *b)
{
    return prl_div_round_up(b->nbits, 8);
}

void prl_dirty_bitmap_set(struct prl_dirty_bitmap *b, uint64_t offset,
                          uint64_t length)
{
    uint64_t first, last;

    if (length == 0 || offset >= b->size) {
        return;
    }
    first = offset / b->granularity;
    last = (PRL_MIN(offset + length, b->size) - 1) / b->granularity;
    for (uint64_t i = first; i <= last;) {
        if (i % 8 == 0 && last - i >= 7) {
            /* Whole bytes at once. */
            uint64_t nbytes = (last + 1 - i) / 8;
            memset(b->bits + i / 8, 0xff, (size_t)nbytes);
            i += nbytes * 8;
            continue;
        }
        __atomic_fetch_or(&b->bits[i / 8], (uint8_t)(1u << (i % 8)),
                          __ATOMIC_RELAXED);
        i++;
    }
}

bool prl_dirty_bitmap_get(const struct prl_dirty_bitmap *b, uint64_t bit)
{
    return bit < b->nbits && ((b->bits[bit / 8] >> (bit % 8)) & 1);
}

/* Bits [64 w, 64 w + 64) as a word, bit i of the disk at bit i % 64:
 * the bytes are little-endian bit order, so a little-endian load of 8 of
 * them is that word.  Bits at and past nbits are 0. */
static uint64_t bitmap_word(const struct prl_dirty_bitmap *b, uint64_t w)
{
    uint64_t nbytes = prl_div_round_up(b->nbits, 8), off = w * 8, v = 0;

    if (w >= prl_div_round_up(b->nbits, 64)) {
        return 0;
    }
    memcpy(&v, b->bits + off, (size_t)PRL_MIN(8, nbytes - off));
    v = le64toh(v);
    if (b->nbits - w * 64 < 64) {
        v &= (UINT64_C(1) << (b->nbits - w * 64)) - 1;
    }
    return v;
}

uint64_t prl_dirty_bitmap_find(const struct prl_dirty_bitmap *b, uint64_t start,
                               uint64_t end, bool set)
{
    uint64_t w, word;

    if (start >= end) {
        return end;
    }
    w = start / 64;
    word = bitmap_word(b, w) ^ (set ? 0 : UINT64_MAX);
    word &= UINT64_MAX << (start % 64);
    while (word == 0) {
        w++;
        if (w >= prl_div_round_up(end, 64)) {
            return end;
        }
        word = bitmap_word(b, w) ^ (set ? 0 : UINT64_MAX);
    }
    return PRL_MIN(w * 64 + (uint64_t)__builtin_ctzll(word), end);
}

uint64_t prl_dirty_bitmap_count(const struct prl_dirty_bitmap *b)
{
    uint64_t n = 0, bytes = prl_div_round_up(b->nbits, 8);

    for (uint64_t i = 0; i < bytes; i++) {
        n += (uint64_t)__builtin_popcount(b->bits[i]);
    }
    return n;
}

void prl_uuid_unparse(const uint8_t id[16], char out[PRL_BITMAP_NAME_SIZE])
{
    snprintf(out, PRL_BITMAP_NAME_SIZE,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7], id[8],
             id[9], id[10], id[11], id[12], id[13], id[14], id[15]);
}

bool prl_uuid_parse(const char *s, uint8_t id[16])
{
    int n = 0;

    if (strlen(s) != 36) {
        return false;
    }
    for (int i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') {
                return false;
            }
            i++;
            continue;
        }
        if (!isxdigit((unsigned char)s[i]) ||
            !isxdigit((unsigned char)s[i + 1])) {
            return false;
        }
        char hex[3] = {s[i], s[i + 1], 0};
        id[n++] = (uint8_t)strtoul(hex, NULL, 16);
        i += 2;
    }
    return n == 16;
}

int prl_uuid_generate(uint8_t id[16])
{
    if (getrandom(id, 16, 0) != 16) {
        return prl_error_errno(errno, "could not get random bytes for a "
                                      "UUID");
    }
    id[6] = (uint8_t)((id[6] & 0x0f) | 0x40);
    id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
    return 0;
}

/* The public API: the bitmap list of a handle lives in struct prl_block,
 * guarded by bs->bitmap_lock. */

static struct prl_dirty_bitmap *find_locked(struct prl_block *bs,
                                            const char *name, size_t *idx)
{
    uint8_t id[16];
    char canon[PRL_BITMAP_NAME_SIZE];

    /* The canonical name as given (what the NBD server passes once per
     * extent) needs no parsing; any other case of the UUID text is
     * canonicalized first. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < bs->n_bitmaps; i++) {
            if (strcmp(bs->bitmaps[i]->name, name) == 0) {
                if (idx) {
                    *idx = i;
                }
                return bs->bitmaps[i];
            }
        }
        if (pass > 0 || !prl_uuid_parse(name, id)) {
            break;
        }
        prl_uuid_unparse(id, canon);
        name = canon;
    }
    return NULL;
}

static int not_found(struct prl_block *bs, const char *name)
{
    return prl_error(ENOENT, "'%s' has no bitmap '%s'", bs->filename, name);
}

static int need_persistence(struct prl_block *bs, const char *op)
{
    if (!bs->drv->persistent_bitmaps) {
        return prl_error(ENOTSUP,
                         "bitmap %s: format %s cannot store dirty "
                         "bitmaps",
                         op, bs->drv->name);
    }
    if (!(bs->caps & PRL_CAP_WRITE)) {
        return prl_error(EROFS, "bitmap %s: '%s' is open read-only", op,
                         bs->filename);
    }
    return 0;
}

int prl_bitmap_list(struct prl_block *bs, struct prl_bitmap_info **out,
                    size_t *n)
{
    struct prl_bitmap_info *v;

    pthread_rwlock_rdlock(&bs->bitmap_lock);
    v = prl_calloc(PRL_MAX(bs->n_bitmaps, 1), sizeof(*v));
    if (!v) {
        pthread_rwlock_unlock(&bs->bitmap_lock);
        return -ENOMEM;
    }
    for (size_t i = 0; i < bs->n_bitmaps; i++) {
        struct prl_dirty_bitmap *b = bs->bitmaps[i];
        memcpy(v[i].name, b->name, sizeof(v[i].name));
        v[i].granularity = b->granularity;
        v[i].enabled = b->enabled;
        v[i].consistent = b->consistent;
        /* The last granule may cover less than a whole granule. */
        uint64_t bits = prl_dirty_bitmap_count(b);
        uint64_t bytes = bits * b->granularity;
        if (b->nbits && prl_dirty_bitmap_get(b, b->nbits - 1) &&
            b->size % b->granularity) {
            bytes -= b->granularity - b->size % b->granularity;
        }
        v[i].dirty_bytes = bytes;
    }
    *n = bs->n_bitmaps;
    pthread_rwlock_unlock(&bs->bitmap_lock);
    *out = v;
    return 0;
}

int prl_bitmap_add(struct prl_block *bs, const char *name, uint64_t granularity,
                   char name_out[PRL_BITMAP_NAME_SIZE])
{
    struct prl_dirty_bitmap *b, **nv;
    uint8_t id[16];
    int r = need_persistence(bs, "add");

    if (r < 0) {
        return r;
    }
    if (strcmp(name, "auto") == 0) {
        r = prl_uuid_generate(id);
        if (r < 0) {
            return r;
        }
    } else if (!prl_uuid_parse(name, id)) {
        return prl_error(EINVAL,
                         "bitmap name '%s' is not a UUID (Parallels "
                         "images name bitmaps by their UUID; use 'auto' for "
                         "a random one)",
                         name);
    }
    if (granularity == 0) {
        granularity = 65536;
    }
    b = prl_dirty_bitmap_new(id, granularity, bs->size);
    if (!b) {
        return -EINVAL;
    }
    pthread_rwlock_wrlock(&bs->bitmap_lock);
    if (find_locked(bs, b->name, NULL)) {
        pthread_rwlock_unlock(&bs->bitmap_lock);
        r = prl_error(EEXIST, "'%s' already has a bitmap '%s'", bs->filename,
                      b->name);
        prl_dirty_bitmap_free(b);
        return r;
    }
    nv = realloc(bs->bitmaps, (bs->n_bitmaps + 1) * sizeof(*nv));
    if (!nv) {
        pthread_rwlock_unlock(&bs->bitmap_lock);
        prl_dirty_bitmap_free(b);
        return prl_error(ENOMEM, "out of memory");
    }
    bs->bitmaps = nv;
    bs->bitmaps[bs->n_bitmaps++] = b;
    bs->bitmaps_changed = true;
    if (name_out) {
        memcpy(name_out, b->name, PRL_BITMAP_NAME_SIZE);
    }
    pthread_rwlock_unlock(&bs->bitmap_lock);
    return 0;
}

int prl_bitmap_remove(struct prl_block *bs, const char *name)
{
    struct prl_dirty_bitmap *b;
    size_t i;
    int r = need_persistence(bs, "remove");

    if (r < 0) {
        return r;
    }
    pthread_rwlock_wrlock(&bs->bitmap_lock);
    b = find_locked(bs, name, &i);
    if (!b) {
        pthread_rwlock_unlock(&bs->bitmap_lock);
        return not_found(bs, name);
    }
    memmove(&bs->bitmaps[i], &bs->bitmaps[i + 1],
            (bs->n_bitmaps - i - 1) * sizeof(*bs->bitmaps));
    bs->n_bitmaps--;
    bs->bitmaps_changed = true;
    pthread_rwlock_unlock(&bs->bitmap_lock);
    prl_dirty_bitmap_free(b);
    return 0;
}

/* Apply |fn| to bitmap |name| under the write lock. */
static int modify(struct prl_block *bs, const char *name, const char *op,
                  void (*fn)(struct prl_dirty_bitmap *))
{
    struct prl_dirty_bitmap *b;
    int r = need_persistence(bs, op);

    if (r < 0) {
        return r;
    }
    pthread_rwlock_wrlock(&bs->bitmap_lock);
    b = find_locked(bs, name, NULL);
    if (b) {
        fn(b);
        bs->bitmaps_changed = true;
    }
    pthread_rwlock_unlock(&bs->bitmap_lock);
    return b ? 0 : not_found(bs, name);
}

static void do_clear(struct prl_dirty_bitmap *b)
{
    memset(b->bits, 0, (size_t)prl_dirty_bitmap_bytes(b));
    b->consistent = true;
}

static void do_enable(struct prl_dirty_bitmap *b)
{
    b->enabled = true;
}

static void do_disable(struct prl_dirty_bitmap *b)
{
    b->enabled = false;
}

int prl_bitmap_clear(struct prl_block *bs, const char *name)
{
    return modify(bs, name, "clear", do_clear);
}

int prl_bitmap_enable(struct prl_block *bs, const char *name)
{
    return modify(bs, name, "enable", do_enable);
}

int prl_bitmap_disable(struct prl_block *bs, const char *name)
{
    return modify(bs, name, "disable", do_disable);
}

int prl_bitmap_merge(struct prl_block *bs, const char *dst_name,
                     struct prl_block *src_bs, const char *src_name)
{
    struct prl_dirty_bitmap *d, *s;
    int r = need_persistence(bs, "merge");

    if (r < 0) {
        return r;
    }
    /* Two handles are locked in address order, so that merges both ways
     * between them at once cannot deadlock. */
    bool src_first = src_bs != bs && (uintptr_t)src_bs < (uintptr_t)bs;
    if (src_first) {
        pthread_rwlock_rdlock(&src_bs->bitmap_lock);
    }
    pthread_rwlock_wrlock(&bs->bitmap_lock);
    if (src_bs != bs && !src_first) {
        pthread_rwlock_rdlock(&src_bs->bitmap_lock);
    }
    d = find_locked(bs, dst_name, NULL);
    s = find_locked(src_bs, src_name, NULL);
    if (!d) {
        r = not_found(bs, dst_name);
    } else if (!s) {
        r = not_found(src_bs, src_name);
    } else if (!s->consistent) {
        r = prl_error(EINVAL,
                      "bitmap '%s' of '%s' is inconsistent; clear "
                      "or remove it",
                      s->name, src_bs->filename);
    } else if (s->size != d->size) {
        r = prl_error(EINVAL,
                      "bitmaps '%s' and '%s' cover different disk "
                      "sizes (%" PRIu64 " and %" PRIu64 " bytes)",
                      d->name, s->name, d->size, s->size);
    } else if (s->granularity == d->granularity) {
        for (uint64_t i = 0; i < prl_dirty_bitmap_bytes(d); i++) {
            d->bits[i] |= s->bits[i];
        }
        bs->bitmaps_changed = true;
    } else {
        for (uint64_t i = 0; i < s->nbits; i++) {
            if (prl_dirty_bitmap_get(s, i)) {
                prl_dirty_bitmap_set(d, i * s->granularity, s->granularity);
            }
        }
        bs->bitmaps_changed = true;
    }
    pthread_rwlock_unlock(&bs->bitmap_lock);
    if (src_bs != bs) {
        pthread_rwlock_unlock(&src_bs->bitmap_lock);
    }
    return r;
}

int prl_bitmap_status(struct prl_block *bs, const char *name, uint64_t offset,
                      uint64_t length, bool *dirty, uint64_t *pnum)
{
    struct prl_dirty_bitmap *b;
    uint64_t end, bit, pos;
    int r = 0;

    if (length == 0 || prl_add_overflow(offset, length, &end) ||
        end > bs->size) {
        return prl_error(EINVAL,
                         "bitmap status: range %" PRIu64 "+%" PRIu64
                         " is outside the disk",
                         offset, length);
    }
    if (bs->drv->bitmap_status) {
        return bs->drv->bitmap_status(bs, name, offset, length, dirty, pnum);
    }
    pthread_rwlock_rdlock(&bs->bitmap_lock);
    b = find_locked(bs, name, NULL);
    if (!b) {
        r = not_found(bs, name);
    } else if (!b->consistent) {
        r = prl_error(EINVAL,
                      "bitmap '%s' of '%s' is inconsistent (the "
                      "image was not closed cleanly); clear or remove it",
                      b->name, bs->filename);
    } else {
        /* The run of bits equal to the first one, up to the bit that
         * covers the last byte asked for. */
        bit = offset / b->granularity;
        *dirty = prl_dirty_bitmap_get(b, bit);
        pos = prl_dirty_bitmap_find(
                  b, bit + 1, prl_div_round_up(end, b->granularity), !*dirty) *
              b->granularity;
        *pnum = PRL_MIN(pos, end) - offset;
    }
    pthread_rwlock_unlock(&bs->bitmap_lock);
    return r;
}

void prl_block_mark_dirty(struct prl_block *bs, uint64_t offset,
                          uint64_t length)
{
    if (bs->n_bitmaps == 0) {
        return;
    }
    pthread_rwlock_rdlock(&bs->bitmap_lock);
    for (size_t i = 0; i < bs->n_bitmaps; i++) {
        if (bs->bitmaps[i]->enabled) {
            prl_dirty_bitmap_set(bs->bitmaps[i], offset, length);
        }
    }
    pthread_rwlock_unlock(&bs->bitmap_lock);
}
