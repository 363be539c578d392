/* SPDX-License-Identifier: MIT */
/* Check and repair of Parallels images: every header, BAT and file-level
 * rule of parallels.rst, repaired without losing data that can be kept. */
#include "block/bitmap.h"
#include "block/parallels-check.h"
#include "block/parallels-ext.h"
#include "block/parallels-format.h"
#include "common/util.h"
#include "io/file.h"
#include "prl/error.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* A byte range of the file that something references. */
struct ref {
    uint64_t off;
    uint64_t len;
    int64_t owner; /* BAT index, REF_EXT, or REF_BITMAP(feature index) */
};

#define REF_EXT (-1)
#define REF_BITMAP(i) (-2 - (int64_t)(i))
/* A run of adjacent clusters of any owners but the extension's (made
 * from the cluster map, where nothing overlaps). */
#define REF_RUN INT64_MIN

/* A non-zero BAT entry: its index and its value, in host byte order. */
struct bat_ent {
    uint32_t c;
    uint32_t e;
};

struct chk {
    struct prl_file f;
    struct prl_check_result *res;
    bool fix_leaks, fix_errors;
    struct parallels_header h;
    struct parallels_layout lay;
    uint64_t file_size;
    /* The BAT is read once and only its non-zero entries are kept, by
     * ascending index: a large BAT is mostly zero.  Repairs change e in
     * place (0: cleared); write_back writes the BAT from this list. */
    struct bat_ent *ents;
    size_t n_ents;
    uint64_t nbat;
    uint64_t needed; /* BAT entries the virtual size needs */
    int cs_shift;    /* log2 of the cluster size, -1 when not a power of 2 */
    bool header_changed, bat_changed;
    bool ext_valid;       /* ext_off points at a parsed, checksummed cluster */
    uint8_t *ext_buf;     /* that cluster, as read */
    bool *ext_drop;       /* per feature of ext_buf: an invalid bitmap */
    size_t n_dropped;     /* bitmaps -r all drops from the extension */
    uint64_t *bat_sorted; /* host offsets of the BAT entries, sorted */
    size_t n_bat_sorted;
    uint64_t *bat_map; /* or a bit per cluster they name (see bat_uses) */
    uint64_t bat_map_n;
    struct ref *refs;
    size_t n_refs, cap_refs;
    uint8_t *misplaced;    /* per ents[]: check_entries found it invalid */
    uint64_t allocated;    /* non-zero BAT entries after the entry repairs */
    uint64_t append;       /* next free grid-aligned offset for copies */
    bool necessary;        /* a NECESSARY feature prl cannot load: no change */
    uint64_t pending_free; /* old extension cluster to punch after commit */
    uint64_t pending_end;  /* then the file's end, when that was the last */
};

