/* SPDX-License-Identifier: MIT */
/* The fixed-newstyle handshake: greeting, client flags, and option
 * haggling up to NBD_OPT_GO or NBD_OPT_EXPORT_NAME, under a time limit
 * and with every option length and count bounded. */
#include "nbd/server/internal.h"
#include "common/util.h"
#include "prl/error.h"
#include "prl/log.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Once the server is stopping, a client mid-handshake has this long to
 * hear NBD_REP_ERR_SHUTDOWN and leave. */
#define STOP_GRACE_MS 1000

struct hs {
    struct prl_nbd_conn *conn;
    int64_t deadline_ms; /* CLOCK_MONOTONIC; -1 none */
    uint8_t *opt;        /* option data, PRL_NBD_MAX_OPTION bytes */
};

/* Wait until the socket is readable, the limit passes, or the server
 * stops (which shortens the limit to the grace period).  Also the TLS
 * layer's hook before each read of the socket, so that the limit covers
 * the TLS handshake too. */
static int hs_poll(void *opaque)
{
    struct hs *hs = opaque;
    struct prl_nbd_sock *s = &hs->conn->sock;

    for (;;) {
        struct pollfd pfd[2] = {
            {.fd = s->rfd, .events = POLLIN},
            {.fd = s->wake_fd, .events = POLLIN},
        };
        bool stopping = prl_nbd_server_stopping(hs->conn->srv);
        int n = stopping || s->wake_fd < 0 ? 1 : 2;
        int timeout = -1;
        int r;

        /* A stop that came while we were not polling (busy with an
         * option, or in another wait) shortens the limit too. */
        if (stopping) {
            int64_t grace = prl_mono_ms() + STOP_GRACE_MS;
            if (hs->deadline_ms < 0 || hs->deadline_ms > grace) {
                hs->deadline_ms = grace;
            }
        }
        if (hs->deadline_ms >= 0) {
            int64_t left = hs->deadline_ms - prl_mono_ms();
            if (left <= 0) {
                return prl_error(ETIMEDOUT, "%s: handshake took too long",
                                 hs->conn->peer);
            }
            timeout = left > 86400000 ? 86400000 : (int)left;
        }
        r = poll(pfd, (nfds_t)n, timeout);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return prl_error_errno(errno, "%s: poll", hs->conn->peer);
        }
        if (pfd[0].revents) {
            return 0;
        }
        /* Woken by the stop: the next round shortens the limit. */
    }
}

/* Wait until the client has sent something (maybe already received by
 * the TLS layer), the limit passes, or the server stops. */
static int hs_wait(struct hs *hs)
{
    struct prl_nbd_sock *s = &hs->conn->sock;

    if (s->ops->pending(s) > 0) {
        return 0;
    }
    return hs_poll(hs);
}

