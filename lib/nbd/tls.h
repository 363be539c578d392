/* SPDX-License-Identifier: MIT */
/* TLS credentials for NBD (GnuTLS): X.509 certificates or pre-shared keys
 * loaded and checked once from a directory laid out as QEMU's
 * tls-creds-x509 / tls-creds-psk objects expect, and the sessions made
 * from them with the peer checks (chain, authorization) that follow a
 * handshake. */
#ifndef PRL_NBD_TLS_H
#define PRL_NBD_TLS_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>

enum prl_nbd_tls_type {
    PRL_NBD_TLS_X509, /* DIR/ca-cert.pem, server-cert.pem, server-key.pem,
                       * optional ca-crl.pem and dh-params.pem */
    PRL_NBD_TLS_PSK,  /* DIR/keys.psk: "username:hexkey" lines (psktool),
                       * optional dh-params.pem */
};

struct prl_nbd_tls_config {
    enum prl_nbd_tls_type type;
    const char *dir;
    /* X.509: ask for a client certificate, and refuse clients without
     * one or with one ca-cert.pem does not vouch for.  QEMU's default
     * (verify-peer=on) is true; PSK always authenticates the peer. */
    bool verify_peer;
    /* X.509: at load, check that server-cert.pem is valid now and issued
     * by ca-cert.pem (QEMU's sanity-check=on). */
    bool sanity_check;
    /* A GnuTLS priority string; NULL: "NORMAL" (PSK adds its key
     * exchanges to it). */
    const char *priority;
    /* NULL: any authenticated client.  Otherwise the one identity let in:
     * the distinguished name of the client certificate (X.509, needs
     * verify_peer) or the PSK username. */
    const char *authz_identity;
};

struct prl_nbd_tls;

/* Load the server credentials of |cfg| (the strings are copied).  0 and
 * *out, or a negative errno with a message naming the file and what is
 * wrong with it. */
int prl_nbd_tls_new_server(const struct prl_nbd_tls_config *cfg,
                           struct prl_nbd_tls **out);

/* NULL is a no-op.  No session made from |tls| may remain. */
void prl_nbd_tls_free(struct prl_nbd_tls *tls);

/* "X.509" or "PSK", for messages; static. */
const char *prl_nbd_tls_kind(const struct prl_nbd_tls *tls);

/* Longest PSK username kept for messages (longer ones are cut). */
#define PRL_NBD_TLS_USER_MAX 128

/* One server session.  The GnuTLS session's user pointer (session_ptr)
 * belongs to this layer. */
struct prl_nbd_tls_session {
    gnutls_session_t gs;
    const struct prl_nbd_tls *tls;
    /* PSK: the username the client offered (printable, possibly cut),
     * and whether keys.psk lacks it; set during the handshake. */
    char psk_user[PRL_NBD_TLS_USER_MAX + 1];
    bool psk_unknown;
};

/* Make a server session for |tls| with its credentials and priorities;
 * the caller sets the transport.  0 or a negative errno (message set). */
int prl_nbd_tls_session_init(struct prl_nbd_tls_session *ts,
                             const struct prl_nbd_tls *tls);
void prl_nbd_tls_session_deinit(struct prl_nbd_tls_session *ts);

/* Record why gnutls_handshake failed with |err| for |peer|, naming the
 * cause where it is known (untrusted or missing certificate, unknown
 * PSK user, wrong key).  Returns -EACCES for authentication failures,
 * -EPROTO otherwise. */
int prl_nbd_tls_handshake_error(struct prl_nbd_tls_session *ts, int err,
                                const char *peer);

/* After a successful handshake: the client's identity (certificate DN or
 * PSK username) must satisfy the authorization, if any.  0, or -EACCES
 * with a message naming the identity found.  |identity| (|size| bytes)
 * receives the identity for logging ("" when there is none). */
int prl_nbd_tls_session_check(struct prl_nbd_tls_session *ts, const char *peer,
                              char *identity, size_t size);

#endif