static int add_finding(struct chk *k, enum prl_finding_class cls,
                       const char *kind, int64_t idx, uint64_t off,
                       const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int add_finding(struct chk *k, enum prl_finding_class cls,
                       const char *kind, int64_t idx, uint64_t off,
                       const char *fmt, ...)
{
    struct prl_check_result *res = k->res;
    struct prl_finding *n, *f;
    va_list ap;
    char buf[512];

    n = realloc(res->findings, (res->n_findings + 1) * sizeof(*n));
    if (!n) {
        return prl_error(ENOMEM, "out of memory");
    }
    res->findings = n;
    f = &n[res->n_findings++];
    memset(f, 0, sizeof(*f));
    f->cls = cls;
    f->kind = kind;
    f->bat_index = idx;
    f->offset = off;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    f->message = strdup(buf);
    if (cls == PRL_FINDING_CORRUPTION) {
        res->corruptions++;
    } else if (cls == PRL_FINDING_LEAK) {
        res->leaks++;
    }
    return f->message ? 0 : prl_error(ENOMEM, "out of memory");
}

static struct prl_finding *last_finding(struct chk *k)
{
    return &k->res->findings[k->res->n_findings - 1];
}

/* Record what was done about the last finding. */
static void fixed(struct chk *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fixed(struct chk *k, const char *fmt, ...)
{
    struct prl_finding *f = last_finding(k);
    char buf[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    free(f->action);
    f->action = strdup(buf);
    f->fixed = true;
    if (f->cls == PRL_FINDING_CORRUPTION) {
        k->res->corruptions--;
        k->res->corruptions_fixed++;
    } else if (f->cls == PRL_FINDING_LEAK) {
        k->res->leaks--;
        k->res->leaks_fixed++;
    }
}

static void lost(struct chk *k, uint64_t guest)
{
    struct prl_finding *f = last_finding(k);

    f->data_lost = true;
    f->guest_offset = guest;
}

/* Grid-aligned offset of the next cluster at or after |off|. */
static uint64_t grid_up(const struct chk *k, uint64_t off)
{
    uint64_t cs = k->lay.cluster_size;

    if (off <= k->lay.data_off) {
        return k->lay.data_off;
    }
    return k->lay.data_off + prl_round_up(off - k->lay.data_off, cs);
}

static uint64_t entry_off(const struct chk *k, uint32_t e)
{
    return (uint64_t)e * k->lay.entry_unit;
}

/* Whether |off| (at or above data_off) starts a cluster of the data area,
 * and which: a shift where the cluster size is a power of two, as in any
 * image made since 2015, not a 64-bit division per BAT entry. */
static bool on_grid(const struct chk *k, uint64_t off)
{
    uint64_t rel = off - k->lay.data_off;

    return k->cs_shift >= 0 ? (rel & (k->lay.cluster_size - 1)) == 0
                            : rel % k->lay.cluster_size == 0;
}

static uint64_t grid_index(const struct chk *k, uint64_t off)
{
    uint64_t rel = off - k->lay.data_off;

    return k->cs_shift >= 0 ? rel >> k->cs_shift : rel / k->lay.cluster_size;
}

/* Copy |len| bytes at |from| into a fresh cluster at the end of the file;
 * returns the new offset in *to. */
static int copy_to_new_cluster(struct chk *k, uint64_t from, uint64_t len,
                               uint64_t *to)
{
    uint64_t cs = k->lay.cluster_size;
    uint64_t dst = k->append;
    uint8_t *buf;
    int r;

    if (dst / k->lay.entry_unit > UINT32_MAX) {
        return prl_error(ENOSPC,
                         "no room for a new cluster: the BAT cannot "
                         "address byte %" PRIu64,
                         dst);
    }
    buf = prl_calloc(1, (size_t)cs);
    if (!buf) {
        return -ENOMEM;
    }
    if (from < k->file_size) {
        len = PRL_MIN(len, k->file_size - from);
        r = prl_file_pread(&k->f, buf, (size_t)len, from);
    } else {
        r = 0;
    }
    if (r == 0) {
        r = prl_file_pwrite(&k->f, buf, (size_t)cs, dst);
    }
    free(buf);
    if (r < 0) {
        return r;
    }
    k->append = dst + cs;
    k->file_size = PRL_MAX(k->file_size, dst + cs);
    *to = dst;
    return 0;
}

/* Largest BAT (bytes from the start of the file to its end) that a
 * repair extends the file to hold rather than shrink the disk: 16 Mi
 * entries, a 16 TiB disk of 1 MiB clusters. */
#define BAT_EXTEND_MAX ((uint64_t)PARALLELS_HEADER_SIZE + (64u << 20))

/* Header fields that can be judged before the BAT is read.  Returns 1
 * when the check must stop here (not this format or unrepairable). */
static int check_header(struct chk *k)
{
    struct parallels_header *h = &k->h;

    if (!h->magic_ok) {
        add_finding(k, PRL_FINDING_CORRUPTION, "magic", -1, 0,
                    "not a Parallels image: the magic is neither "
                    "\"" PARALLELS_MAGIC_LEGACY "\" nor \"" PARALLELS_MAGIC_EXT
                    "\"");
        return 1;
    }
    if (h->version != PARALLELS_VERSION) {
        add_finding(k, PRL_FINDING_CORRUPTION, "version", -1,
                    PARALLELS_OFF_VERSION,
                    "header field version = %" PRIu32
                    " (must be 2): not an image of this format",
                    h->version);
        return 1;
    }
    if (h->tracks == 0 || h->tracks > PARALLELS_MAX_TRACKS) {
        add_finding(k, PRL_FINDING_CORRUPTION, "tracks", -1,
                    PARALLELS_OFF_TRACKS,
                    "header field tracks = %" PRIu32
                    " (cluster size in sectors must be 1..%u); the cluster "
                    "size cannot be recovered",
                    h->tracks, PARALLELS_MAX_TRACKS);
        return 1;
    }
    if (!h->ext && (h->nb_sectors >> 32)) {
        add_finding(k, PRL_FINDING_CORRUPTION, "nb-sectors-high", -1,
                    PARALLELS_OFF_NB_SECTORS,
                    "header field nb_sectors = %" PRIu64
                    " has upper 32 bits set in a \"" PARALLELS_MAGIC_LEGACY
                    "\" image",
                    h->nb_sectors);
        if (k->fix_errors) {
            h->nb_sectors &= 0xffffffffu;
            k->header_changed = true;
            fixed(k, "cleared the upper 32 bits: nb_sectors = %" PRIu64,
                  h->nb_sectors);
        }
    }
    if (h->nb_sectors > UINT64_MAX / PARALLELS_SECTOR) {
        add_finding(k, PRL_FINDING_CORRUPTION, "nb-sectors", -1,
                    PARALLELS_OFF_NB_SECTORS,
                    "header field nb_sectors = %" PRIu64
                    " overflows a byte size",
                    h->nb_sectors);
        if (k->fix_errors) {
            h->nb_sectors = (uint64_t)h->bat_entries * h->tracks;
            k->header_changed = true;
            fixed(k, "set nb_sectors = %" PRIu64 " from the BAT size",
                  h->nb_sectors);
        } else {
            return 1;
        }
    }
    if (h->flags & ~PARALLELS_FLAG_EMPTY) {
        add_finding(k, PRL_FINDING_CORRUPTION, "flags", -1, PARALLELS_OFF_FLAGS,
                    "header field flags = 0x%08" PRIx32
                    " has unknown bits 0x%08" PRIx32,
                    h->flags, h->flags & ~PARALLELS_FLAG_EMPTY);
        if (k->fix_errors) {
            h->flags &= PARALLELS_FLAG_EMPTY;
            k->header_changed = true;
            fixed(k, "cleared the unknown bits");
        }
    }
    if (h->in_use == PARALLELS_IN_USE_DIRTY) {
        add_finding(k, PRL_FINDING_NOTE, "unclean-close", -1,
                    PARALLELS_OFF_IN_USE,
                    "the image was not closed cleanly"
                    " (in_use = 0x%08" PRIx32 ")",
                    h->in_use);
    } else if (h->in_use != 0 && h->in_use != PARALLELS_IN_USE_CLEAN) {
        add_finding(k, PRL_FINDING_NOTE, "in-use-value", -1,
                    PARALLELS_OFF_IN_USE,
                    "header field in_use = 0x%08" PRIx32
                    " is not a value of the spec; treated as closed",
                    h->in_use);
    }

    /* The BAT must lie inside the file. */
    uint64_t bat_end = PARALLELS_HEADER_SIZE + (uint64_t)h->bat_entries * 4;
    if (bat_end > k->file_size) {
        add_finding(k, PRL_FINDING_CORRUPTION, "bat-past-eof", -1,
                    PARALLELS_OFF_BAT_ENTRIES,
                    "header field nb_bat_entries"
                    " = %" PRIu32 ": the BAT ends at byte %" PRIu64 ", past "
                    "the end of the file (%" PRIu64 " bytes)",
                    h->bat_entries, bat_end, k->file_size);
    }
    if (bat_end > k->file_size && bat_end <= BAT_EXTEND_MAX) {
        /* The entries past the end of the file map nothing: the file
         * grows (sparsely) to hold them as zeroes, and the disk keeps
         * its size.  Without -r, the rest of the check sees the file as
         * the repair would leave it: read_bat reads zeroes past the
         * end.  (Written at once, not with the header: nothing can
         * forbid it later, since a Format Extension, the only thing that
         * can, would lie past the end of this file.) */
        if (k->fix_errors) {
            uint64_t old = k->file_size;
            int r = prl_file_truncate(&k->f, bat_end);
            if (r < 0) {
                return r;
            }
            k->file_size = bat_end;
            fixed(k,
                  "extended the file from %" PRIu64 " to %" PRIu64
                  " bytes (sparse) so that the BAT fits; its bytes past "
                  "the old end are zero (unallocated entries), and the "
                  "disk keeps its size",
                  old, bat_end);
        }
    } else if (bat_end > k->file_size) {
        /* A BAT larger than any sane disk needs is a damaged field, not
         * a reason to grow the file by gigabytes (0x3fffffff entries are
         * a 4 GiB BAT): the BAT and the size shrink to the entries
         * inside the file, which are all the file can map.  The rest of
         * the check sees the reduced header. */
        uint64_t keep = (k->file_size - PARALLELS_HEADER_SIZE) / 4;
        uint64_t old_sectors = h->nb_sectors;
        h->bat_entries = (uint32_t)keep;
        h->nb_sectors = PRL_MIN(h->nb_sectors, keep * h->tracks);
        if (k->fix_errors) {
            k->header_changed = true;
            fixed(k,
                  "reduced nb_bat_entries to %" PRIu64 " and nb_sectors "
                  "from %" PRIu64 " to %" PRIu64 "; the missing entries "
                  "mapped no data",
                  keep, old_sectors, h->nb_sectors);
        }
        bat_end = PARALLELS_HEADER_SIZE + keep * 4;
    }

    /* data_off rules. */
    bool bad = false;
    if (h->ext && h->data_off == 0) {
        add_finding(k, PRL_FINDING_CORRUPTION, "data-off", -1,
                    PARALLELS_OFF_DATA_OFF,
                    "header field data_off = 0, but"
                    " \"" PARALLELS_MAGIC_EXT "\" images need a non-zero "
                    "cluster-aligned data offset");
        bad = true;
    } else if (h->data_off &&
               (uint64_t)h->data_off * PARALLELS_SECTOR < bat_end) {
        add_finding(k, PRL_FINDING_CORRUPTION, "data-off", -1,
                    PARALLELS_OFF_DATA_OFF,
                    "header field data_off = %" PRIu32
                    " lies inside the BAT, which ends at byte %" PRIu64,
                    h->data_off, bat_end);
        bad = true;
    } else if (h->ext && ((uint64_t)h->data_off * PARALLELS_SECTOR) %
                             ((uint64_t)h->tracks * PARALLELS_SECTOR)) {
        add_finding(k, PRL_FINDING_CORRUPTION, "data-off", -1,
                    PARALLELS_OFF_DATA_OFF,
                    "header field data_off = %" PRIu32
                    " is not aligned to the cluster size %" PRIu64,
                    h->data_off, (uint64_t)h->tracks * PARALLELS_SECTOR);
        bad = true;
    }
    if (bad) {
        /* Fixed once the BAT is known: see fix_data_off. */
        return 2;
    }
    return 0;
}

/* BAT entries per read: 64 KiB, which stays in the CPU cache. */
#define BAT_CHUNK 16384

/* Bit j set when p[j] is not zero, for j < 64. */
static inline uint64_t nonzero_mask64(const uint32_t *p)
{
#ifdef __SSE2__
    const __m128i z = _mm_setzero_si128();
    uint64_t m = 0;

    for (unsigned j = 0; j < 64; j += 16) {
        const __m128i *q = (const __m128i *)(p + j);
        __m128i a = _mm_cmpeq_epi32(_mm_loadu_si128(q), z);
        __m128i b = _mm_cmpeq_epi32(_mm_loadu_si128(q + 1), z);
        __m128i c = _mm_cmpeq_epi32(_mm_loadu_si128(q + 2), z);
        __m128i d = _mm_cmpeq_epi32(_mm_loadu_si128(q + 3), z);
        /* Sixteen lanes of all ones where zero, packed to bytes. */
        __m128i e =
            _mm_packs_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d));
        m |= (uint64_t)(~_mm_movemask_epi8(e) & 0xffff) << j;
    }
    return m;
#else
    uint64_t m = 0;

    for (unsigned j = 0; j < 64; j++) {
        m |= (uint64_t)(p[j] != 0) << j;
    }
    return m;
#endif
}

/* The one pass over the BAT: read it in chunks and list its non-zero
 * entries.  (A 4 MiB BAT read whole into fresh memory cost more in page
 * faults than the rest of a check.)  Entries past the end of the file
 * read as zero. */
static int read_bat(struct chk *k)
{
    uint64_t n = k->h.bat_entries;
    size_t cap = 0;
    uint32_t *buf;
    int r = 0;

    if (n * 4 > ((uint64_t)1 << 32)) {
        return prl_error(EFBIG,
                         "a BAT of %" PRIu64 " entries is too large "
                         "to check",
                         n);
    }
    buf = prl_malloc(BAT_CHUNK * 4);
    if (!buf) {
        return -ENOMEM;
    }
    for (uint64_t first = 0; first < n; first += BAT_CHUNK) {
        size_t m = (size_t)PRL_MIN(n - first, (uint64_t)BAT_CHUNK);
        size_t m64 = prl_round_up(m, 64);
        r = prl_file_pread(&k->f, buf, m * 4,
                           PARALLELS_HEADER_SIZE + first * 4);
        if (r < 0) {
            break;
        }
        memset(buf + m, 0, (m64 - m) * 4);
        /* Room for a whole chunk, so that the loop need not look. */
        if (cap - k->n_ents < m64) {
            size_t c = PRL_MAX(2 * cap, k->n_ents + m64);
            struct bat_ent *p = realloc(k->ents, c * sizeof(*p));
            if (!p) {
                r = prl_error(ENOMEM, "out of memory");
                break;
            }
            k->ents = p;
            cap = c;
        }
        /* 64 entries at a time: a mask of the non-zero ones (vector
         * compares), then a step per set bit, not a branch per entry to
         * mispredict on a BAT allocated at random. */
        struct bat_ent *p = k->ents;
        size_t t = k->n_ents;
        for (size_t i = 0; i < m64; i += 64) {
            for (uint64_t b = nonzero_mask64(buf + i); b; b &= b - 1) {
                size_t j = i + (size_t)__builtin_ctzll(b);
                p[t++] =
                    (struct bat_ent){(uint32_t)(first + j), le32toh(buf[j])};
            }
        }
        k->n_ents = t;
    }
    free(buf);
    k->nbat = n;
    return r;
}

/* Choose a valid data offset that keeps the most BAT entries valid. */
static void fix_data_off(struct chk *k)
{
    uint64_t bat_end = PARALLELS_HEADER_SIZE + k->nbat * 4;
    uint64_t cs = (uint64_t)k->h.tracks * PARALLELS_SECTOR;
    uint64_t unit = k->h.ext ? cs : PARALLELS_SECTOR;
    uint64_t base, min_off = UINT64_MAX, v;

    for (size_t t = 0; t < k->n_ents; t++) {
        uint64_t off = (uint64_t)k->ents[t].e * unit;
        if (k->ents[t].e && off >= bat_end && off < min_off) {
            min_off = off;
        }
    }
    if (k->h.ext) {
        v = prl_round_up(bat_end, cs);
    } else {
        base = prl_round_up(bat_end, PARALLELS_SECTOR);
        v = base;
        if (min_off != UINT64_MAX && min_off >= base) {
            v = base + (min_off - base) % cs;
        }
    }
    k->h.data_off = (uint32_t)(v / PARALLELS_SECTOR);
    k->header_changed = true;
    fixed(k, "set data_off = %" PRIu32 " (byte %" PRIu64 ")", k->h.data_off, v);
}

/* nb_bat_entries must cover nb_sectors: grow the BAT into zeroed space
 * before the data area when there is room, else reduce the size to what
 * the BAT covers (no cluster can hold data beyond it). */
static int check_bat_covers(struct chk *k)
{
    struct parallels_header *h = &k->h;
    /* A legacy image uses only the low 32 bits of nb_sectors; high bits
     * are the nb-sectors-high finding, not a size the BAT must cover. */
    uint64_t sectors = h->ext ? h->nb_sectors : h->nb_sectors & 0xffffffffu;
    uint64_t need = prl_div_round_up(sectors, h->tracks);
    uint64_t data_off;

    if (need <= h->bat_entries) {
        return 0;
    }
    add_finding(
        k, PRL_FINDING_CORRUPTION, "bat-size", -1, PARALLELS_OFF_BAT_ENTRIES,
        "header field nb_bat_entries = %" PRIu32 " covers %" PRIu64
        " sectors, but nb_sectors = %" PRIu64,
        h->bat_entries, (uint64_t)h->bat_entries * h->tracks, h->nb_sectors);
    if (!k->fix_errors) {
        return 0;
    }
    data_off =
        h->data_off ? (uint64_t)h->data_off * PARALLELS_SECTOR : UINT64_MAX;
    uint64_t new_end = PARALLELS_HEADER_SIZE + need * 4;
    uint64_t old_end = PARALLELS_HEADER_SIZE + (uint64_t)h->bat_entries * 4;
    bool room =
        need <= UINT32_MAX && new_end <= data_off && new_end <= k->file_size;
    for (size_t t = 0; room && t < k->n_ents; t++) {
        uint64_t unit =
            h->ext ? (uint64_t)h->tracks * PARALLELS_SECTOR : PARALLELS_SECTOR;
        if (k->ents[t].e && (uint64_t)k->ents[t].e * unit < new_end) {
            room = false;
        }
    }
    if (room) {
        uint8_t *buf = prl_malloc((size_t)(new_end - old_end));
        int r;
        if (!buf) {
            return -ENOMEM;
        }
        r = prl_file_pread(&k->f, buf, (size_t)(new_end - old_end), old_end);
        room = r == 0 && prl_is_zero(buf, (size_t)(new_end - old_end));
        free(buf);
        if (r < 0) {
            return r;
        }
    }
    if (room) {
        /* The new entries are zero, on disk and so in the list. */
        k->nbat = need;
        h->bat_entries = (uint32_t)need;
        k->header_changed = true;
        fixed(k,
              "grew nb_bat_entries to %" PRIu64 " into zeroed space "
              "before the data area",
              need);
    } else {
        uint64_t old = h->nb_sectors;
        h->nb_sectors = (uint64_t)h->bat_entries * h->tracks;
        k->header_changed = true;
        fixed(k,
              "reduced nb_sectors from %" PRIu64 " to %" PRIu64
              " (the BAT could not grow; no cluster held data there)",
              old, h->nb_sectors);
    }
    return 0;
}

static int cmp_ref(const void *a, const void *b)
{
    const struct ref *x = a, *y = b;

    if (x->off != y->off) {
        return x->off < y->off ? -1 : 1;
    }
    /* BAT entries (owner >= 0) sort after metadata, lower index first. */
    return x->owner < y->owner ? -1 : x->owner > y->owner;
}

static int add_ref(struct chk *k, uint64_t off, uint64_t len, int64_t owner)
{
    if (k->n_refs == k->cap_refs) {
        size_t cap = k->cap_refs ? 2 * k->cap_refs : 64;
        struct ref *n = realloc(k->refs, cap * sizeof(*n));
        if (!n) {
            return prl_error(ENOMEM, "out of memory");
        }
        k->refs = n;
        k->cap_refs = cap;
    }
    k->refs[k->n_refs++] = (struct ref){off, len, owner};
    return 0;
}

/* Sort the references in cmp_ref order.  A stable LSD radix sort on the
 * offset, a byte per pass, then equal offsets put in owner order: qsort's
 * comparisons were most of the time of a check of a large image. */
static int sort_refs(struct chk *k)
{
    size_t n = k->n_refs;
    uint64_t bits = 0;
    struct ref *src = k->refs, *dst, *tmp;

    if (n < 2) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        bits |= src[i].off;
    }
    tmp = prl_malloc(n * sizeof(*tmp));
    if (!tmp) {
        return -ENOMEM;
    }
    dst = tmp;
    for (unsigned shift = 0; shift < 64 && (bits >> shift); shift += 8) {
        size_t count[256] = {0}, pos = 0;
        for (size_t i = 0; i < n; i++) {
            count[(src[i].off >> shift) & 0xff]++;
        }
        if (count[(src[0].off >> shift) & 0xff] == n) {
            continue; /* one digit for all: nothing moves */
        }
        for (unsigned d = 0; d < 256; d++) {
            size_t c = count[d];
            count[d] = pos;
            pos += c;
        }
        for (size_t i = 0; i < n; i++) {
            dst[count[(src[i].off >> shift) & 0xff]++] = src[i];
        }
        struct ref *t = src;
        src = dst;
        dst = t;
    }
    if (src != k->refs) {
        memcpy(k->refs, src, n * sizeof(*src));
    }
    free(tmp);
    /* Runs of equal offsets are short: insertion sort by owner. */
    for (size_t i = 1; i < n; i++) {
        struct ref x = k->refs[i];
        size_t j = i;
        while (j > 0 && cmp_ref(&k->refs[j - 1], &x) > 0) {
            k->refs[j] = k->refs[j - 1];
            j--;
        }
        k->refs[j] = x;
    }
    return 0;
}