static int hs_read(struct hs *hs, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n;
        int r = hs_wait(hs);

        if (r < 0) {
            return r;
        }
        n = hs->conn->sock.ops->recv(&hs->conn->sock, p, len, false);
        if (n == 0) {
            return prl_error(ECONNRESET,
                             "%s: client closed the connection "
                             "during the handshake",
                             hs->conn->peer);
        }
        if (n < 0) {
            return prl_error_errno((int)-n, "%s: receive", hs->conn->peer);
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Read and drop |len| bytes of option data. */
static int hs_drain(struct hs *hs, uint64_t len)
{
    while (len > 0) {
        size_t n = (size_t)PRL_MIN(len, (uint64_t)PRL_NBD_MAX_OPTION);
        int r = hs_read(hs, hs->opt, n);
        if (r < 0) {
            return r;
        }
        len -= n;
    }
    return 0;
}

static int hs_send(struct hs *hs, struct iovec *iov, int n)
{
    int r = hs->conn->sock.ops->sendv(&hs->conn->sock, iov, n);

    if (r < 0) {
        return prl_error_errno(-r, "%s: send", hs->conn->peer);
    }
    return 0;
}

/* One option reply with |len| bytes of |data| (may be split in two). */
static int reply2(struct hs *hs, uint32_t option, uint32_t type, const void *d1,
                  size_t l1, const void *d2, size_t l2)
{
    struct prl_nbd_opt_reply h = {
        .magic = htobe64(PRL_NBD_MAGIC_REP),
        .option = htobe32(option),
        .type = htobe32(type),
        .length = htobe32((uint32_t)(l1 + l2)),
    };
    struct iovec iov[3] = {
        {.iov_base = &h, .iov_len = sizeof(h)},
        {.iov_base = (void *)d1, .iov_len = l1},
        {.iov_base = (void *)d2, .iov_len = l2},
    };

    return hs_send(hs, iov, 3);
}

static int reply(struct hs *hs, uint32_t option, uint32_t type,
                 const void *data, size_t len)
{
    return reply2(hs, option, type, data, len, NULL, 0);
}

/* An error reply whose data is a message for the user. */
__attribute__((format(printf, 4, 5))) static int
reply_err(struct hs *hs, uint32_t option, uint32_t type, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    } else if ((size_t)n >= sizeof(msg)) {
        n = sizeof(msg) - 1;
    }
    prl_debug("%s: option %" PRIu32 " refused: %s", hs->conn->peer, option,
              msg);
    return reply(hs, option, type, msg, (size_t)n);
}

uint16_t prl_nbd_export_tflags(const struct prl_nbd_conn *conn,
                               const struct prl_nbd_export *exp)
{
    const struct prl_nbd_server_config *cfg = prl_nbd_server_cfg(conn->srv);
    uint16_t f = PRL_NBD_FLAG_HAS_FLAGS | PRL_NBD_FLAG_SEND_FLUSH |
                 PRL_NBD_FLAG_SEND_CACHE;

    if (exp->read_only) {
        f |= PRL_NBD_FLAG_READ_ONLY;
    } else {
        f |= PRL_NBD_FLAG_SEND_FUA | PRL_NBD_FLAG_SEND_TRIM |
             PRL_NBD_FLAG_SEND_WRITE_ZEROES | PRL_NBD_FLAG_SEND_FAST_ZERO;
    }
    if (conn->structured || conn->extended) {
        f |= PRL_NBD_FLAG_SEND_DF;
    }
    /* Every connection shares the one open image, so a flush on one
     * covers writes on all; only worth saying if several may connect. */
    if (cfg->shared != 1) {
        f |= PRL_NBD_FLAG_CAN_MULTI_CONN;
    }
    if (conn->extended && conn->n_meta > 0 && conn->meta_exp == exp) {
        f |= PRL_NBD_FLAG_BLOCK_STATUS_PAYLOAD;
    }
    return f;
}

/* A string of |len| bytes at |p| as a C string in |out| (len < size). */
static void copy_string(char *out, const uint8_t *p, size_t len)
{
    memcpy(out, p, len);
    out[len] = '\0';
}

static bool valid_string(const uint8_t *p, size_t len)
{
    return len <= PRL_NBD_MAX_STRING && memchr(p, '\0', len) == NULL;
}

static void enter_transmission(struct hs *hs, struct prl_nbd_export *exp)
{
    struct prl_nbd_conn *conn = hs->conn;

    if (conn->meta_exp != exp) {
        conn->n_meta = 0; /* contexts were chosen for another export */
    }
    conn->exp = exp;
    conn->tflags = prl_nbd_export_tflags(conn, exp);
}

static int opt_export_name(struct hs *hs, uint32_t len)
{
    struct prl_nbd_conn *conn = hs->conn;
    char name[PRL_NBD_MAX_STRING + 1];
    struct prl_nbd_export_name_reply rep;
    struct prl_nbd_export *exp;
    struct iovec iov;

    /* No way to answer an error here: the spec says hang up. */
    if (conn->extended) {
        return prl_error(EPROTO,
                         "%s: NBD_OPT_EXPORT_NAME after extended "
                         "headers",
                         conn->peer);
    }
    if (!valid_string(hs->opt, len)) {
        return prl_error(EPROTO, "%s: invalid export name", conn->peer);
    }
    copy_string(name, hs->opt, len);
    exp = prl_nbd_server_find(conn->srv, name);
    if (!exp) {
        return prl_error(ENOENT, "%s: no export named '%s'", conn->peer, name);
    }
    enter_transmission(hs, exp);
    memset(&rep, 0, sizeof(rep));
    rep.size = htobe64(exp->size);
    rep.flags = htobe16(conn->tflags);
    iov.iov_base = &rep;
    iov.iov_len =
        conn->no_zeroes ? sizeof(rep) - sizeof(rep.zeroes) : sizeof(rep);
    return hs_send(hs, &iov, 1);
}

/* NBD_OPT_INFO and NBD_OPT_GO: 1 when transmission starts, 0 when
 * haggling goes on. */
static int opt_info_go(struct hs *hs, uint32_t option, uint32_t len)
{
    struct prl_nbd_conn *conn = hs->conn;
    const uint8_t *p = hs->opt;
    char name[PRL_NBD_MAX_STRING + 1];
    struct prl_nbd_export *exp;
    bool want_name = false, want_desc = false, want_bsize = false;
    uint32_t namelen;
    uint16_t nreq;
    int r;

    if (len < 6) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "option data of %" PRIu32 " bytes is too short", len);
    }
    namelen = prl_be32_load(p);
    if (namelen > len - 6) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "export name length %" PRIu32 " overruns the "
                         "option",
                         namelen);
    }
    nreq = prl_be16_load(p + 4 + namelen);
    if ((uint64_t)nreq * 2 != len - 6 - namelen) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "%u information requests do not match the option "
                         "length %" PRIu32,
                         nreq, len);
    }
    if (!valid_string(p + 4, namelen)) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "invalid export name");
    }
    for (unsigned i = 0; i < nreq; i++) {
        switch (prl_be16_load(p + 6 + namelen + 2 * i)) {
        case PRL_NBD_INFO_NAME:
            want_name = true;
            break;
        case PRL_NBD_INFO_DESCRIPTION:
            want_desc = true;
            break;
        case PRL_NBD_INFO_BLOCK_SIZE:
            want_bsize = true;
            break;
        default:
            break; /* INFO_EXPORT is always sent; others are ignored */
        }
    }
    copy_string(name, p + 4, namelen);
    exp = prl_nbd_server_find(conn->srv, name);
    if (!exp) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_UNKNOWN,
                         "no export named '%s' on this server", name);
    }

    struct prl_nbd_info_export ie = {
        .type = htobe16(PRL_NBD_INFO_EXPORT),
        .size = htobe64(exp->size),
    };
    /* The flags GO would send: contexts count only for this export. */
    ie.flags = htobe16(prl_nbd_export_tflags(conn, exp));
    r = reply(hs, option, PRL_NBD_REP_INFO, &ie, sizeof(ie));
    if (r == 0 && want_name) {
        uint16_t t = htobe16(PRL_NBD_INFO_NAME);
        r = reply2(hs, option, PRL_NBD_REP_INFO, &t, sizeof(t), exp->name,
                   strlen(exp->name));
    }
    if (r == 0 && want_desc && exp->description) {
        uint16_t t = htobe16(PRL_NBD_INFO_DESCRIPTION);
        r = reply2(hs, option, PRL_NBD_REP_INFO, &t, sizeof(t),
                   exp->description, strlen(exp->description));
    }
    if (r == 0) {
        /* Sent unasked too: it costs nothing and helps clients that
         * would otherwise guess. */
        struct prl_nbd_info_block_size bi = {
            .type = htobe16(PRL_NBD_INFO_BLOCK_SIZE),
            .minimum = htobe32(exp->min_block),
            .preferred = htobe32(exp->pref_block),
            .maximum = htobe32(PRL_NBD_MAX_PAYLOAD),
        };
        r = reply(hs, option, PRL_NBD_REP_INFO, &bi, sizeof(bi));
    }
    if (r < 0) {
        return r;
    }
    if (option == PRL_NBD_OPT_GO && !want_bsize && exp->min_block > 1) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_BLOCK_SIZE_REQD,
                         "export '%s' needs requests aligned to %" PRIu32
                         " bytes; ask for NBD_INFO_BLOCK_SIZE",
                         exp->name, exp->min_block);
    }
    r = reply(hs, option, PRL_NBD_REP_ACK, NULL, 0);
    if (r < 0) {
        return r;
    }
    if (option == PRL_NBD_OPT_GO) {
        enter_transmission(hs, exp);
        return 1;
    }
    return 0;
}

