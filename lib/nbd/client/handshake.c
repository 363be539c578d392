/* SPDX-License-Identifier: MIT */
/* The client side of the fixed-newstyle handshake: greeting, STARTTLS,
 * extended headers or structured replies, metadata contexts, NBD_OPT_GO
 * with block sizes (NBD_OPT_EXPORT_NAME when GO is unknown). */
#include "nbd/client/internal.h"
#include "nbd/wire.h"
#include "common/util.h"
#include "prl/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The oldstyle greeting's second magic. */
#define MAGIC_OLDSTYLE 0x00420281861253ull
/* Option replies longer than this are refused (names and messages are
 * at most 4096 bytes, plus a few fixed fields). */
#define OPT_REPLY_MAX (PRL_NBD_MAX_STRING + 64)
/* Largest READ/WRITE sent, whatever the server allows. */
#define CLIENT_MAX_PAYLOAD (32u << 20)

static const char *opt_name(uint32_t opt)
{
    switch (opt) {
    case PRL_NBD_OPT_EXPORT_NAME:
        return "NBD_OPT_EXPORT_NAME";
    case PRL_NBD_OPT_STARTTLS:
        return "NBD_OPT_STARTTLS";
    case PRL_NBD_OPT_GO:
        return "NBD_OPT_GO";
    case PRL_NBD_OPT_STRUCTURED_REPLY:
        return "NBD_OPT_STRUCTURED_REPLY";
    case PRL_NBD_OPT_SET_META_CONTEXT:
        return "NBD_OPT_SET_META_CONTEXT";
    case PRL_NBD_OPT_EXTENDED_HEADERS:
        return "NBD_OPT_EXTENDED_HEADERS";
    default:
        return "option";
    }
}

static const char *rep_err_name(uint32_t type)
{
    switch (type) {
    case PRL_NBD_REP_ERR_UNSUP:
        return "NBD_REP_ERR_UNSUP";
    case PRL_NBD_REP_ERR_POLICY:
        return "NBD_REP_ERR_POLICY";
    case PRL_NBD_REP_ERR_INVALID:
        return "NBD_REP_ERR_INVALID";
    case PRL_NBD_REP_ERR_PLATFORM:
        return "NBD_REP_ERR_PLATFORM";
    case PRL_NBD_REP_ERR_TLS_REQD:
        return "NBD_REP_ERR_TLS_REQD";
    case PRL_NBD_REP_ERR_UNKNOWN:
        return "NBD_REP_ERR_UNKNOWN";
    case PRL_NBD_REP_ERR_SHUTDOWN:
        return "NBD_REP_ERR_SHUTDOWN";
    case PRL_NBD_REP_ERR_BLOCK_SIZE_REQD:
        return "NBD_REP_ERR_BLOCK_SIZE_REQD";
    case PRL_NBD_REP_ERR_TOO_BIG:
        return "NBD_REP_ERR_TOO_BIG";
    case PRL_NBD_REP_ERR_EXT_HEADER_REQD:
        return "NBD_REP_ERR_EXT_HEADER_REQD";
    default:
        return "error";
    }
}

/* One option: the header and |len| bytes of |data|. */
static int send_opt(struct prl_nbd_client *c, uint32_t opt, const void *data,
                    uint32_t len)
{
    uint8_t h[sizeof(struct prl_nbd_opt_hdr)];
    int r;

    prl_be64_store(h, PRL_NBD_MAGIC_OPTS);
    prl_be32_store(h + 8, opt);
    prl_be32_store(h + 12, len);
    r = prl_nbd_cl_send(c, h, sizeof(h));
    if (r == 0 && len > 0) {
        r = prl_nbd_cl_send(c, data, len);
    }
    return r;
}

/* One reply to |opt|: its type, and its payload (NUL-terminated for
 * convenience) in |buf| of OPT_REPLY_MAX + 1 bytes.  An ACK with a
 * payload is a protocol error. */