/* The rules of non-zero entry ents[t]: position, alignment, inside the
 * file, inside the virtual size. */
static int check_entry(struct chk *k, size_t t)
{
    uint64_t cs = k->lay.cluster_size;
    uint64_t c = k->ents[t].c;
    uint32_t e = k->ents[t].e;
    uint64_t off = entry_off(k, e);
    const char *why;
    uint64_t to;
    int r;

    if (c >= k->needed) {
        k->misplaced[t] = 1;
        add_finding(k, PRL_FINDING_CORRUPTION, "bat-beyond-size", (int64_t)c,
                    off,
                    "BAT entry %" PRIu64 " = %" PRIu32 " maps guest "
                    "offset %" PRIu64 ", beyond the virtual size %" PRIu64,
                    c, e, c * cs, k->lay.virtual_size);
        if (k->fix_errors) {
            k->ents[t].e = 0;
            k->bat_changed = true;
            fixed(k, "cleared the entry (not guest-visible)");
        }
        return 0;
    }
    if (off < k->lay.bat_end || off >= k->file_size) {
        why = off < k->lay.bat_end ? "lies inside the header or BAT"
                                   : "is past the end of the file";
        k->misplaced[t] = 1;
        add_finding(k, PRL_FINDING_CORRUPTION,
                    off < k->lay.bat_end ? "bat-in-header" : "bat-past-eof",
                    (int64_t)c, off,
                    "BAT entry %" PRIu64 " = %" PRIu32 " (byte offset %" PRIu64
                    ") %s",
                    c, e, off, why);
        if (k->fix_errors) {
            k->ents[t].e = 0;
            k->bat_changed = true;
            fixed(k,
                  "cleared the entry: the data of guest offset %" PRIu64
                  " is lost",
                  c * cs);
            lost(k, c * cs);
        }
        return 0;
    }
    if (off < k->lay.data_off || !on_grid(k, off)) {
        k->misplaced[t] = 1;
        add_finding(
            k, PRL_FINDING_CORRUPTION,
            off < k->lay.data_off ? "bat-below-data" : "bat-misaligned",
            (int64_t)c, off,
            "BAT entry %" PRIu64 " = %" PRIu32 " (byte offset %" PRIu64 ") %s",
            c, e, off,
            off < k->lay.data_off ? "lies below the data area"
                                  : "is not aligned to a cluster of the data "
                                    "area");
        if (k->fix_errors) {
            r = copy_to_new_cluster(k, off, cs, &to);
            if (r < 0) {
                return r;
            }
            k->ents[t].e = (uint32_t)(to / k->lay.entry_unit);
            k->bat_changed = true;
            fixed(k, "copied the cluster to byte offset %" PRIu64, to);
        }
        return 0;
    }
    if (k->file_size - off < cs) {
        add_finding(k, PRL_FINDING_CORRUPTION, "bat-partial", (int64_t)c, off,
                    "BAT entry %" PRIu64 " = %" PRIu32 " (byte "
                    "offset %" PRIu64 "): its cluster is only partly "
                    "inside the file (%" PRIu64 " bytes)",
                    c, e, off, k->file_size);
        if (k->fix_errors) {
            r = prl_file_truncate(&k->f, off + cs);
            if (r < 0) {
                return r;
            }
            k->file_size = off + cs;
            k->append = PRL_MAX(k->append, off + cs);
            fixed(k,
                  "extended the file to %" PRIu64 " bytes; the "
                  "missing part reads as zeroes",
                  off + cs);
        }
    }
    return 0;
}