static int opt_list(struct hs *hs, uint32_t len)
{
    struct prl_nbd_server *srv = hs->conn->srv;
    size_t n = prl_nbd_server_n_exports(srv);

    if (len != 0) {
        return reply_err(hs, PRL_NBD_OPT_LIST, PRL_NBD_REP_ERR_INVALID,
                         "NBD_OPT_LIST takes no data");
    }
    for (size_t i = 0; i < n; i++) {
        const struct prl_nbd_export *exp = prl_nbd_server_export(srv, i);
        size_t nl = strlen(exp->name);
        size_t dl = exp->description ? strlen(exp->description) : 0;
        uint8_t head[4 + PRL_NBD_MAX_STRING];
        int r;

        prl_be32_store(head, (uint32_t)nl);
        memcpy(head + 4, exp->name, nl);
        r = reply2(hs, PRL_NBD_OPT_LIST, PRL_NBD_REP_SERVER, head, 4 + nl,
                   exp->description, dl);
        if (r < 0) {
            return r;
        }
    }
    return reply(hs, PRL_NBD_OPT_LIST, PRL_NBD_REP_ACK, NULL, 0);
}

struct meta_found {
    const struct prl_nbd_meta_def *defs[PRL_NBD_MAX_META];
    size_t n;
    bool overflow;
};

