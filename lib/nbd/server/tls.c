/* SPDX-License-Identifier: MIT */
/* The TLS socket layer: after NBD_OPT_STARTTLS, a GnuTLS session over the
 * plain layer replaces it in the connection's ops table.
 *
 * Threads: GnuTLS lets one thread receive and another send on a session
 * at once, and no more.  The transmission phase keeps to that: recv is
 * called only under the connection's read_lock and sendv only under its
 * send_lock (or by the one handshake thread), so at most one thread is in
 * gnutls_record_recv and one in gnutls_record_send.  The shutdown ops
 * only shut the descriptor down (never touch the session), so any thread
 * may call them while a worker is sending; bye and close run on the
 * connection's thread once every worker has finished.  The transport
 * callbacks report errors through the thread's own errno, since
 * gnutls_transport_set_errno is per session and would race between the
 * two threads. */
#include "nbd/server/internal.h"
#include "common/util.h"
#include "nbd/tls.h"
#include "prl/error.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tls_sock {
    struct prl_nbd_tls_session ts;
    struct prl_nbd_sock *s; /* the connection's socket (plain fields) */
    /* During the NBD handshake: called before each transport read, to
     * enforce the handshake time limit and the server stop. */
    int (*wait)(void *opaque);
    void *wait_opaque;
    int wait_err; /* the wait's negative errno that failed a read */
    /* Small pieces of a message are gathered here into full records;
     * used by sendv only, so under the send lock. */
    uint8_t *stage;
    size_t stage_size; /* the largest record we may send */
    bool failed;       /* a send failed: no close_notify */
};

static ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    struct tls_sock *t = p;
    ssize_t n;

    if (t->wait) {
        int r = t->wait(t->wait_opaque);
        if (r < 0) {
            t->wait_err = r;
            errno = -r;
            return -1;
        }
    }
    n = prl_nbd_sock_plain_ops.recv(t->s, buf, len, false);
    if (n < 0) {
        errno = (int)-n;
        return -1;
    }
    return n;
}

/* Only reached if GnuTLS's own timeouts are on (they are not: the wait
 * hook does the NBD handshake's), but a custom pull needs one. */
static int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned ms)
{
    struct tls_sock *t = p;
    struct pollfd pfd = {.fd = t->s->rfd, .events = POLLIN};
    int r;

    do {
        r = poll(&pfd, 1,
                 ms == GNUTLS_INDEFINITE_TIMEOUT ? -1
                 : ms > 86400000u                ? 86400000
                                                 : (int)ms);
    } while (r < 0 && errno == EINTR);
    return r;
}

static ssize_t tls_push(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
    struct tls_sock *t = p;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    int r = prl_nbd_sock_plain_ops.sendv(t->s, &iov, 1);

    if (r < 0) {
        errno = -r;
        return -1;
    }
    return (ssize_t)len;
}

static ssize_t tls_recv(struct prl_nbd_sock *s, void *buf, size_t len, bool all)
{
    struct tls_sock *t = s->opaque;
    size_t got = 0;

    while (got < len) {
        ssize_t n =
            gnutls_record_recv(t->ts.gs, (uint8_t *)buf + got, len - got);
        if (n > 0) {
            got += (size_t)n;
            if (!all) {
                break;
            }
            continue;
        }
        if (n == 0) {
            break; /* close_notify */
        }
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED ||
            n == GNUTLS_E_WARNING_ALERT_RECEIVED) {
            continue;
        }
        if (got > 0) {
            break; /* the error comes back on the next call */
        }
        if (t->wait_err) {
            return t->wait_err;
        }
        /* A read side shut down by the server, or a client that went
         * without close_notify, is an end of stream like a plain one. */
        if (atomic_load(&s->down) || n == GNUTLS_E_PREMATURE_TERMINATION) {
            return 0;
        }
        return prl_error(EPROTO, "TLS receive: %s", gnutls_strerror((int)n));
    }
    return (ssize_t)got;
}

/* Send |len| bytes at |p| as records of up to stage_size bytes each. */
static int tls_write(struct tls_sock *t, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = gnutls_record_send(t->ts.gs, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
            continue;
        }
        t->failed = true;
        return prl_error(EPIPE, "TLS send: %s", gnutls_strerror((int)n));
    }
    return 0;
}

/*
 * A message (header, then maybe a large payload) goes out as full records:
 * pieces that do not fill a record are copied into the stage, and the
 * record-aligned middle of a large piece is encrypted straight from the
 * caller's buffer.  So a 16-byte reply header and its 1 MiB of data cost
 * one copy of at most two records, not of the megabyte, and no record is
 * sent half empty.  (gnutls_record_cork would gather the same records,
 * but by copying the whole message into GnuTLS's buffer first.)
 */