/* Judge every entry and count the allocated ones (as the BAT stands
 * after the per-entry repairs). */
static int check_entries(struct chk *k)
{
    int r;

    k->misplaced = prl_calloc(PRL_MAX(k->n_ents, 1), 1);
    if (!k->misplaced) {
        return -ENOMEM;
    }
    k->allocated = 0;
    for (size_t t = 0; t < k->n_ents; t++) {
        r = check_entry(k, t);
        if (r < 0) {
            return r;
        }
        k->allocated += k->ents[t].e != 0;
    }
    return 0;
}

/* Each BAT entry's cluster inside the file, as a reference of its own
 * (owner: its place in ents[]) for check_overlaps to sort and judge. */
static int add_entry_refs(struct chk *k)
{
    for (size_t t = 0; t < k->n_ents; t++) {
        uint64_t off = entry_off(k, k->ents[t].e);
        if (k->ents[t].e && off < k->file_size) {
            int r = add_ref(k, off, k->lay.cluster_size, (int64_t)t);
            if (r < 0) {
                return r;
            }
        }
    }
    return 0;
}

/* In *n, the bits of a map with one per cluster of the data area that
 * starts inside the file; false when such a map would outweigh a
 * reference per entry (a sparse file of small clusters), and the caller
 * must sort references instead. */
static bool map_bits(const struct chk *k, uint64_t *n)
{
    uint64_t cs = k->lay.cluster_size, d = k->lay.data_off;

    *n = k->file_size > d ? prl_div_round_up(k->file_size - d, cs) : 0;
    /* A struct ref is 24 bytes, and as many again while sorted. */
    return *n / 8 <=
           ((uint64_t)1 << 20) + 48 * ((uint64_t)k->n_ents + k->n_refs);
}

/* First index in [i, n) whose bit in |map| is |v|, else n. */
static uint64_t map_find(const uint64_t *map, uint64_t n, uint64_t i, bool v)
{
    while (i < n) {
        uint64_t w = v ? map[i / 64] : ~map[i / 64];
        w &= UINT64_MAX << (i % 64);
        if (w) {
            return PRL_MIN(n, i - i % 64 + (uint64_t)__builtin_ctzll(w));
        }
        i = i - i % 64 + 64;
    }
    return n;
}

/* Replace k->refs (the extension's) by the runs of clusters |map| marks,
 * in order, the extension's cluster |ext| a reference of its own. */
static int map_runs(struct chk *k, const uint64_t *map, uint64_t n,
                    uint64_t ext)
{
    uint64_t cs = k->lay.cluster_size, d = k->lay.data_off;

    k->n_refs = 0;
    for (uint64_t a = map_find(map, n, 0, true); a < n;
         a = map_find(map, n, a, true)) {
        uint64_t b = map_find(map, n, a, false);
        /* Split [a, b) around ext. */
        uint64_t end = ext < a || ext >= b ? b : ext == a ? a + 1 : ext;
        int r = add_ref(k, d + a * cs, (end - a) * cs,
                        a == ext ? REF_EXT : REF_RUN);
        if (r < 0) {
            return r;
        }
        a = end;
    }
    return 0;
}

/* When every referenced cluster sits on the grid of the data area and
 * none is named twice (any image prl or QEMU wrote), nothing overlaps:
 * a bit per cluster of the file finds that in one pass over the entries,
 * and k->refs becomes the runs of used clusters, sorted, without a sort.
 * Returns 1 then; 0 with k->refs unchanged when the image is not like
 * that, or when the map would outweigh a reference per entry (a sparse
 * file of small clusters), and check_overlaps must judge each entry. */
static int map_refs(struct chk *k)
{
    uint64_t d = k->lay.data_off;
    uint64_t n, ext = UINT64_MAX, *map;
    bool ok = true;
    int r;

    if (!map_bits(k, &n)) {
        return 0;
    }
    map = prl_calloc((size_t)PRL_MAX(prl_div_round_up(n, 64), 1), 8);
    if (!map) {
        return -ENOMEM;
    }
    for (size_t i = 0; ok && i < k->n_refs + k->n_ents; i++) {
        uint64_t off, x;
        if (i < k->n_refs) {
            off = k->refs[i].off;
            if (k->refs[i].owner == REF_EXT) {
                ext = grid_index(k, off);
            }
        } else {
            uint32_t e = k->ents[i - k->n_refs].e;
            off = entry_off(k, e);
            if (e == 0 || off >= k->file_size) {
                continue;
            }
        }
        if (off < d || !on_grid(k, off)) {
            ok = false;
            break;
        }
        x = grid_index(k, off);
        if (x >= n || (map[x / 64] >> (x % 64)) & 1) {
            ok = false;
            break;
        }
        map[x / 64] |= (uint64_t)1 << (x % 64);
    }
    r = ok ? map_runs(k, map, n, ext) : 0;
    free(map);
    return r < 0 ? r : ok;
}

/* A feature prl does not know: marked NECESSARY, the file must not be
 * changed at all (parallels.rst). */