static void meta_collect(void *opaque, const struct prl_nbd_meta_def *def)
{
    struct meta_found *f = opaque;

    for (size_t i = 0; i < f->n; i++) {
        if (f->defs[i] == def) {
            return;
        }
    }
    if (f->n == PRL_NBD_MAX_META) {
        f->overflow = true;
        return;
    }
    f->defs[f->n++] = def;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
static int opt_meta(struct hs *hs, uint32_t option, uint32_t len)
{
    struct prl_nbd_conn *conn = hs->conn;
    bool set = option == PRL_NBD_OPT_SET_META_CONTEXT;
    const uint8_t *p = hs->opt, *end = hs->opt + len;
    char name[PRL_NBD_MAX_STRING + 1];
    struct prl_nbd_export *exp;
    struct meta_found found = {.n = 0};
    uint32_t namelen, nq;

    if (set) {
        /* Replaced even when this request fails. */
        conn->n_meta = 0;
        conn->meta_exp = NULL;
    }
    if (!conn->structured && !conn->extended) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "negotiate structured replies or extended headers "
                         "first");
    }
    if (len < 8 || (namelen = prl_be32_load(p)) > len - 8) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "export name overruns the option");
    }
    if (!valid_string(p + 4, namelen)) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "invalid export name");
    }
    copy_string(name, p + 4, namelen);
    p += 4 + namelen;
    nq = prl_be32_load(p);
    p += 4;
    if (nq > (uint32_t)(end - p) / 4) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "%" PRIu32 " queries do not fit in the option", nq);
    }
    exp = prl_nbd_server_find(conn->srv, name);
    if (!exp) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_UNKNOWN,
                         "no export named '%s' on this server", name);
    }
    if (nq == 0 && !set) {
        prl_nbd_meta_match(exp, "", true, meta_collect, &found);
    }
    for (uint32_t i = 0; i < nq; i++) {
        char q[PRL_NBD_MAX_STRING + 1];
        uint32_t ql;

        if (end - p < 4 || (ql = prl_be32_load(p)) > (uint32_t)(end - p - 4)) {
            return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                             "query %" PRIu32 " overruns the option", i);
        }
        if (!valid_string(p + 4, ql)) {
            return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                             "query %" PRIu32 " is not a valid string", i);
        }
        copy_string(q, p + 4, ql);
        p += 4 + ql;
        if (!strchr(q, ':')) {
            return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                             "query '%s' has no namespace", q);
        }
        prl_nbd_meta_match(exp, q, !set, meta_collect, &found);
    }
    if (p != end) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                         "%td bytes after the last query", end - p);
    }
    if (found.overflow) {
        return reply_err(hs, option, PRL_NBD_REP_ERR_TOO_BIG,
                         "more than %u contexts selected", PRL_NBD_MAX_META);
    }
    for (size_t i = 0; i < found.n; i++) {
        uint32_t id = 0;
        int r;

        if (set) {
            id = ++conn->next_meta_id;
            conn->meta[i].id = id;
            conn->meta[i].def = found.defs[i];
        }
        id = htobe32(id);
        r = reply2(hs, option, PRL_NBD_REP_META_CONTEXT, &id, sizeof(id),
                   found.defs[i]->name, strlen(found.defs[i]->name));
        if (r < 0) {
            return r;
        }
    }
    if (set) {
        conn->n_meta = found.n;
        conn->meta_exp = exp;
    }
    return reply(hs, option, PRL_NBD_REP_ACK, NULL, 0);
}

/* Whether |option| must be refused because TLS is required and not yet
 * negotiated. */
static bool tls_required(const struct prl_nbd_conn *conn, uint32_t option)
{
    return prl_nbd_server_cfg(conn->srv)->tls && !conn->tls &&
           option != PRL_NBD_OPT_STARTTLS && option != PRL_NBD_OPT_ABORT;
}