static int recv_opt_reply(struct prl_nbd_client *c, uint32_t opt,
                          uint32_t *type, uint32_t *len, uint8_t *buf)
{
    uint8_t h[sizeof(struct prl_nbd_opt_reply)];
    uint64_t magic;
    uint32_t ropt;
    int r = prl_nbd_cl_recv(c, h, sizeof(h));

    if (r < 0) {
        return r;
    }
    magic = prl_be64_load(h);
    ropt = prl_be32_load(h + 8);
    *type = prl_be32_load(h + 12);
    *len = prl_be32_load(h + 16);
    if (magic != PRL_NBD_MAGIC_REP) {
        return prl_nbd_cl_proto(
            c, "option reply magic 0x%016" PRIx64 " is not 0x%016llx", magic,
            PRL_NBD_MAGIC_REP);
    }
    if (ropt != opt) {
        return prl_nbd_cl_proto(c,
                                "reply to option %" PRIu32 " when %s (%u) "
                                "was sent",
                                ropt, opt_name(opt), opt);
    }
    if (*len > OPT_REPLY_MAX) {
        return prl_nbd_cl_proto(
            c, "reply to %s has length %" PRIu32 " (at most %u)", opt_name(opt),
            *len, OPT_REPLY_MAX);
    }
    r = prl_nbd_cl_recv(c, buf, *len);
    buf[*len] = '\0';
    if (r == 0 && *type == PRL_NBD_REP_ACK && *len != 0) {
        return prl_nbd_cl_proto(c, "ACK to %s has length %" PRIu32,
                                opt_name(opt), *len);
    }
    return r;
}