static int tls_sendv(struct prl_nbd_sock *s, struct iovec *iov, int iovcnt)
{
    struct tls_sock *t = s->opaque;
    size_t rec = t->stage_size, used = 0;
    int r;

    for (int i = 0; i < iovcnt; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;

        while (n > 0) {
            size_t take;

            if (used == 0 && n >= rec) {
                take = n - n % rec;
                r = tls_write(t, p, take);
                if (r < 0) {
                    return r;
                }
            } else {
                take = PRL_MIN(n, rec - used);
                memcpy(t->stage + used, p, take);
                used += take;
                if (used == rec) {
                    r = tls_write(t, t->stage, used);
                    if (r < 0) {
                        return r;
                    }
                    used = 0;
                }
            }
            p += take;
            n -= take;
        }
    }
    return used > 0 ? tls_write(t, t->stage, used) : 0;
}

static size_t tls_pending(struct prl_nbd_sock *s)
{
    struct tls_sock *t = s->opaque;

    return gnutls_record_check_pending(t->ts.gs);
}

static void tls_shutdown_read(struct prl_nbd_sock *s)
{
    prl_nbd_sock_plain_ops.shutdown_read(s);
}

static void tls_shutdown_all(struct prl_nbd_sock *s)
{
    prl_nbd_sock_plain_ops.shutdown_all(s);
}

static void tls_bye(struct prl_nbd_sock *s)
{
    struct tls_sock *t = s->opaque;

    /* close_notify, without waiting for the client's: it may be gone. */
    if (!t->failed) {
        int r;
        do {
            r = gnutls_bye(t->ts.gs, GNUTLS_SHUT_WR);
        } while (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
        t->failed = true; /* once */
    }
}

static void tls_free(struct tls_sock *t)
{
    prl_nbd_tls_session_deinit(&t->ts);
    free(t->stage);
    free(t);
}

static void tls_close(struct prl_nbd_sock *s)
{
    tls_free(s->opaque);
    s->opaque = NULL;
    prl_nbd_sock_plain_ops.close(s);
}

static const struct prl_nbd_sock_ops tls_ops = {
    .recv = tls_recv,
    .sendv = tls_sendv,
    .pending = tls_pending,
    .shutdown_read = tls_shutdown_read,
    .shutdown_all = tls_shutdown_all,
    .bye = tls_bye,
    .close = tls_close,
};

int prl_nbd_sock_tls_start(struct prl_nbd_conn *conn,
                           const struct prl_nbd_tls *tls,
                           int (*wait)(void *opaque), void *wait_opaque)
{
    struct tls_sock *t = calloc(1, sizeof(*t));
    char identity[256], msg[320];
    size_t rec;
    int r;

    if (!t) {
        return prl_error(ENOMEM, "out of memory");
    }
    t->s = &conn->sock;
    t->wait = wait;
    t->wait_opaque = wait_opaque;
    r = prl_nbd_tls_session_init(&t->ts, tls);
    if (r < 0) {
        free(t);
        return r;
    }
    gnutls_transport_set_ptr(t->ts.gs, t);
    gnutls_transport_set_pull_function(t->ts.gs, tls_pull);
    gnutls_transport_set_pull_timeout_function(t->ts.gs, tls_pull_timeout);
    gnutls_transport_set_push_function(t->ts.gs, tls_push);
    gnutls_handshake_set_timeout(t->ts.gs, GNUTLS_INDEFINITE_TIMEOUT);
    do {
        r = gnutls_handshake(t->ts.gs);
    } while (r < 0 && !gnutls_error_is_fatal(r));
    if (r < 0) {
        r = t->wait_err ? prl_error_context(t->wait_err, "TLS handshake")
                        : prl_nbd_tls_handshake_error(&t->ts, r, conn->peer);
        tls_free(t);
        return r;
    }
    r = prl_nbd_tls_session_check(&t->ts, conn->peer, identity,
                                  sizeof(identity));
    if (r < 0) {
        /* Tell the client why before hanging up. */
        gnutls_alert_send(t->ts.gs, GNUTLS_AL_FATAL, GNUTLS_A_ACCESS_DENIED);
        tls_free(t);
        return r;
    }
    rec = gnutls_record_get_max_size(t->ts.gs);
    t->stage_size = rec < 512 || rec > (16u << 10) ? (16u << 10) : rec;
    t->stage = malloc(t->stage_size);
    if (!t->stage) {
        tls_free(t);
        return prl_error(ENOMEM, "out of memory");
    }
    prl_nbd_server_conn_set_sock(conn, &tls_ops, t);
    snprintf(msg, sizeof(msg), "TLS (%s, %s) established%s%s%s",
             prl_nbd_tls_kind(tls),
             gnutls_protocol_get_name(gnutls_protocol_get_version(t->ts.gs)),
             identity[0] ? " for '" : "", identity, identity[0] ? "'" : "");
    prl_nbd_server_conn_log(conn, msg);
    return 0;
}

void prl_nbd_sock_tls_wait(struct prl_nbd_sock *s, int (*wait)(void *opaque),
                           void *wait_opaque)
{
    struct tls_sock *t = s->opaque;

    if (s->ops == &tls_ops) {
        t->wait = wait;
        t->wait_opaque = wait_opaque;
    }
}