static int opt_starttls(struct hs *hs, uint32_t len)
{
    struct prl_nbd_conn *conn = hs->conn;
    const struct prl_nbd_tls *tls = prl_nbd_server_cfg(conn->srv)->tls;
    int r;

    if (len != 0) {
        return reply_err(hs, PRL_NBD_OPT_STARTTLS, PRL_NBD_REP_ERR_INVALID,
                         "NBD_OPT_STARTTLS takes no data");
    }
    if (!tls) {
        return reply_err(hs, PRL_NBD_OPT_STARTTLS, PRL_NBD_REP_ERR_POLICY,
                         "TLS not configured on this server");
    }
    if (conn->tls) {
        return reply_err(hs, PRL_NBD_OPT_STARTTLS, PRL_NBD_REP_ERR_INVALID,
                         "TLS is already negotiated");
    }
    r = reply(hs, PRL_NBD_OPT_STARTTLS, PRL_NBD_REP_ACK, NULL, 0);
    if (r < 0) {
        return r;
    }
    /* From here on there is no going back to plain text: a failure
     * hangs up (the spec's rule). */
    r = prl_nbd_sock_tls_start(conn, tls, hs_poll, hs);
    if (r < 0) {
        return r;
    }
    conn->tls = true;
    /* Nothing negotiated before STARTTLS survives it.  In FORCEDTLS
     * nothing could be, but the rule is the spec's. */
    conn->structured = false;
    conn->extended = false;
    conn->n_meta = 0;
    conn->meta_exp = NULL;
    return 0;
}

/* One option: 1 to enter transmission, 0 to go on, < 0 to hang up. */
static int handle_option(struct hs *hs, uint32_t option, uint32_t len)
{
    struct prl_nbd_conn *conn = hs->conn;

    if (prl_nbd_server_stopping(conn->srv) && option != PRL_NBD_OPT_ABORT) {
        if (option == PRL_NBD_OPT_EXPORT_NAME) {
            return prl_error(ESHUTDOWN, "%s: server is shutting down",
                             conn->peer);
        }
        return reply_err(hs, option, PRL_NBD_REP_ERR_SHUTDOWN,
                         "server is shutting down");
    }
    /* FORCEDTLS: before STARTTLS, only STARTTLS and ABORT are served. */
    if (tls_required(conn, option)) {
        if (option == PRL_NBD_OPT_EXPORT_NAME) {
            /* It cannot be answered with an error: hang up. */
            return prl_error(EACCES,
                             "%s: NBD_OPT_EXPORT_NAME without TLS; this "
                             "server requires NBD_OPT_STARTTLS first",
                             conn->peer);
        }
        return reply_err(hs, option, PRL_NBD_REP_ERR_TLS_REQD,
                         "TLS is required: send NBD_OPT_STARTTLS first");
    }
    switch (option) {
    case PRL_NBD_OPT_EXPORT_NAME: {
        int r = opt_export_name(hs, len);
        return r < 0 ? r : 1;
    }
    case PRL_NBD_OPT_ABORT:
        /* Acknowledge; the client may already have gone. */
        reply(hs, option, PRL_NBD_REP_ACK, NULL, 0);
        return prl_error(ECONNABORTED, "%s: client aborted the handshake",
                         conn->peer);
    case PRL_NBD_OPT_LIST:
        return opt_list(hs, len);
    case PRL_NBD_OPT_STARTTLS:
        return opt_starttls(hs, len);
    case PRL_NBD_OPT_INFO:
    case PRL_NBD_OPT_GO:
        return opt_info_go(hs, option, len);
    case PRL_NBD_OPT_STRUCTURED_REPLY:
        if (len != 0) {
            return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                             "NBD_OPT_STRUCTURED_REPLY takes no data");
        }
        if (conn->extended) {
            return reply_err(hs, option, PRL_NBD_REP_ERR_EXT_HEADER_REQD,
                             "extended headers are already negotiated");
        }
        conn->structured = true;
        return reply(hs, option, PRL_NBD_REP_ACK, NULL, 0);
    case PRL_NBD_OPT_EXTENDED_HEADERS:
        if (len != 0) {
            return reply_err(hs, option, PRL_NBD_REP_ERR_INVALID,
                             "NBD_OPT_EXTENDED_HEADERS takes no data");
        }
        conn->extended = true;
        return reply(hs, option, PRL_NBD_REP_ACK, NULL, 0);
    case PRL_NBD_OPT_LIST_META_CONTEXT:
    case PRL_NBD_OPT_SET_META_CONTEXT:
        return opt_meta(hs, option, len);
    default:
        return reply_err(hs, option, PRL_NBD_REP_ERR_UNSUP,
                         "option %" PRIu32 " is not supported", option);
    }
}