/* A NUL-free copy of the |len| bytes at |p|, or NULL (message set). */
static char *take_string(struct prl_nbd_client *c, const uint8_t *p, size_t len,
                         const char *what)
{
    char *s;

    if (memchr(p, '\0', len)) {
        prl_nbd_cl_proto(c, "%s has a NUL byte", what);
        return NULL;
    }
    s = malloc(len + 1);
    if (!s) {
        prl_error(ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

/* The message for an error reply |type| to |opt|, with the server's own
 * text; returns the errno to report. */
static int opt_error(struct prl_nbd_client *c, uint32_t opt, uint32_t type,
                     const uint8_t *msg, uint32_t len)
{
    char text[256];
    int err = EIO;

    prl_nbd_cl_printable(text, sizeof(text), (const char *)msg, len);
    if (type == PRL_NBD_REP_ERR_TLS_REQD) {
        return prl_error(EACCES,
                         "nbd server %s requires TLS: use an nbds:// or "
                         "nbds+unix:// URI (%s: %s)",
                         c->name, opt_name(opt), text);
    }
    if (type == PRL_NBD_REP_ERR_UNKNOWN) {
        return prl_error(ENOENT, "nbd server %s has no export '%s'%s%s",
                         c->name, c->export_name, len ? ": " : "", text);
    }
    if (type == PRL_NBD_REP_ERR_POLICY) {
        err = EACCES;
    } else if (type == PRL_NBD_REP_ERR_UNSUP) {
        err = ENOTSUP;
    }
    return prl_error(err, "nbd server %s refused %s: %s (0x%08" PRIx32 ")%s%s",
                     c->name, opt_name(opt), rep_err_name(type), type,
                     len ? ": " : "", text);
}

/* A reply type that is neither ACK nor an error where one of them was
 * due. */
static int unexpected(struct prl_nbd_client *c, uint32_t opt, uint32_t type,
                      uint32_t len)
{
    return prl_nbd_cl_proto(
        c, "reply type 0x%08" PRIx32 " (length %" PRIu32 ") to %s", type, len,
        opt_name(opt));
}

/* An option with no data that wants a bare ACK: 1 when acknowledged, 0
 * when refused (message set with the refusal), or a negative errno for
 * a broken reply or ERR_TLS_REQD. */
static int simple_opt(struct prl_nbd_client *c, uint32_t opt, uint8_t *buf)
{
    uint32_t type, len;
    int r = send_opt(c, opt, NULL, 0);

    if (r == 0) {
        r = recv_opt_reply(c, opt, &type, &len, buf);
    }
    if (r < 0) {
        return r;
    }
    if (type == PRL_NBD_REP_ACK) {
        return 1;
    }
    if (!(type & (1u << 31))) {
        return unexpected(c, opt, type, len);
    }
    r = opt_error(c, opt, type, buf, len);
    return type == PRL_NBD_REP_ERR_TLS_REQD ? r : 0;
}

#define BITMAP_PREFIX "qemu:dirty-bitmap:"

/* Send |opt| (LIST or SET_META_CONTEXT) for the export with the
 * |n| queries of |q|. */
static int send_meta_opt(struct prl_nbd_client *c, uint32_t opt,
                         const char *const *q, size_t n)
{
    size_t nl = strlen(c->export_name), total = 4 + nl + 4;
    uint8_t *data, *p;
    int r;

    for (size_t i = 0; i < n; i++) {
        total += 4 + strlen(q[i]);
    }
    if (total > UINT32_MAX / 2) {
        return prl_error(EINVAL, "metadata context queries are too long");
    }
    data = malloc(total);
    if (!data) {
        return prl_error(ENOMEM, "out of memory");
    }
    p = data;
    prl_be32_store(p, (uint32_t)nl);
    memcpy(p + 4, c->export_name, nl);
    p += 4 + nl;
    prl_be32_store(p, (uint32_t)n);
    p += 4;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(q[i]);
        prl_be32_store(p, (uint32_t)l);
        memcpy(p + 4, q[i], l);
        p += 4 + l;
    }
    r = send_opt(c, opt, data, (uint32_t)total);
    free(data);
    return r;
}

/* Add bitmap |name| (without the prefix) to c->bitmaps unless it is
 * there or the list is full. */
static int add_bitmap(struct prl_nbd_client *c, const char *name)
{
    struct prl_nbd_cl_bitmap *v;

    for (size_t i = 0; i < c->n_bitmaps; i++) {
        if (strcmp(c->bitmaps[i].name, name) == 0) {
            return 0;
        }
    }
    if (c->n_bitmaps == PRL_NBD_CL_MAX_BITMAPS) {
        return 0;
    }
    if (strlen(name) + strlen(BITMAP_PREFIX) > PRL_NBD_MAX_STRING) {
        return prl_error(EINVAL, "bitmap name '%.64s...' is too long", name);
    }
    v = realloc(c->bitmaps, (c->n_bitmaps + 1) * sizeof(*v));
    if (!v) {
        return prl_error(ENOMEM, "out of memory");
    }
    c->bitmaps = v;
    v[c->n_bitmaps].id = 0;
    v[c->n_bitmaps].has = false;
    v[c->n_bitmaps].name = strdup(name);
    if (!v[c->n_bitmaps].name) {
        return prl_error(ENOMEM, "out of memory");
    }
    c->n_bitmaps++;
    return 0;
}

/* NBD_OPT_LIST_META_CONTEXT for c->export_name with the |n| queries of
 * |q| (none: every context): |each| gets each context name the server
 * lists, and may fail.  A server that refuses to list has none for us
 * (0), unless it says TLS is required. */
static int list_meta(struct prl_nbd_client *c, uint8_t *buf,
                     const char *const *q, size_t n,
                     int (*each)(struct prl_nbd_client *c, const char *name,
                                 void *arg),
                     void *arg)
{
    uint32_t type, len;
    int r = send_meta_opt(c, PRL_NBD_OPT_LIST_META_CONTEXT, q, n);

    while (r == 0) {
        r = recv_opt_reply(c, PRL_NBD_OPT_LIST_META_CONTEXT, &type, &len, buf);
        if (r < 0) {
            break;
        }
        if (type == PRL_NBD_REP_ACK) {
            return 0;
        }
        if (type & (1u << 31)) {
            r = opt_error(c, PRL_NBD_OPT_LIST_META_CONTEXT, type, buf, len);
            if (type == PRL_NBD_REP_ERR_TLS_REQD) {
                return r;
            }
            prl_error_clear();
            return 0;
        }
        if (type != PRL_NBD_REP_META_CONTEXT || len < 5) {
            return unexpected(c, PRL_NBD_OPT_LIST_META_CONTEXT, type, len);
        }
        const char *name = (const char *)buf + 4;
        if (strlen(name) != len - 4) {
            return prl_nbd_cl_proto(c, "context name has a NUL byte");
        }
        r = each(c, name, arg);
    }
    return r;
}

static int each_bitmap(struct prl_nbd_client *c, const char *name, void *arg)
{
    size_t pl = strlen(BITMAP_PREFIX);

    (void)arg;
    /* Other names (a server listing more than asked) are skipped. */
    if (strlen(name) > pl && strncmp(name, BITMAP_PREFIX, pl) == 0) {
        return add_bitmap(c, name + pl);
    }
    return 0;
}

/* Every bitmap the export offers ("qemu:dirty-bitmap:") goes into
 * c->bitmaps. */
static int list_bitmaps(struct prl_nbd_client *c, uint8_t *buf)
{
    const char *q = BITMAP_PREFIX;
    return list_meta(c, buf, &q, 1, each_bitmap, NULL);
}

/* Keep the bitmaps the server granted, in the order asked. */
static void keep_granted_bitmaps(struct prl_nbd_client *c)
{
    size_t n = 0;

    for (size_t i = 0; i < c->n_bitmaps; i++) {
        if (c->bitmaps[i].has) {
            c->bitmaps[n++] = c->bitmaps[i];
        } else {
            free(c->bitmaps[i].name);
        }
    }
    c->n_bitmaps = n;
    c->exp.n_bitmaps = n;
    c->exp.has_bitmap = n > 0;
}

/* The context of a META_CONTEXT reply to SET: its id slot and flag, or
 * NULL when it was not asked for. */
static bool *meta_slot(struct prl_nbd_client *c,
                       const struct prl_nbd_client_opts *opts, const char *name,
                       uint32_t **slot)
{
    size_t pl = strlen(BITMAP_PREFIX);

    if (strcmp(name, "base:allocation") == 0) {
        *slot = &c->ctx_alloc;
        return &c->exp.has_alloc;
    }
    if (opts && opts->want_depth &&
        strcmp(name, "qemu:allocation-depth") == 0) {
        *slot = &c->ctx_depth;
        return &c->exp.has_depth;
    }
    if (strncmp(name, BITMAP_PREFIX, pl) == 0) {
        for (size_t i = 0; i < c->n_bitmaps; i++) {
            if (strcmp(c->bitmaps[i].name, name + pl) == 0) {
                *slot = &c->bitmaps[i].id;
                return &c->bitmaps[i].has;
            }
        }
    }
    return NULL;
}

/* Ask for the metadata contexts; record the ids the server gives. */
static int set_meta(struct prl_nbd_client *c,
                    const struct prl_nbd_client_opts *opts, uint8_t *buf)
{
    const char **want;
    size_t n_want = 0;
    uint32_t type, len;
    int r = 0;

    if (opts && opts->bitmap) {
        r = add_bitmap(c, opts->bitmap);
    }
    if (r == 0 && opts && opts->all_bitmaps) {
        r = list_bitmaps(c, buf);
    }
    if (r < 0) {
        return r;
    }
    want = calloc(2 + c->n_bitmaps, sizeof(*want));
    if (!want) {
        return prl_error(ENOMEM, "out of memory");
    }
    want[n_want++] = "base:allocation";
    if (opts && opts->want_depth) {
        want[n_want++] = "qemu:allocation-depth";
    }
    for (size_t i = 0; i < c->n_bitmaps && r == 0; i++) {
        char *q;
        if (asprintf(&q, BITMAP_PREFIX "%s", c->bitmaps[i].name) < 0) {
            r = prl_error(ENOMEM, "out of memory");
            break;
        }
        want[n_want++] = q;
    }
    if (r == 0) {
        r = send_meta_opt(c, PRL_NBD_OPT_SET_META_CONTEXT, want, n_want);
    }
    for (size_t i = 0; i < n_want; i++) {
        if (strncmp(want[i], BITMAP_PREFIX, strlen(BITMAP_PREFIX)) == 0) {
            free((char *)want[i]);
        }
    }
    free(want);
    while (r == 0) {
        r = recv_opt_reply(c, PRL_NBD_OPT_SET_META_CONTEXT, &type, &len, buf);
        if (r < 0) {
            break;
        }
        if (type == PRL_NBD_REP_ACK) {
            keep_granted_bitmaps(c);
            return 0;
        }
        if (type & (1u << 31)) {
            /* No contexts: block status reads everything as data. */
            r = opt_error(c, PRL_NBD_OPT_SET_META_CONTEXT, type, buf, len);
            if (type == PRL_NBD_REP_ERR_TLS_REQD) {
                return r;
            }
            c->exp.has_alloc = c->exp.has_depth = false;
            for (size_t i = 0; i < c->n_bitmaps; i++) {
                c->bitmaps[i].has = false;
            }
            keep_granted_bitmaps(c);
            prl_error_clear();
            return 0;
        }
        if (type != PRL_NBD_REP_META_CONTEXT) {
            return unexpected(c, PRL_NBD_OPT_SET_META_CONTEXT, type, len);
        }
        if (len < 5) {
            return prl_nbd_cl_proto(
                c, "NBD_REP_META_CONTEXT has length %" PRIu32 " (at least 5)",
                len);
        }
        uint32_t id = prl_be32_load(buf), *slot = NULL;
        const char *name = (const char *)buf + 4;
        bool *has;
        if (strlen(name) != len - 4) {
            return prl_nbd_cl_proto(c, "context name has a NUL byte");
        }
        has = meta_slot(c, opts, name, &slot);
        if (!has) {
            char text[128];
            prl_nbd_cl_printable(text, sizeof(text), name, len - 4);
            return prl_nbd_cl_proto(c,
                                    "NBD_REP_META_CONTEXT names context "
                                    "'%s', which was not asked for",
                                    text);
        }
        if (*has) {
            char text[128];
            prl_nbd_cl_printable(text, sizeof(text), name, len - 4);
            return prl_nbd_cl_proto(c, "context '%s' was given twice", text);
        }
        *has = true;
        *slot = id;
    }
    return r;
}

/* Check and keep the block sizes of NBD_INFO_BLOCK_SIZE. */
static int block_sizes(struct prl_nbd_client *c, const uint8_t *p)
{
    uint32_t min = prl_be32_load(p), pref = prl_be32_load(p + 4),
             max = prl_be32_load(p + 8);

    if (!prl_is_power_of_2(min) || min > 65536) {
        return prl_nbd_cl_proto(c,
                                "minimum block size %" PRIu32
                                " is not a power of two up to 64 KiB",
                                min);
    }
    if (!prl_is_power_of_2(pref) || pref < min) {
        return prl_nbd_cl_proto(c,
                                "preferred block size %" PRIu32
                                " is not a power of two of at least the "
                                "minimum %" PRIu32,
                                pref, min);
    }
    if (max < min || (max != UINT32_MAX && max % min != 0)) {
        return prl_nbd_cl_proto(c,
                                "maximum block size %" PRIu32
                                " is not a multiple of the minimum %" PRIu32,
                                max, min);
    }
    c->exp.min_block = min;
    c->exp.pref_block = pref;
    c->exp.max_block = max;
    return 0;
}

/* NBD_OPT_GO (or, with |opt| NBD_OPT_INFO, the same questions without
 * the move to transmission) for c->export_name: the answers go to
 * c->exp, and the description, when the server gives one and |desc| is
 * not NULL, to *desc (malloc'd).  1 done, 0 when the server does not
 * know the option (GO: fall back to EXPORT_NAME), or a negative errno. */
static int opt_go(struct prl_nbd_client *c, uint32_t opt, uint8_t *buf,
                  char **desc)
{
    size_t nl = strlen(c->export_name);
    uint8_t *data = malloc(4 + nl + 6);
    uint32_t type, len;
    bool have_export = false;
    int r;

    if (!data) {
        return prl_error(ENOMEM, "out of memory");
    }
    prl_be32_store(data, (uint32_t)nl);
    memcpy(data + 4, c->export_name, nl);
    prl_be16_store(data + 4 + nl, desc ? 2 : 1);
    prl_be16_store(data + 6 + nl, PRL_NBD_INFO_BLOCK_SIZE);
    prl_be16_store(data + 8 + nl, PRL_NBD_INFO_DESCRIPTION);
    r = send_opt(c, opt, data, (uint32_t)(nl + (desc ? 10 : 8)));
    free(data);
    while (r == 0) {
        r = recv_opt_reply(c, opt, &type, &len, buf);
        if (r < 0) {
            break;
        }
        if (type == PRL_NBD_REP_ACK) {
            if (!have_export) {
                return prl_nbd_cl_proto(c,
                                        "%s acknowledged without "
                                        "NBD_INFO_EXPORT",
                                        opt_name(opt));
            }
            return 1;
        }
        if (type == PRL_NBD_REP_ERR_UNSUP) {
            return 0;
        }
        if (type & (1u << 31)) {
            return opt_error(c, opt, type, buf, len);
        }
        if (type != PRL_NBD_REP_INFO) {
            return unexpected(c, opt, type, len);
        }
        if (len < 2) {
            return prl_nbd_cl_proto(c, "NBD_REP_INFO has length %" PRIu32, len);
        }
        uint16_t info = prl_be16_load(buf);
        if (info == PRL_NBD_INFO_EXPORT) {
            if (len != 12) {
                return prl_nbd_cl_proto(
                    c, "NBD_INFO_EXPORT has length %" PRIu32 " (want 12)", len);
            }
            c->exp.size = prl_be64_load(buf + 2);
            c->exp.tflags = prl_be16_load(buf + 10);
            have_export = true;
        } else if (info == PRL_NBD_INFO_BLOCK_SIZE) {
            if (len != 14) {
                return prl_nbd_cl_proto(
                    c, "NBD_INFO_BLOCK_SIZE has length %" PRIu32 " (want 14)",
                    len);
            }
            r = block_sizes(c, buf + 2);
            c->has_block_sizes = r == 0;
        } else if (info == PRL_NBD_INFO_DESCRIPTION && desc) {
            free(*desc);
            *desc = take_string(c, buf + 2, len - 2, "an export description");
            if (!*desc) {
                return c->dead ? -EIO : -ENOMEM;
            }
        }
        /* NAME and unknown types: nothing to keep. */
    }
    return r;
}

/* The old way in: NBD_OPT_EXPORT_NAME, answered by size and flags. */
static int opt_export_name(struct prl_nbd_client *c, bool no_zeroes)
{
    uint8_t rep[sizeof(struct prl_nbd_export_name_reply)];
    size_t n = no_zeroes ? 10 : sizeof(rep);
    int r = send_opt(c, PRL_NBD_OPT_EXPORT_NAME, c->export_name,
                     (uint32_t)strlen(c->export_name));

    if (r < 0) {
        return r;
    }
    r = prl_nbd_cl_recv(c, rep, n);
    if (r < 0) {
        return prl_error(ENOENT,
                         "nbd server %s refused export '%s' (it closed the "
                         "connection after NBD_OPT_EXPORT_NAME)",
                         c->name, c->export_name);
    }
    c->exp.size = prl_be64_load(rep);
    c->exp.tflags = prl_be16_load(rep + 8);
    return 0;
}

/* What an export is taken to be until NBD_INFO_BLOCK_SIZE says more. */
static void export_defaults(struct prl_nbd_client *c)
{
    c->exp.min_block = 1;
    c->exp.pref_block = 4096;
    c->exp.max_block = CLIENT_MAX_PAYLOAD;
    c->has_block_sizes = false;
}

/* The greeting, STARTTLS when |tls|, then extended headers or else
 * structured replies.  0 with c->haggling (fixed newstyle: options may
 * follow) and *no_zeroes set, or a negative errno. */
static int negotiate(struct prl_nbd_client *c, const struct prl_nbd_uri *tls,
                     uint8_t *buf, bool *no_zeroes)
{
    uint8_t greet[18], cflags[4];
    uint16_t hflags;
    uint64_t magic;
    int r = prl_nbd_cl_recv(c, greet, sizeof(greet));

    if (r < 0) {
        return r;
    }
    magic = prl_be64_load(greet);
    if (magic != PRL_NBD_MAGIC_INIT) {
        return prl_nbd_cl_proto(c,
                                "greeting magic 0x%016" PRIx64
                                " is not NBDMAGIC (is it an NBD server?)",
                                magic);
    }
    magic = prl_be64_load(greet + 8);
    if (magic == MAGIC_OLDSTYLE) {
        c->dead = true;
        return prl_error(EPROTO,
                         "nbd server %s speaks the oldstyle handshake, which "
                         "prl does not support",
                         c->name);
    }
    if (magic != PRL_NBD_MAGIC_OPTS) {
        return prl_nbd_cl_proto(
            c, "second greeting magic 0x%016" PRIx64 " is not IHAVEOPT", magic);
    }
    hflags = prl_be16_load(greet + 16);
    bool fixed = hflags & PRL_NBD_FLAG_FIXED_NEWSTYLE;
    *no_zeroes = hflags & PRL_NBD_FLAG_NO_ZEROES;
    prl_be32_store(cflags, (fixed ? PRL_NBD_FLAG_C_FIXED_NEWSTYLE : 0) |
                               (*no_zeroes ? PRL_NBD_FLAG_C_NO_ZEROES : 0));
    r = prl_nbd_cl_send(c, cflags, sizeof(cflags));
    if (r < 0) {
        return r;
    }
    c->haggling = fixed;
    export_defaults(c);
    if (!fixed) {
        /* Plain newstyle: options are not safe; only EXPORT_NAME. */
        if (tls) {
            return prl_error(EPROTO,
                             "nbd server %s does not do fixed newstyle "
                             "negotiation, so it cannot do TLS",
                             c->name);
        }
        return 0;
    }
    if (tls) {
        r = simple_opt(c, PRL_NBD_OPT_STARTTLS, buf);
        if (r == 0) {
            r = prl_error_context(-EACCES, "TLS is required by the URI, and ");
        }
        if (r < 0) {
            return r;
        }
        r = prl_nbd_cl_start_tls(c, tls);
        if (r < 0) {
            return r;
        }
    }
    r = simple_opt(c, PRL_NBD_OPT_EXTENDED_HEADERS, buf);
    if (r == -EIO && tls && tls->tls_type != PRL_NBD_URI_TLS_PSK) {
        /* With TLS 1.3 a server that wanted our certificate says so
         * only by dropping the session after the handshake. */
        r = prl_error_context(-EACCES,
                              "TLS: the server ended the session after the "
                              "handshake (does it require a client "
                              "certificate? tls-certificates needs "
                              "client-cert.pem and client-key.pem): ");
    }
    if (r < 0) {
        return r;
    }
    if (r == 1) {
        c->exp.extended = c->exp.structured = true;
    } else {
        r = simple_opt(c, PRL_NBD_OPT_STRUCTURED_REPLY, buf);
        if (r < 0) {
            return r;
        }
        c->exp.structured = r == 1;
    }
    prl_error_clear();
    return 0;
}

int prl_nbd_cl_handshake(struct prl_nbd_client *c,
                         const struct prl_nbd_uri *tls,
                         const struct prl_nbd_client_opts *opts)
{
    uint8_t *buf = malloc(OPT_REPLY_MAX + 1);
    bool no_zeroes = false;
    int r;

    if (!buf) {
        return prl_error(ENOMEM, "out of memory");
    }
    r = negotiate(c, tls, buf, &no_zeroes);
    if (r < 0) {
        goto out;
    }
    if (!c->haggling) {
        r = opt_export_name(c, no_zeroes);
        goto done;
    }
    if (c->exp.structured) {
        r = set_meta(c, opts, buf);
        if (r < 0) {
            goto out;
        }
    }
    r = opt_go(c, PRL_NBD_OPT_GO, buf, NULL);
    if (r == 0) {
        prl_error_clear();
        r = opt_export_name(c, no_zeroes);
    } else if (r == 1) {
        r = 0;
    }
done:
    if (r == 0) {
        /* Only what we can use: a READ/WRITE never exceeds our cap. */
        uint32_t max = PRL_MIN(c->exp.max_block, CLIENT_MAX_PAYLOAD);
        c->exp.max_block = (uint32_t)PRL_MAX(
            prl_round_down(max, c->exp.min_block), c->exp.min_block);
        c->transmission = true;
        c->haggling = false;
    }
out:
    free(buf);
    return r;
}

/* More exports, or contexts of one export, than a list keeps. */
#define LIST_MAX 4096

/* NBD_OPT_LIST: the names and descriptions into *v (*n of them). */
static int opt_list(struct prl_nbd_client *c, uint8_t *buf,
                    struct prl_nbd_export_info **v, size_t *n)
{
    uint32_t type, len;
    int r = send_opt(c, PRL_NBD_OPT_LIST, NULL, 0);

    while (r == 0) {
        struct prl_nbd_export_info *e, *nv;
        uint32_t nl;

        r = recv_opt_reply(c, PRL_NBD_OPT_LIST, &type, &len, buf);
        if (r < 0) {
            break;
        }
        if (type == PRL_NBD_REP_ACK) {
            return 0;
        }
        if (type & (1u << 31)) {
            return opt_error(c, PRL_NBD_OPT_LIST, type, buf, len);
        }
        if (type != PRL_NBD_REP_SERVER || len < 4) {
            return unexpected(c, PRL_NBD_OPT_LIST, type, len);
        }
        nl = prl_be32_load(buf);
        if (nl > len - 4) {
            return prl_nbd_cl_proto(c,
                                    "NBD_REP_SERVER name length %" PRIu32
                                    " is past the reply's %" PRIu32 " bytes",
                                    nl, len);
        }
        if (*n == LIST_MAX) {
            return prl_nbd_cl_proto(c, "more than %d exports listed", LIST_MAX);
        }
        nv = realloc(*v, (*n + 1) * sizeof(**v));
        if (!nv) {
            return prl_error(ENOMEM, "out of memory");
        }
        *v = nv;
        e = memset(&nv[*n], 0, sizeof(*e));
        e->name = take_string(c, buf + 4, nl, "an export name");
        e->description = e->name ? take_string(c, buf + 4 + nl, len - 4 - nl,
                                               "an export description")
                                 : NULL;
        if (!e->name || !e->description) {
            free(e->name);
            free(e->description);
            return c->dead ? -EIO : -ENOMEM;
        }
        (*n)++;
    }
    return r;
}

/* Keep one more context of a listed export. */
static int each_context(struct prl_nbd_client *c, const char *name, void *arg)
{
    struct prl_nbd_export_info *e = arg;
    char **nv;

    if (e->n_contexts == LIST_MAX) {
        return prl_nbd_cl_proto(c, "more than %d contexts listed", LIST_MAX);
    }
    nv = realloc(e->contexts, (e->n_contexts + 1) * sizeof(*nv));
    if (!nv) {
        return prl_error(ENOMEM, "out of memory");
    }
    e->contexts = nv;
    nv[e->n_contexts] = strdup(name);
    if (!nv[e->n_contexts]) {
        return prl_error(ENOMEM, "out of memory");
    }
    e->n_contexts++;
    return 0;
}

int prl_nbd_cl_list(struct prl_nbd_client *c, const struct prl_nbd_uri *tls,
                    struct prl_nbd_export_info **out, size_t *n_out)
{
    uint8_t *buf = malloc(OPT_REPLY_MAX + 1);
    struct prl_nbd_export_info *v = NULL;
    char *own_name = c->export_name;
    bool no_zeroes;
    size_t n = 0;
    int r;

    *out = NULL;
    *n_out = 0;
    if (!buf) {
        return prl_error(ENOMEM, "out of memory");
    }
    r = negotiate(c, tls, buf, &no_zeroes);
    if (r == 0 && !c->haggling) {
        r = prl_error(ENOTSUP,
                      "nbd server %s does not do fixed newstyle "
                      "negotiation, so it cannot list its exports",
                      c->name);
    }
    if (r == 0) {
        r = opt_list(c, buf, &v, &n);
    }
    for (size_t i = 0; r == 0 && i < n; i++) {
        struct prl_nbd_export_info *e = &v[i];
        char *desc = NULL;
        bool structured = c->exp.structured, extended = c->exp.extended;

        c->export_name = e->name;
        memset(&c->exp, 0, sizeof(c->exp));
        c->exp.structured = structured;
        c->exp.extended = extended;
        export_defaults(c);
        r = opt_go(c, PRL_NBD_OPT_INFO, buf, &desc);
        if (r == 1) {
            e->has_info = true;
            e->has_block_sizes = c->has_block_sizes;
            e->exp = c->exp;
            if (desc && !e->description[0]) {
                free(e->description);
                e->description = desc;
                desc = NULL;
            }
        }
        free(desc);
        if (r >= 0 || !c->dead) {
            /* A refused INFO leaves the export described by its name. */
            prl_error_clear();
            r = 0;
        }
        if (r == 0 && structured) {
            /* No query: every context of the export. */
            r = list_meta(c, buf, NULL, 0, each_context, e);
        }
    }
    c->export_name = own_name;
    free(buf);
    if (r < 0) {
        prl_nbd_export_info_free(v, n);
        return r;
    }
    *out = v;
    *n_out = n;
    return 0;
}

void prl_nbd_export_info_free(struct prl_nbd_export_info *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].description);
        for (size_t j = 0; j < v[i].n_contexts; j++) {
            free(v[i].contexts[j]);
        }
        free(v[i].contexts);
    }
    free(v);
}