static int unknown_feature(struct chk *k, const struct parallels_feature *f)
{
    if (f->flags & PARALLELS_FEATURE_NECESSARY) {
        k->necessary = true;
        return add_finding(k, PRL_FINDING_NOTE, "ext-necessary", -1,
                           k->h.ext_off * PARALLELS_SECTOR,
                           "Format "
                           "Extension feature 0x%016" PRIx64 " is unknown "
                           "and marked NECESSARY: the file must not be "
                           "changed, so nothing is repaired",
                           f->magic);
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* For bat_uses: when every BAT entry inside the file sits on the grid
 * (any image prl or QEMU wrote), a bit per cluster they name; else their
 * offsets, sorted, for partial overlaps. */
static int bat_uses_init(struct chk *k)
{
    uint64_t n, *map;

    if (map_bits(k, &n)) {
        map = prl_calloc((size_t)PRL_MAX(prl_div_round_up(n, 64), 1), 8);
        if (!map) {
            return -ENOMEM;
        }
        size_t t = 0;
        for (; t < k->n_ents; t++) {
            uint64_t off = entry_off(k, k->ents[t].e), x;
            if (k->ents[t].e == 0 || off >= k->file_size) {
                continue;
            }
            if (off < k->lay.data_off || !on_grid(k, off)) {
                break;
            }
            x = grid_index(k, off);
            map[x / 64] |= (uint64_t)1 << (x % 64);
        }
        if (t == k->n_ents) {
            k->bat_map = map;
            k->bat_map_n = n;
            return 0;
        }
        free(map);
    }
    k->bat_sorted = prl_malloc(PRL_MAX(k->n_ents, 1) * 8);
    if (!k->bat_sorted) {
        return -ENOMEM;
    }
    for (size_t t = 0; t < k->n_ents; t++) {
        uint64_t e = entry_off(k, k->ents[t].e);
        if (k->ents[t].e && e < k->file_size) {
            k->bat_sorted[k->n_bat_sorted++] = e;
        }
    }
    qsort(k->bat_sorted, k->n_bat_sorted, 8, cmp_u64);
    return 0;
}

/* True when [off, off + cluster) shares bytes with a cluster a BAT entry
 * names (inside the file).  |off| is a cluster of the data area inside
 * the file. */
static int bat_uses(struct chk *k, uint64_t off, bool *used)
{
    uint64_t cs = k->lay.cluster_size;

    if (!k->bat_map && !k->bat_sorted) {
        int r = bat_uses_init(k);
        if (r < 0) {
            return r;
        }
    }
    if (k->bat_map) {
        /* On the grid both: sharing bytes is being the same cluster. */
        uint64_t x = grid_index(k, off);
        *used = x < k->bat_map_n && (k->bat_map[x / 64] >> (x % 64)) & 1;
        return 0;
    }
    /* The last entry below off + cs overlaps when it ends past off. */
    size_t lo = 0, hi = k->n_bat_sorted;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (k->bat_sorted[mid] < off + cs) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    *used = lo > 0 && k->bat_sorted[lo - 1] + cs > off;
    return 0;
}

/* The rules the driver applies when it loads dirty bitmap feature |i|
 * (size, granularity, id, l1_size, L1 entries), and that each cluster
 * its L1 table names is its own: not the extension's, not guest data,
 * not another bitmap's, not named twice.  Adds its clusters to the list;
 * -EINVAL with |err| when it is invalid (its clusters then stay listed
 * for the caller to remove). */
static int check_bitmap(struct chk *k, const struct parallels_feature *f,
                        size_t i, uint8_t (*ids)[16], size_t n_ids,
                        uint64_t ext, char *err, size_t errlen)
{
    uint64_t cs = k->lay.cluster_size;
    struct parallels_bitmap_info b;
    size_t first = k->n_refs;
    int r;

    r = parallels_bitmap_decode(k->ext_buf + f->data_pos, f->data_size, &b, err,
                                errlen);
    if (r < 0) {
        return r;
    }
    r = parallels_bitmap_check_shape(&b, k->lay.virtual_size / PARALLELS_SECTOR,
                                     cs, err, errlen);
    if (r < 0) {
        return r;
    }
    for (size_t j = 0; j < n_ids; j++) {
        if (memcmp(ids[j], b.id, 16) == 0) {
            char name[PRL_BITMAP_NAME_SIZE];
            prl_uuid_unparse(b.id, name);
            snprintf(err, errlen, "id = %s is the id of an earlier bitmap",
                     name);
            return -EINVAL;
        }
    }
    for (uint32_t j = 0; j < b.l1_size; j++) {
        uint64_t e = parallels_get_le64(b.l1 + (size_t)j * 8), off;
        const char *why;
        bool used = false;
        if (e <= 1) {
            continue;
        }
        why = parallels_sector_offset_problem(&k->lay, e, k->file_size, &off);
        if (!why && off < ext + cs && ext < off + cs) {
            why = "is the Format Extension's own cluster";
        }
        if (!why) {
            r = bat_uses(k, off, &used);
            if (r < 0) {
                return r;
            }
            why = used ? "is a cluster of guest data" : NULL;
        }
        if (why) {
            snprintf(err, errlen, "L1 entry %" PRIu32 " = %" PRIu64 " %s", j, e,
                     why);
            return -EINVAL;
        }
        r = add_ref(k, off, cs, REF_BITMAP(i));
        if (r < 0) {
            return r;
        }
    }
    /* Only bitmap clusters are listed yet: equal offsets next to each
     * other after sorting, one of them this bitmap's, are a cluster
     * named twice. */
    if (k->n_refs > first) {
        r = sort_refs(k);
        if (r < 0) {
            return r;
        }
        for (size_t j = 1; j < k->n_refs; j++) {
            const struct ref *x = &k->refs[j - 1], *y = &k->refs[j];
            if (x->off == y->off &&
                (x->owner == REF_BITMAP(i) || y->owner == REF_BITMAP(i))) {
                snprintf(err, errlen,
                         "an L1 entry names the cluster at "
                         "byte %" PRIu64 ", which %s",
                         x->off,
                         x->owner == y->owner ? "another of its entries "
                                                "names"
                                              : "an earlier bitmap uses");
                return -EINVAL;
            }
        }
    }
    memcpy(ids[n_ids], b.id, 16);
    return 0;
}

/* Bitmap feature |i| is invalid: its clusters are not the image's; -r all
 * drops it from the extension (and its clusters as leaks), keeping the
 * other bitmaps.  Marked NECESSARY, nothing may change. */
static int invalid_bitmap(struct chk *k, const struct parallels_feature *f,
                          size_t i, uint64_t ext, const char *err)
{
    char name[PRL_BITMAP_NAME_SIZE] = "?";
    size_t w = 0;
    int r;

    for (size_t j = 0; j < k->n_refs; j++) {
        if (k->refs[j].owner != REF_BITMAP(i)) {
            k->refs[w++] = k->refs[j];
        }
    }
    k->n_refs = w;
    if (f->data_size >= 24) {
        prl_uuid_unparse(k->ext_buf + f->data_pos + 8, name);
    }
    if (f->flags & PARALLELS_FEATURE_NECESSARY) {
        k->necessary = true;
        r = add_finding(k, PRL_FINDING_NOTE, "ext-necessary", -1, ext,
                        "dirty bitmap %s is marked NECESSARY and cannot be "
                        "loaded: the file must not be changed, so nothing "
                        "is repaired",
                        name);
        if (r < 0) {
            return r;
        }
    }
    r = add_finding(k, PRL_FINDING_CORRUPTION, "bitmap-invalid", -1, ext,
                    "dirty bitmap %s (feature %zu of the Format Extension "
                    "at byte %" PRIu64 ") is invalid: %s",
                    name, i, ext, err);
    if (r == 0 && k->fix_errors) {
        k->ext_drop[i] = true;
        k->n_dropped++;
        fixed(k, "dropped this bitmap; the others are kept");
    }
    return r;
}

/* ext_off and the Format Extension: the clusters it owns, or why it is
 * dropped. */
static int check_ext(struct chk *k)
{
    uint64_t cs = k->lay.cluster_size, off;
    const char *why = NULL;
    struct parallels_ext ext;
    uint8_t(*ids)[16] = NULL;
    size_t n_ids = 0;
    uint8_t *buf;
    char err[256];
    int r;

    if (k->h.ext_off == 0) {
        return 0;
    }
    why = parallels_sector_offset_problem(&k->lay, k->h.ext_off, k->file_size,
                                          &off);
    if (why) {
        add_finding(k, PRL_FINDING_CORRUPTION, "ext-off", -1,
                    PARALLELS_OFF_EXT_OFF,
                    "header field ext_off = %" PRIu64 " (byte %" PRIu64 ") %s",
                    k->h.ext_off, off, why);
        if (k->fix_errors) {
            k->h.ext_off = 0;
            k->header_changed = true;
            fixed(k, "dropped the Format Extension");
        }
        return 0;
    }
    buf = prl_malloc((size_t)cs);
    if (!buf) {
        return -ENOMEM;
    }
    r = prl_file_pread(&k->f, buf, (size_t)cs, off);
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
        add_finding(k, PRL_FINDING_CORRUPTION, "ext-invalid", -1, off,
                    "the Format Extension at byte %" PRIu64 " is invalid: %s",
                    off, err);
        if (k->fix_errors) {
            k->h.ext_off = 0;
            k->header_changed = true;
            fixed(k, "dropped the Format Extension");
        }
        return 0;
    }
    k->ext_buf = buf;
    k->ext_drop = prl_calloc(PRL_MAX(ext.n_features, 1), sizeof(bool));
    ids = prl_calloc(PRL_MAX(ext.n_features, 1), 16);
    if (!k->ext_drop || !ids) {
        parallels_ext_free(&ext);
        free(ids);
        return -ENOMEM;
    }
    /* The clusters of every valid bitmap belong to the image. */
    for (size_t i = 0; r == 0 && i < ext.n_features; i++) {
        struct parallels_feature *f = &ext.features[i];
        if (f->magic != PARALLELS_FEATURE_DIRTY_BITMAP &&
            f->magic != PARALLELS_FEATURE_PRL_ATTRS) {
            r = unknown_feature(k, f);
            continue;
        }
        if (f->magic != PARALLELS_FEATURE_DIRTY_BITMAP) {
            continue;
        }
        r = check_bitmap(k, f, i, ids, n_ids, off, err, sizeof(err));
        if (r == 0) {
            n_ids++;
        } else if (r == -EINVAL) {
            r = invalid_bitmap(k, f, i, off, err);
        }
    }
    parallels_ext_free(&ext);
    free(ids);
    if (r < 0) {
        return r;
    }
    k->ext_valid = true;
    return add_ref(k, off, cs, REF_EXT);
}

/* Overlapping clusters: a BAT entry sharing bytes with another gets its
 * own copy; one sharing with extension metadata wins over it. */
static int check_overlaps(struct chk *k)
{
    uint64_t cs = k->lay.cluster_size;
    int r;

    /* add_entry_refs listed the BAT's clusters after the metadata's. */
    r = sort_refs(k);
    if (r < 0) {
        return r;
    }

    /* Extension metadata colliding with guest data: guest data wins. */
    bool drop_ext = false;
    for (size_t i = 1; i < k->n_refs; i++) {
        struct ref *a = &k->refs[i - 1], *b = &k->refs[i];
        for (size_t j = i; j < k->n_refs && k->refs[j].off < a->off + a->len;
             j++) {
            b = &k->refs[j];
            if ((a->owner < 0) != (b->owner < 0)) {
                drop_ext = true;
            }
        }
    }
    if (drop_ext) {
        add_finding(k, PRL_FINDING_CORRUPTION, "ext-collision", -1,
                    k->h.ext_off * PARALLELS_SECTOR,
                    "the Format Extension "
                    "or its bitmaps share clusters with guest data");
        if (k->fix_errors) {
            size_t w = 0;
            for (size_t i = 0; i < k->n_refs; i++) {
                if (k->refs[i].owner >= 0) {
                    k->refs[w++] = k->refs[i];
                }
            }
            k->n_refs = w;
            k->h.ext_off = 0;
            k->header_changed = true;
            fixed(k, "dropped the Format Extension; guest data kept");
        }
    }

    /* BAT entries sharing bytes.  Extension metadata is not a holder: a
     * BAT entry on it is the ext-collision above.  Without -r all a
     * misplaced entry is still in the list; an overlap it causes is
     * reported on it, not on the valid entry it lands on. */
    uint64_t end = 0;
    int64_t holder = -1;
    bool moved = false;
    for (size_t i = 0; i < k->n_refs; i++) {
        struct ref *x = &k->refs[i];
        if (x->owner < 0) {
            continue;
        }
        if (holder >= 0 && x->off < end) {
            /* Places in ents[]: x's, and the entries blamed and named. */
            size_t t = (size_t)x->owner, on = t, with = (size_t)holder;
            uint64_t to;
            if (!k->fix_errors && k->misplaced[holder] && !k->misplaced[t]) {
                on = (size_t)holder;
                with = t;
            }
            add_finding(k, PRL_FINDING_CORRUPTION,
                        entry_off(k, k->ents[holder].e) == x->off
                            ? "bat-duplicate"
                            : "bat-overlap",
                        (int64_t)k->ents[on].c, entry_off(k, k->ents[on].e),
                        "BAT entry %" PRIu32 " = %" PRIu32
                        " (byte offset %" PRIu64 ") shares "
                        "bytes with BAT entry %" PRIu32,
                        k->ents[on].c, k->ents[on].e,
                        entry_off(k, k->ents[on].e), k->ents[with].c);
            if (k->fix_errors) {
                r = copy_to_new_cluster(k, x->off, cs, &to);
                if (r < 0) {
                    return r;
                }
                k->ents[t].e = (uint32_t)(to / k->lay.entry_unit);
                k->bat_changed = true;
                x->off = to;
                moved = true;
                fixed(k,
                      "copied the shared cluster to byte offset %" PRIu64
                      " so both entries keep their data",
                      to);
            }
            continue;
        }
        if (x->off + x->len > end) {
            end = x->off + x->len;
            holder = x->owner;
        }
    }
    /* Copies moved refs: keep the list sorted for the leak scan. */
    return moved ? sort_refs(k) : 0;
}

/* Clusters of the data area that occupy space nothing references: an
 * interior gap counts only where it holds data (a punched hole costs
 * nothing and is reused by the driver), the tail past the last referenced
 * cluster always counts. */
/* True when [off, off+len) of the file reads as zeroes. */
static int range_is_zero(struct chk *k, uint64_t off, uint64_t len, bool *zero)
{
    size_t chunk = (size_t)PRL_MIN(len, (uint64_t)1 << 20);
    uint8_t *buf = prl_malloc(chunk);
    int r = 0;

    if (!buf) {
        return -ENOMEM;
    }
    *zero = true;
    while (len > 0 && *zero) {
        size_t n = (size_t)PRL_MIN(len, (uint64_t)chunk);
        r = prl_file_pread(&k->f, buf, n, off);
        if (r < 0) {
            break;
        }
        *zero = prl_is_zero(buf, n);
        off += n;
        len -= n;
    }
    free(buf);
    return r;
}

static int count_data_clusters(struct chk *k, uint64_t from, uint64_t to,
                               bool punch, uint64_t *n)
{
    uint64_t cs = k->lay.cluster_size;
    uint64_t pos = from;
    int r;

    *n = 0;
    while (pos < to) {
        bool data;
        uint64_t len;
        r = prl_file_extent(&k->f, pos, to - pos, &data, &len);
        if (r < 0) {
            return r;
        }
        if (!data) {
            pos += len;
            continue;
        }
        /* Each grid cluster (clipped to the gap) touched by this data run
         * is a leak when it holds non-zero bytes; a cluster smaller than
         * a file-system block can sit in "data" and still be zero. */
        uint64_t end = PRL_MIN(pos + len, to);
        while (pos < end) {
            uint64_t a =
                k->lay.data_off + prl_round_down(pos - k->lay.data_off, cs);
            uint64_t b = PRL_MIN(a + cs, to);
            bool zero;
            a = PRL_MAX(a, from);
            r = range_is_zero(k, a, b - a, &zero);
            if (r < 0) {
                return r;
            }
            if (!zero) {
                (*n)++;
                if (punch) {
                    /* A punch zeroes partial blocks too. */
                    r = prl_file_punch(&k->f, a, b - a);
                    if (r == -ENOTSUP) {
                        r = prl_file_zero(&k->f, a, b - a, false, false);
                    }
                    if (r < 0) {
                        return r;
                    }
                }
            }
            pos = b;
        }
    }
    return 0;
}

static int check_leaks(struct chk *k)
{
    uint64_t cs = k->lay.cluster_size;
    uint64_t pos = k->lay.data_off, used_end = k->lay.data_off;
    uint64_t interior = 0, tail = 0, n;
    int r;

    for (size_t i = 0; i < k->n_refs; i++) {
        struct ref *x = &k->refs[i];
        if (x->off > pos && pos < k->file_size) {
            r = count_data_clusters(k, pos, PRL_MIN(x->off, k->file_size),
                                    k->fix_leaks, &n);
            if (r < 0) {
                return r;
            }
            interior += n;
        }
        pos = PRL_MAX(pos, x->off + x->len);
        used_end = PRL_MAX(used_end, x->off + x->len);
    }
    k->res->image_end_offset = used_end;
    if (k->file_size > used_end) {
        tail = prl_div_round_up(k->file_size - used_end, cs);
    }
    if (interior) {
        add_finding(k, PRL_FINDING_LEAK, "leak", -1, k->lay.data_off,
                    "%" PRIu64 " cluster(s) inside the data area hold data "
                    "that nothing references",
                    interior);
        k->res->leaks += (int)PRL_MIN(interior - 1, (uint64_t)INT32_MAX);
        if (k->fix_leaks) {
            fixed(k, "punched holes over them");
            k->res->leaks -= (int)PRL_MIN(interior - 1, (uint64_t)INT32_MAX);
            k->res->leaks_fixed +=
                (int)PRL_MIN(interior - 1, (uint64_t)INT32_MAX);
        }
    }
    if (tail) {
        add_finding(k, PRL_FINDING_LEAK, "leak-tail", -1, used_end,
                    "%" PRIu64 " bytes (%" PRIu64 " cluster(s)) past the last "
                    "referenced cluster (byte %" PRIu64 ") are leaked",
                    k->file_size - used_end, tail, used_end);
        k->res->leaks += (int)PRL_MIN(tail - 1, (uint64_t)INT32_MAX);
        if (k->fix_leaks) {
            r = prl_file_truncate(&k->f, used_end);
            if (r < 0) {
                return r;
            }
            k->file_size = used_end;
            fixed(k, "truncated the file to %" PRIu64 " bytes", used_end);
            k->res->leaks -= (int)PRL_MIN(tail - 1, (uint64_t)INT32_MAX);
            k->res->leaks_fixed += (int)PRL_MIN(tail - 1, (uint64_t)INT32_MAX);
        }
    }
    return 0;
}

static int write_back(struct chk *k)
{
    uint8_t hbuf[PARALLELS_HEADER_SIZE];
    int r = 0;

    if (k->bat_changed || k->header_changed) {
        /* Copies first, then the BAT, then the header. */
        r = prl_file_sync(&k->f);
    }
    if (r == 0 && k->bat_changed) {
        /* The BAT is zero but for the listed entries. */
        uint32_t *le = prl_malloc(BAT_CHUNK * 4);
        size_t t = 0;
        if (!le) {
            return -ENOMEM;
        }
        for (uint64_t first = 0; r == 0 && first < k->nbat;
             first += BAT_CHUNK) {
            size_t m = (size_t)PRL_MIN(k->nbat - first, (uint64_t)BAT_CHUNK);
            memset(le, 0, m * 4);
            for (; t < k->n_ents && k->ents[t].c < first + m; t++) {
                le[k->ents[t].c - first] = htole32(k->ents[t].e);
            }
            r = prl_file_pwrite(&k->f, le, m * 4,
                                PARALLELS_HEADER_SIZE + first * 4);
        }
        free(le);
        if (r == 0) {
            r = prl_file_sync(&k->f);
        }
    }
    if (r == 0 && k->header_changed) {
        parallels_header_encode(&k->h, hbuf);
        r = prl_file_pwrite(&k->f, hbuf, sizeof(hbuf), 0);
        if (r == 0) {
            r = prl_file_sync(&k->f);
        }
    }
    return r;
}

/* Once the header names the new extension (|end|: the end of its
 * cluster, 0 when there is none), the old one at |old| is punched, and
 * when it was the last cluster of the file the file ends after what is
 * still referenced. */
static void free_old_ext(struct chk *k, uint64_t old, uint64_t end)
{
    uint64_t cs = k->lay.cluster_size;

    k->pending_free = old;
    k->pending_end = 0;
    if (old + cs < k->file_size) {
        return;
    }
    end = PRL_MAX(end, k->lay.data_off);
    for (size_t i = 0; i < k->n_refs; i++) {
        if (k->refs[i].owner != REF_EXT) {
            end = PRL_MAX(end, k->refs[i].off + k->refs[i].len);
        }
    }
    k->pending_end = end < k->file_size ? end : 0;
}

/* Punch the old extension cluster (see free_old_ext). */
static int punch_old_ext(struct chk *k)
{
    int r = 0;

    if (k->pending_free) {
        r = prl_file_punch(&k->f, k->pending_free, k->lay.cluster_size);
        r = r == -ENOTSUP ? 0 : r;
    }
    if (r == 0 && k->pending_end) {
        r = prl_file_truncate(&k->f, k->pending_end);
        if (r == 0) {
            k->file_size = k->pending_end;
        }
    }
    return r;
}

/* A cluster of the data area nothing references, below the last one
 * something does when there is such a hole (QEMU 7.2 counts whatever
 * follows the last BAT cluster as leaked, and its repair truncates it),
 * else the next one past everything.  The list is sorted. */
static uint64_t free_cluster(const struct chk *k)
{
    uint64_t cs = k->lay.cluster_size, pos = k->lay.data_off;

    for (size_t i = 0; i < k->n_refs; i++) {
        const struct ref *x = &k->refs[i];
        if (x->off >= pos + cs) {
            return pos;
        }
        pos = PRL_MAX(pos, grid_up(k, x->off + x->len));
    }
    return k->append;
}

/* Write the Format Extension anew into a fresh cluster: without the
 * bitmaps -r all drops, and with every bitmap marked inconsistent when
 * |inconsistent|.  The header switches to it in write_back and the old
 * cluster is punched after; an extension left with no bitmap and no
 * other feature is dropped instead. */
static int rewrite_ext(struct chk *k, bool inconsistent)
{
    uint64_t cs = k->lay.cluster_size;
    uint64_t old = k->h.ext_off * PARALLELS_SECTOR, to;
    struct parallels_ext_writer w;
    struct parallels_ext ext;
    size_t bitmaps = 0, others = 0;
    uint8_t *kept, *out;
    char err[128];
    int r;

    r = parallels_ext_parse(k->ext_buf, (size_t)cs, &ext, err, sizeof(err));
    if (r < 0) {
        return prl_error(EINVAL, "Format Extension: %s", err);
    }
    for (size_t i = 0; i < ext.n_features; i++) {
        if (ext.features[i].magic == PARALLELS_FEATURE_DIRTY_BITMAP) {
            bitmaps += !k->ext_drop[i];
        } else if (ext.features[i].magic != PARALLELS_FEATURE_PRL_ATTRS) {
            others++;
        }
    }
    kept = prl_malloc((size_t)cs);
    out = prl_malloc((size_t)cs);
    if (!kept || !out) {
        r = -ENOMEM;
        goto out;
    }
    parallels_ext_writer_init(&w, kept, (size_t)cs);
    for (size_t i = 0; r == 0 && i < ext.n_features; i++) {
        struct parallels_feature *f = &ext.features[i];
        /* prl's attributes name bitmaps: kept while one is. */
        if (k->ext_drop[i] ||
            (f->magic == PARALLELS_FEATURE_PRL_ATTRS && !bitmaps)) {
            continue;
        }
        r = parallels_ext_writer_add(&w, f->magic, f->flags,
                                     k->ext_buf + f->data_pos, f->data_size);
    }
    if (r == 0) {
        r = parallels_ext_writer_finish(&w);
    }
    if (r == 0 && inconsistent && bitmaps) {
        r = parallels_ext_mark_inconsistent(kept, out, (size_t)cs);
    } else if (r == 0) {
        memcpy(out, kept, (size_t)cs);
    }
    if (r < 0) {
        goto out;
    }
    if (bitmaps + others == 0) {
        k->h.ext_off = 0;
        k->header_changed = true;
        free_old_ext(k, old, 0);
        goto out;
    }
    to = free_cluster(k);
    r = prl_file_pwrite(&k->f, out, (size_t)cs, to);
    if (r == 0) {
        if (to == k->append) {
            k->append = to + cs;
        }
        k->file_size = PRL_MAX(k->file_size, to + cs);
        r = prl_file_sync(&k->f);
    }
    if (r == 0 && inconsistent && bitmaps) {
        r = add_finding(k, PRL_FINDING_NOTE, "bitmaps-inconsistent", -1, to,
                        "the dirty bitmaps missed the writes of the "
                        "unclean session");
        if (r == 0) {
            fixed(k,
                  "marked them inconsistent (Format Extension moved to "
                  "byte %" PRIu64 ")",
                  to);
        }
    }
    if (r == 0) {
        k->h.ext_off = to / PARALLELS_SECTOR;
        k->header_changed = true;
        free_old_ext(k, old, to + cs);
    }
out:
    parallels_ext_free(&ext);
    free(kept);
    free(out);
    return r;
}

/* A NECESSARY feature prl cannot load: the file must not change.  The
 * repairs decided before the extension was read (header fields) are not
 * written yet; take them back and only check from here on. */
static void forbid_repairs(struct chk *k)
{
    for (size_t i = 0; i < k->res->n_findings; i++) {
        struct prl_finding *f = &k->res->findings[i];
        if (!f->fixed) {
            continue;
        }
        f->fixed = false;
        f->data_lost = false;
        free(f->action);
        f->action = NULL;
        if (f->cls == PRL_FINDING_CORRUPTION) {
            k->res->corruptions++;
            k->res->corruptions_fixed--;
        } else if (f->cls == PRL_FINDING_LEAK) {
            k->res->leaks++;
            k->res->leaks_fixed--;
        }
    }
    k->fix_errors = k->fix_leaks = false;
    k->header_changed = k->bat_changed = false;
}

static int run_check(struct chk *k)
{
    uint8_t hbuf[PARALLELS_HEADER_SIZE];
    char why[256];
    int r, stop;

    r = prl_file_size(&k->f, &k->file_size);
    if (r < 0) {
        return r;
    }
    if (k->file_size < PARALLELS_HEADER_SIZE) {
        add_finding(k, PRL_FINDING_CORRUPTION, "header-truncated", -1, 0,
                    "the file (%" PRIu64 " bytes) is too short for a "
                    "Parallels header (64 bytes)",
                    k->file_size);
        return 0;
    }
    r = prl_file_pread(&k->f, hbuf, sizeof(hbuf), 0);
    if (r < 0) {
        return r;
    }
    parallels_header_decode(hbuf, &k->h);
    stop = check_header(k);
    if (stop < 0) {
        return stop;
    }
    if (stop == 1) {
        return 0;
    }
    r = read_bat(k);
    if (r < 0) {
        return r;
    }
    if (stop == 2) {
        if (k->fix_errors) {
            fix_data_off(k);
        } else {
            return 0; /* no layout to check the rest against */
        }
    }
    r = check_bat_covers(k);
    if (r < 0) {
        return r;
    }
    /* For the rest, judge the header as repaired (or as it is). */
    struct parallels_header lh = k->h;
    if (!k->fix_errors && lh.data_off == 0 && lh.ext) {
        return 0;
    }
    if ((uint64_t)lh.bat_entries * lh.tracks < lh.nb_sectors) {
        lh.nb_sectors = (uint64_t)lh.bat_entries * lh.tracks;
    }
    lh.nb_sectors &= lh.ext ? UINT64_MAX : 0xffffffffu;
    /* A BAT past the end of the file that -r all would extend the file
     * for (check_header) is judged as extended. */
    uint64_t lsize = PRL_MAX(k->file_size, PARALLELS_HEADER_SIZE +
                                               (uint64_t)lh.bat_entries * 4);
    r = parallels_layout(&lh, lsize, &k->lay, why, sizeof(why));
    if (r < 0) {
        add_finding(k, PRL_FINDING_CORRUPTION, "header", -1, 0,
                    "invalid header: %s", why);
        return 0;
    }
    k->needed = prl_div_round_up(lh.nb_sectors, lh.tracks);
    k->cs_shift = prl_is_power_of_2(k->lay.cluster_size)
                      ? __builtin_ctzll(k->lay.cluster_size)
                      : -1;
    k->res->total_clusters = k->nbat;
    k->res->has_clusters = true;

    /* Entries between the BAT and data_off: data_off is too high (past
     * the end of the file, even).  Lowering it keeps every byte those
     * entries reference, where copying them would follow data_off. */
    uint64_t low = UINT64_MAX, high = 0;
    bool any = false;
    for (size_t t = 0; t < k->n_ents; t++) {
        uint64_t e = entry_off(k, k->ents[t].e);
        if (e >= k->file_size) {
            continue;
        }
        if (e >= k->lay.bat_end && e < k->lay.data_off) {
            low = PRL_MIN(low, e);
        }
        high = PRL_MAX(high, e);
        any = true;
    }
    if (low != UINT64_MAX) {
        add_finding(k, PRL_FINDING_CORRUPTION, "data-off", -1,
                    PARALLELS_OFF_DATA_OFF,
                    "header field data_off = %" PRIu32 " (byte %" PRIu64
                    ") lies above BAT entries that "
                    "point at byte %" PRIu64,
                    k->h.data_off, k->lay.data_off, low);
        if (k->fix_errors) {
            fix_data_off(k);
            lh.data_off = k->h.data_off;
            r = parallels_layout(&lh, lsize, &k->lay, why, sizeof(why));
            if (r < 0) {
                add_finding(k, PRL_FINDING_CORRUPTION, "header", -1, 0,
                            "invalid header: %s", why);
                return 0;
            }
        }
    }

    /* Copies go past every referenced cluster inside the file; what lies
     * beyond is leaked space.  (grid_up is monotonic: the highest entry
     * decides.) */
    k->append = k->lay.data_off;
    if (any) {
        k->append = PRL_MAX(k->append, grid_up(k, high + k->lay.cluster_size));
    }
    r = check_ext(k);
    if (r == 0 && k->necessary) {
        forbid_repairs(k);
    }
    for (size_t i = 0; r == 0 && i < k->n_refs; i++) {
        k->append =
            PRL_MAX(k->append, grid_up(k, k->refs[i].off + k->refs[i].len));
    }
    if (r == 0) {
        r = check_entries(k);
    }
    if (r == 0) {
        r = map_refs(k);
        if (r == 0) {
            r = add_entry_refs(k);
            if (r == 0) {
                r = check_overlaps(k);
            }
        } else if (r == 1) {
            r = 0;
        }
    }
    if (r == 0) {
        r = write_back(k);
    }
    if (r < 0) {
        return r;
    }
    /* Empty flag while clusters are allocated: the data is kept. */
    uint64_t allocated = k->allocated;
    k->res->allocated_clusters = allocated;
    if ((k->h.flags & PARALLELS_FLAG_EMPTY) && allocated) {
        add_finding(
            k, PRL_FINDING_CORRUPTION, "empty-flag", -1, PARALLELS_OFF_FLAGS,
            "the Empty flag is set but %" PRIu64 " cluster(s) are allocated",
            allocated);
        if (k->fix_errors) {
            k->h.flags &= ~PARALLELS_FLAG_EMPTY;
            k->header_changed = true;
            fixed(k, "cleared the Empty flag; the allocated clusters are "
                     "kept");
        }
    }
    r = check_leaks(k);
    if (r < 0) {
        return r;
    }
    /* A repair that leaves no corruption closes the image cleanly; -r all
     * also replaces an in_use value the spec does not allow (0 stays: it
     * names old software). */
    bool foreign = k->fix_errors && k->h.in_use != 0 &&
                   k->h.in_use != PARALLELS_IN_USE_CLEAN &&
                   k->h.in_use != PARALLELS_IN_USE_DIRTY;
    bool drop_bitmaps =
        k->fix_errors && k->n_dropped && k->ext_valid && k->h.ext_off;
    bool closing = (k->fix_errors || k->fix_leaks) &&
                   k->res->corruptions == 0 &&
                   (k->header_changed || drop_bitmaps ||
                    k->h.in_use == PARALLELS_IN_USE_DIRTY ||
                    k->res->leaks_fixed || foreign);
    /* Bitmaps that missed the writes of an unclean session are marked so
     * on disk before the image is marked clean. */
    bool inconsistent = closing && k->h.in_use == PARALLELS_IN_USE_DIRTY &&
                        k->ext_valid && k->h.ext_off;
    if (drop_bitmaps || inconsistent) {
        r = rewrite_ext(k, inconsistent);
        if (r < 0) {
            return r;
        }
    }
    if (!closing && k->pending_free) {
        /* Bitmaps dropped while other corruptions remain. */
        k->bat_changed = false;
        r = write_back(k);
        return r == 0 ? punch_old_ext(k) : r;
    }
    if (closing) {
        if (k->h.in_use == PARALLELS_IN_USE_DIRTY || foreign) {
            for (size_t i = 0; i < k->res->n_findings; i++) {
                struct prl_finding *f = &k->res->findings[i];
                if (strcmp(f->kind, "unclean-close") == 0 ||
                    strcmp(f->kind, "in-use-value") == 0) {
                    f->action = strdup("marked the image closed cleanly");
                    f->fixed = true;
                }
            }
            k->h.in_use = PARALLELS_IN_USE_CLEAN;
        }
        k->header_changed = true;
        k->bat_changed = false;
        r = prl_file_sync(&k->f);
        if (r == 0) {
            r = write_back(k);
        }
        if (r == 0) {
            r = punch_old_ext(k);
        }
    }
    return r;
}

int parallels_check(const char *path, unsigned fix,
                    struct prl_check_result *res)
{
    struct chk k;
    int r;

    memset(&k, 0, sizeof(k));
    k.res = res;
    k.fix_leaks = fix & PRL_CHECK_FIX_LEAKS;
    k.fix_errors = fix & PRL_CHECK_FIX_ERRORS;
    r = prl_file_open(&k.f, path, fix != 0, false);
    if (r < 0) {
        return r;
    }
    r = run_check(&k);
    if (r < 0) {
        res->check_errors++;
    }
    free(k.ents);
    free(k.refs);
    free(k.misplaced);
    free(k.ext_buf);
    free(k.ext_drop);
    free(k.bat_sorted);
    free(k.bat_map);
    int r2 = prl_file_close(&k.f);
    return r < 0 ? r : r2;
}