int prl_nbd_handshake(struct prl_nbd_conn *conn)
{
    const struct prl_nbd_server_config *cfg = prl_nbd_server_cfg(conn->srv);
    struct hs hs = {.conn = conn, .deadline_ms = -1};
    uint8_t greet[18];
    uint32_t cflags;
    struct iovec iov = {.iov_base = greet, .iov_len = sizeof(greet)};
    int r;

    if (cfg->handshake_limit > 0) {
        hs.deadline_ms = prl_mono_ms() + (int64_t)cfg->handshake_limit * 1000;
    }
    prl_be64_store(greet, PRL_NBD_MAGIC_INIT);
    prl_be64_store(greet + 8, PRL_NBD_MAGIC_OPTS);
    prl_be16_store(greet + 16,
                   PRL_NBD_FLAG_FIXED_NEWSTYLE | PRL_NBD_FLAG_NO_ZEROES);
    r = hs_send(&hs, &iov, 1);
    if (r < 0) {
        return r;
    }
    r = hs_read(&hs, &cflags, sizeof(cflags));
    if (r < 0) {
        return r;
    }
    cflags = be32toh(cflags);
    if (cflags & ~(PRL_NBD_FLAG_C_FIXED_NEWSTYLE | PRL_NBD_FLAG_C_NO_ZEROES)) {
        return prl_error(EPROTO, "%s: unknown client flags 0x%" PRIx32,
                         conn->peer, cflags);
    }
    conn->fixed_newstyle = cflags & PRL_NBD_FLAG_C_FIXED_NEWSTYLE;
    conn->no_zeroes = cflags & PRL_NBD_FLAG_C_NO_ZEROES;

    hs.opt = malloc(PRL_NBD_MAX_OPTION);
    if (!hs.opt) {
        return prl_error(ENOMEM, "out of memory");
    }
    for (;;) {
        struct prl_nbd_opt_hdr h;
        uint32_t option, len;

        r = hs_read(&hs, &h, sizeof(h));
        if (r < 0) {
            break;
        }
        option = be32toh(h.option);
        len = be32toh(h.length);
        if (be64toh(h.magic) != PRL_NBD_MAGIC_OPTS) {
            r = prl_error(EPROTO, "%s: bad option magic 0x%016" PRIx64,
                          conn->peer, (uint64_t)be64toh(h.magic));
            break;
        }
        if (++conn->n_options > PRL_NBD_MAX_OPTIONS) {
            r = prl_error(EPROTO, "%s: more than %u options", conn->peer,
                          PRL_NBD_MAX_OPTIONS);
            break;
        }
        /* Without fixed newstyle the client understands no replies. */
        if (!conn->fixed_newstyle && option != PRL_NBD_OPT_EXPORT_NAME) {
            r = prl_error(EPROTO,
                          "%s: option %" PRIu32 " without fixed "
                          "newstyle",
                          conn->peer, option);
            break;
        }
        if (len > PRL_NBD_MAX_OPTION) {
            if (option == PRL_NBD_OPT_EXPORT_NAME || len > PRL_NBD_MAX_DRAIN) {
                r = prl_error(EPROTO,
                              "%s: option %" PRIu32 " of %" PRIu32
                              " bytes is too long",
                              conn->peer, option, len);
                break;
            }
            r = hs_drain(&hs, len);
            if (r == 0 && tls_required(conn, option)) {
                r = reply_err(&hs, option, PRL_NBD_REP_ERR_TLS_REQD,
                              "TLS is required: send NBD_OPT_STARTTLS "
                              "first");
            } else if (r == 0) {
                r = reply_err(&hs, option, PRL_NBD_REP_ERR_TOO_BIG,
                              "option data of %" PRIu32 " bytes is over "
                              "the limit of %u",
                              len, PRL_NBD_MAX_OPTION);
            }
        } else {
            r = hs_read(&hs, hs.opt, len);
            if (r == 0) {
                r = handle_option(&hs, option, len);
            }
        }
        if (r != 0) {
            break;
        }
    }
    free(hs.opt);
    /* |hs| ends here; transmission has no time limit. */
    prl_nbd_sock_tls_wait(&conn->sock, NULL, NULL);
    return r < 0 ? r : 0;
}
