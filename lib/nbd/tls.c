/* SPDX-License-Identifier: MIT */
/* TLS credentials for the NBD server: every file read and checked at load
 * (so a bad key fails at start-up, not at the first client), sessions
 * made from them, and the messages that say why a handshake failed. */
#include "nbd/tls.h"
#include "common/util.h"
#include "prl/error.h"

#include <ctype.h>
#include <errno.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A keys.psk larger than this is refused: it is a short list of lines. */
#define PSK_FILE_MAX (1u << 20)
/* Key exchanges PSK needs on top of the base priority string. */
#define PSK_KX ":+ECDHE-PSK:+DHE-PSK:+PSK"

struct psk_key {
    char *user;
    uint8_t *key;
    size_t len;
};

struct prl_nbd_tls {
    enum prl_nbd_tls_type type;
    bool verify_peer;
    char *authz; /* NULL: no authorization check */
    gnutls_priority_t prio;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk;
    gnutls_dh_params_t dh; /* from dh-params.pem, else NULL */
    struct psk_key *keys;
    size_t n_keys;
};

const char *prl_nbd_tls_kind(const struct prl_nbd_tls *tls)
{
    return tls->type == PRL_NBD_TLS_X509 ? "X.509" : "PSK";
}

/* DIR/NAME in |buf|.  When the file is |required| or exists it must be
 * a readable regular file: 1 when it is, 0 when an optional file is
 * absent, or a negative errno with a message. */
static int tls_file(const char *dir, const char *name, bool required, char *buf,
                    size_t size)
{
    struct stat st;

    if ((size_t)snprintf(buf, size, "%s/%s", dir, name) >= size) {
        return prl_error(ENAMETOOLONG, "TLS directory '%s' is too long", dir);
    }
    if (stat(buf, &st) < 0) {
        if (errno == ENOENT && !required) {
            return 0;
        }
        return prl_error_errno(errno, "TLS credentials: %s", buf);
    }
    if (!S_ISREG(st.st_mode)) {
        return prl_error(EINVAL, "TLS credentials: %s is not a regular file",
                         buf);
    }
    if (access(buf, R_OK) < 0) {
        return prl_error_errno(errno, "TLS credentials: %s", buf);
    }
    return 1;
}

static int gnutls_fail(int err, const char *path, const char *what)
{
    return prl_error(EINVAL, "TLS credentials: %s: %s: %s", path, what,
                     gnutls_strerror(err));
}

static int load_dh(struct prl_nbd_tls *tls, const char *dir)
{
    char path[4096];
    gnutls_datum_t d = {NULL, 0};
    int r = tls_file(dir, "dh-params.pem", false, path, sizeof(path));

    if (r <= 0) {
        return r;
    }
    r = gnutls_load_file(path, &d);
    if (r < 0) {
        return gnutls_fail(r, path, "cannot read");
    }
    r = gnutls_dh_params_init(&tls->dh);
    if (r == 0) {
        r = gnutls_dh_params_import_pkcs3(tls->dh, &d, GNUTLS_X509_FMT_PEM);
    }
    gnutls_free(d.data);
    if (r < 0) {
        return gnutls_fail(r, path, "not PEM PKCS#3 DH parameters");
    }
    return 0;
}

/* Print |status| (a verification result) into |buf|. */
static void status_text(unsigned status, char *buf, size_t size)
{
    gnutls_datum_t out = {NULL, 0};

    if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509,
                                                     &out, 0) == 0 &&
        out.data) {
        snprintf(buf, size, "%s", (const char *)out.data);
    } else {
        snprintf(buf, size, "verification status 0x%x", status);
    }
    gnutls_free(out.data);
}

/* QEMU's sanity check: the server's own chain is valid today and the CA
 * it will show clients is the one in ca-cert.pem. */
static int sanity_check(const char *ca, const char *crl,
                        const gnutls_x509_crt_t *crts, unsigned n,
                        const char *cert_path)
{
    gnutls_x509_trust_list_t list;
    unsigned status = 0;
    char text[512];
    int r;

    r = gnutls_x509_trust_list_init(&list, 0);
    if (r < 0) {
        return gnutls_fail(r, ca, "trust list");
    }
    r = gnutls_x509_trust_list_add_trust_file(list, ca, crl,
                                              GNUTLS_X509_FMT_PEM, 0, 0);
    if (r >= 0) {
        r = gnutls_x509_trust_list_verify_crt(list, (gnutls_x509_crt_t *)crts,
                                              n, 0, &status, NULL);
    }
    gnutls_x509_trust_list_deinit(list, 1);
    if (r < 0) {
        return gnutls_fail(r, cert_path, "cannot verify");
    }
    if (status != 0) {
        status_text(status, text, sizeof(text));
        return prl_error(EINVAL,
                         "TLS credentials: %s is not valid against %s: %s "
                         "(sanity-check=off skips this check)",
                         cert_path, ca, text);
    }
    return 0;
}

static int load_x509(struct prl_nbd_tls *tls,
                     const struct prl_nbd_tls_config *cfg)
{
    char ca[4096], crl[4096], cert[4096], key[4096];
    gnutls_x509_crt_t *crts = NULL;
    unsigned n_crts = 0;
    gnutls_x509_privkey_t pkey = NULL;
    gnutls_datum_t d = {NULL, 0};
    int have_crl, r;

    if ((r = tls_file(cfg->dir, "ca-cert.pem", true, ca, sizeof(ca))) < 0 ||
        (r = tls_file(cfg->dir, "server-cert.pem", true, cert, sizeof(cert))) <
            0 ||
        (r = tls_file(cfg->dir, "server-key.pem", true, key, sizeof(key))) <
            0 ||
        (r = have_crl =
             tls_file(cfg->dir, "ca-crl.pem", false, crl, sizeof(crl))) < 0) {
        return r;
    }
    r = gnutls_certificate_allocate_credentials(&tls->x509);
    if (r < 0) {
        return gnutls_fail(r, cfg->dir, "credentials");
    }
    r = gnutls_certificate_set_x509_trust_file(tls->x509, ca,
                                               GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        return gnutls_fail(r, ca, "not a PEM CA certificate");
    }
    if (r == 0) {
        return prl_error(EINVAL, "TLS credentials: %s: no certificate in it",
                         ca);
    }
    if (have_crl) {
        r = gnutls_certificate_set_x509_crl_file(tls->x509, crl,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            return gnutls_fail(r, crl, "not a PEM revocation list");
        }
    }

    /* Certificate and key one at a time, so the message names the file
     * at fault. */
    r = gnutls_load_file(cert, &d);
    if (r < 0) {
        return gnutls_fail(r, cert, "cannot read");
    }
    r = gnutls_x509_crt_list_import2(&crts, &n_crts, &d, GNUTLS_X509_FMT_PEM,
                                     0);
    gnutls_free(d.data);
    d.data = NULL;
    if (r < 0 || n_crts == 0) {
        r = gnutls_fail(r < 0 ? r : GNUTLS_E_NO_CERTIFICATE_FOUND, cert,
                        "not a PEM certificate");
        goto out;
    }
    r = gnutls_load_file(key, &d);
    if (r < 0) {
        r = gnutls_fail(r, key, "cannot read");
        goto out;
    }
    r = gnutls_x509_privkey_init(&pkey);
    if (r == 0) {
        r = gnutls_x509_privkey_import2(pkey, &d, GNUTLS_X509_FMT_PEM, NULL, 0);
    }
    gnutls_memset(d.data, 0, d.size);
    gnutls_free(d.data);
    if (r < 0) {
        r = gnutls_fail(r, key, "not an unencrypted PEM private key");
        goto out;
    }
    r = gnutls_certificate_set_x509_key(tls->x509, crts, n_crts, pkey);
    if (r == GNUTLS_E_CERTIFICATE_KEY_MISMATCH) {
        r = prl_error(EINVAL,
                      "TLS credentials: %s is not the key of the "
                      "certificate in %s",
                      key, cert);
        goto out;
    }
    if (r < 0) {
        r = gnutls_fail(r, cert, "cannot use with its key");
        goto out;
    }
    r = 0;
    if (cfg->sanity_check) {
        r = sanity_check(ca, have_crl ? crl : NULL, crts, n_crts, cert);
    }
    if (r == 0) {
        r = load_dh(tls, cfg->dir);
    }
    if (r == 0) {
        if (tls->dh) {
            gnutls_certificate_set_dh_params(tls->x509, tls->dh);
        } else {
            gnutls_certificate_set_known_dh_params(tls->x509,
                                                   GNUTLS_SEC_PARAM_MEDIUM);
        }
    }
out:
    if (pkey) {
        gnutls_x509_privkey_deinit(pkey);
    }
    for (unsigned i = 0; i < n_crts; i++) {
        gnutls_x509_crt_deinit(crts[i]);
    }
    gnutls_free(crts);
    return r;
}

static int hex_value(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = tolower(c);
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* One "username:hexkey" line (NUL-terminated, no newline). */
static int parse_psk_line(struct prl_nbd_tls *tls, const char *path,
                          unsigned lineno, char *line)
{
    char *colon = strchr(line, ':');
    const char *hex;
    size_t hl;
    struct psk_key *k, *v;

    if (!colon) {
        return prl_error(EINVAL,
                         "TLS credentials: %s line %u: expected "
                         "username:hexkey",
                         path, lineno);
    }
    *colon = '\0';
    hex = colon + 1;
    hl = strlen(hex);
    if (line[0] == '\0') {
        return prl_error(EINVAL, "TLS credentials: %s line %u: empty username",
                         path, lineno);
    }
    if (line[0] == '#') {
        return prl_error(EINVAL,
                         "TLS credentials: %s line %u: hex-encoded "
                         "usernames ('#...') are not supported",
                         path, lineno);
    }
    if (hl == 0 || hl % 2 != 0) {
        return prl_error(EINVAL,
                         "TLS credentials: %s line %u: the key of '%s' is "
                         "not an even number of hex digits",
                         path, lineno, line);
    }
    for (size_t i = 0; i < hl; i++) {
        if (hex_value((unsigned char)hex[i]) < 0) {
            return prl_error(EINVAL,
                             "TLS credentials: %s line %u: the key of "
                             "'%s' has a non-hex character",
                             path, lineno, line);
        }
    }
    for (size_t i = 0; i < tls->n_keys; i++) {
        if (strcmp(tls->keys[i].user, line) == 0) {
            return prl_error(EINVAL,
                             "TLS credentials: %s line %u: user '%s' is "
                             "listed twice",
                             path, lineno, line);
        }
    }
    v = realloc(tls->keys, (tls->n_keys + 1) * sizeof(*v));
    if (!v) {
        return prl_error(ENOMEM, "out of memory");
    }
    tls->keys = v;
    k = &v[tls->n_keys];
    k->user = strdup(line);
    k->len = hl / 2;
    k->key = malloc(k->len);
    if (!k->user || !k->key) {
        free(k->user);
        free(k->key);
        return prl_error(ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < k->len; i++) {
        k->key[i] = (uint8_t)(hex_value((unsigned char)hex[2 * i]) << 4 |
                              hex_value((unsigned char)hex[2 * i + 1]));
    }
    tls->n_keys++;
    return 0;
}

static int psk_lookup(gnutls_session_t gs, const char *user,
                      gnutls_datum_t *key)
{
    struct prl_nbd_tls_session *ts = gnutls_session_get_ptr(gs);
    const struct prl_nbd_tls *tls = ts->tls;
    size_t i;

    /* Kept printable for the log: it comes from the client. */
    for (i = 0; user[i] && i < PRL_NBD_TLS_USER_MAX; i++) {
        ts->psk_user[i] = isprint((unsigned char)user[i]) ? user[i] : '?';
    }
    ts->psk_user[i] = '\0';
    for (i = 0; i < tls->n_keys; i++) {
        if (strcmp(tls->keys[i].user, user) == 0) {
            key->data = gnutls_malloc(tls->keys[i].len);
            if (!key->data) {
                return -1;
            }
            memcpy(key->data, tls->keys[i].key, tls->keys[i].len);
            key->size = (unsigned)tls->keys[i].len;
            return 0;
        }
    }
    ts->psk_unknown = true;
    return -1;
}

static int load_psk(struct prl_nbd_tls *tls,
                    const struct prl_nbd_tls_config *cfg)
{
    char path[4096];
    gnutls_datum_t d = {NULL, 0};
    char *text, *line, *next;
    unsigned lineno = 0;
    int r = tls_file(cfg->dir, "keys.psk", true, path, sizeof(path));

    if (r < 0) {
        return r;
    }
    r = gnutls_load_file(path, &d);
    if (r < 0) {
        return gnutls_fail(r, path, "cannot read");
    }
    if (d.size > PSK_FILE_MAX || memchr(d.data, '\0', d.size)) {
        gnutls_memset(d.data, 0, d.size);
        gnutls_free(d.data);
        return prl_error(EINVAL,
                         "TLS credentials: %s is not a text file of "
                         "username:hexkey lines",
                         path);
    }
    text = malloc(d.size + 1);
    if (!text) {
        gnutls_free(d.data);
        return prl_error(ENOMEM, "out of memory");
    }
    memcpy(text, d.data, d.size);
    text[d.size] = '\0';
    gnutls_memset(d.data, 0, d.size);
    gnutls_free(d.data);
    r = 0;
    for (line = text; line && r == 0; line = next) {
        size_t len;

        next = strchr(line, '\n');
        if (next) {
            *next++ = '\0';
        }
        lineno++;
        len = strlen(line);
        if (len > 0 && line[len - 1] == '\r') {
            line[--len] = '\0';
        }
        if (len > 0) {
            r = parse_psk_line(tls, path, lineno, line);
        }
    }
    explicit_bzero(text, d.size);
    free(text);
    if (r < 0) {
        return r;
    }
    if (tls->n_keys == 0) {
        return prl_error(EINVAL, "TLS credentials: %s holds no key", path);
    }
    r = gnutls_psk_allocate_server_credentials(&tls->psk);
    if (r < 0) {
        return gnutls_fail(r, path, "credentials");
    }
    gnutls_psk_set_server_credentials_function(tls->psk, psk_lookup);
    r = load_dh(tls, cfg->dir);
    if (r < 0) {
        return r;
    }
    if (tls->dh) {
        gnutls_psk_set_server_dh_params(tls->psk, tls->dh);
    } else {
        gnutls_psk_set_server_known_dh_params(tls->psk,
                                              GNUTLS_SEC_PARAM_MEDIUM);
    }
    return 0;
}

int prl_nbd_tls_new_server(const struct prl_nbd_tls_config *cfg,
                           struct prl_nbd_tls **out)
{
    struct prl_nbd_tls *tls;
    const char *base = cfg->priority ? cfg->priority : "NORMAL";
    const char *err_pos = NULL;
    char *prio;
    int r;

    *out = NULL;
    if (cfg->type == PRL_NBD_TLS_X509 && cfg->authz_identity &&
        !cfg->verify_peer) {
        return prl_error(EINVAL,
                         "TLS authorization checks the client certificate: "
                         "it needs verify-peer=on");
    }
    tls = prl_calloc(1, sizeof(*tls));
    if (!tls) {
        return -ENOMEM;
    }
    tls->type = cfg->type;
    tls->verify_peer = cfg->type == PRL_NBD_TLS_X509 && cfg->verify_peer;
    if (cfg->authz_identity && !(tls->authz = strdup(cfg->authz_identity))) {
        prl_nbd_tls_free(tls);
        return prl_error(ENOMEM, "out of memory");
    }
    r = cfg->type == PRL_NBD_TLS_X509 ? load_x509(tls, cfg)
                                      : load_psk(tls, cfg);
    if (r < 0) {
        prl_nbd_tls_free(tls);
        return r;
    }
    if (asprintf(&prio, "%s%s", base,
                 cfg->type == PRL_NBD_TLS_PSK ? PSK_KX : "") < 0) {
        prl_nbd_tls_free(tls);
        return prl_error(ENOMEM, "out of memory");
    }
    r = gnutls_priority_init(&tls->prio, prio, &err_pos);
    if (r < 0) {
        r = prl_error(EINVAL, "TLS priority '%s' is invalid at '%s': %s", base,
                      err_pos ? err_pos : "?", gnutls_strerror(r));
        free(prio);
        prl_nbd_tls_free(tls);
        return r;
    }
    free(prio);
    *out = tls;
    return 0;
}

void prl_nbd_tls_free(struct prl_nbd_tls *tls)
{
    if (!tls) {
        return;
    }
    if (tls->prio) {
        gnutls_priority_deinit(tls->prio);
    }
    if (tls->x509) {
        gnutls_certificate_free_credentials(tls->x509);
    }
    if (tls->psk) {
        gnutls_psk_free_server_credentials(tls->psk);
    }
    if (tls->dh) {
        gnutls_dh_params_deinit(tls->dh);
    }
    for (size_t i = 0; i < tls->n_keys; i++) {
        explicit_bzero(tls->keys[i].key, tls->keys[i].len);
        free(tls->keys[i].key);
        free(tls->keys[i].user);
    }
    free(tls->keys);
    free(tls->authz);
    free(tls);
}

int prl_nbd_tls_session_init(struct prl_nbd_tls_session *ts,
                             const struct prl_nbd_tls *tls)
{
    int r;

    memset(ts, 0, sizeof(*ts));
    ts->tls = tls;
    r = gnutls_init(&ts->gs, GNUTLS_SERVER);
    if (r < 0) {
        ts->gs = NULL;
        return prl_error(ENOMEM, "TLS session: %s", gnutls_strerror(r));
    }
    gnutls_session_set_ptr(ts->gs, ts);
    r = gnutls_priority_set(ts->gs, tls->prio);
    if (r == 0 && tls->type == PRL_NBD_TLS_X509) {
        r = gnutls_credentials_set(ts->gs, GNUTLS_CRD_CERTIFICATE, tls->x509);
        if (tls->verify_peer) {
            /* The handshake itself verifies the chain and fails with an
             * alert the client can report. */
            gnutls_certificate_server_set_request(ts->gs, GNUTLS_CERT_REQUIRE);
            gnutls_session_set_verify_cert(ts->gs, NULL, 0);
        } else {
            gnutls_certificate_server_set_request(ts->gs, GNUTLS_CERT_IGNORE);
        }
    } else if (r == 0) {
        r = gnutls_credentials_set(ts->gs, GNUTLS_CRD_PSK, tls->psk);
    }
    if (r < 0) {
        gnutls_deinit(ts->gs);
        ts->gs = NULL;
        return prl_error(EINVAL, "TLS session: %s", gnutls_strerror(r));
    }
    return 0;
}

void prl_nbd_tls_session_deinit(struct prl_nbd_tls_session *ts)
{
    if (ts->gs) {
        gnutls_deinit(ts->gs);
        ts->gs = NULL;
    }
}

int prl_nbd_tls_handshake_error(struct prl_nbd_tls_session *ts, int err,
                                const char *peer)
{
    char text[512];

    switch (err) {
    case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
        status_text(gnutls_session_get_verify_cert_status(ts->gs), text,
                    sizeof(text));
        return prl_error(EACCES, "%s: TLS: client certificate refused: %s",
                         peer, text);
    case GNUTLS_E_NO_CERTIFICATE_FOUND:
    case GNUTLS_E_CERTIFICATE_REQUIRED:
        return prl_error(EACCES,
                         "%s: TLS: the client sent no certificate "
                         "(verify-peer=on requires one)",
                         peer);
    case GNUTLS_E_FATAL_ALERT_RECEIVED:
        return prl_error(EACCES,
                         "%s: TLS: the client ended the handshake with "
                         "alert '%s'",
                         peer, gnutls_alert_get_name(gnutls_alert_get(ts->gs)));
    case GNUTLS_E_PULL_ERROR:
    case GNUTLS_E_PREMATURE_TERMINATION:
        /* Clients that reject our certificate mostly just close. */
        if (ts->tls->type == PRL_NBD_TLS_X509) {
            return prl_error(EACCES,
                             "%s: TLS: the client hung up during the "
                             "handshake (does it trust the CA of "
                             "server-cert.pem?)",
                             peer);
        }
        break;
    default:
        break;
    }
    if (ts->tls->type == PRL_NBD_TLS_PSK && ts->psk_unknown) {
        return prl_error(EACCES, "%s: TLS: unknown PSK user '%s'", peer,
                         ts->psk_user);
    }
    if (ts->tls->type == PRL_NBD_TLS_PSK && ts->psk_user[0] &&
        err != GNUTLS_E_PULL_ERROR && err != GNUTLS_E_PUSH_ERROR &&
        err != GNUTLS_E_PREMATURE_TERMINATION) {
        return prl_error(EACCES,
                         "%s: TLS: handshake with PSK user '%s' failed "
                         "(wrong key?): %s",
                         peer, ts->psk_user, gnutls_strerror(err));
    }
    return prl_error(EPROTO, "%s: TLS handshake failed: %s", peer,
                     gnutls_strerror(err));
}

/* |s| made printable into |out|. */
static void printable(char *out, size_t size, const char *s)
{
    size_t i;

    for (i = 0; s[i] && i + 1 < size; i++) {
        out[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
    }
    if (size > 0) {
        out[i] = '\0';
    }
}

static int peer_dn(struct prl_nbd_tls_session *ts, const char *peer,
                   char *identity, size_t size)
{
    const gnutls_datum_t *certs;
    unsigned n = 0;
    gnutls_x509_crt_t crt;
    gnutls_datum_t dn = {NULL, 0};
    int r;

    certs = gnutls_certificate_get_peers(ts->gs, &n);
    if (!certs || n == 0) {
        return prl_error(EACCES, "%s: TLS: the client sent no certificate",
                         peer);
    }
    r = gnutls_x509_crt_init(&crt);
    if (r < 0) {
        return prl_error(ENOMEM, "%s: TLS: %s", peer, gnutls_strerror(r));
    }
    r = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER);
    if (r == 0) {
        r = gnutls_x509_crt_get_dn2(crt, &dn);
    }
    gnutls_x509_crt_deinit(crt);
    if (r < 0) {
        return prl_error(EACCES, "%s: TLS: unreadable client certificate: %s",
                         peer, gnutls_strerror(r));
    }
    printable(identity, size, (const char *)dn.data);
    /* Compared as is: a DN with bytes we would print differently must
     * not match by accident. */
    r = ts->tls->authz && strcmp((const char *)dn.data, ts->tls->authz) != 0;
    gnutls_free(dn.data);
    return r;
}

int prl_nbd_tls_session_check(struct prl_nbd_tls_session *ts, const char *peer,
                              char *identity, size_t size)
{
    const struct prl_nbd_tls *tls = ts->tls;
    int mismatch = 0;

    identity[0] = '\0';
    if (tls->type == PRL_NBD_TLS_PSK) {
        const char *user = gnutls_psk_server_get_username(ts->gs);
        if (!user) {
            return prl_error(EACCES, "%s: TLS: no PSK username", peer);
        }
        printable(identity, size, user);
        mismatch = tls->authz && strcmp(user, tls->authz) != 0;
    } else if (tls->verify_peer) {
        mismatch = peer_dn(ts, peer, identity, size);
        if (mismatch < 0) {
            return mismatch;
        }
    }
    if (mismatch) {
        char want[256];
        printable(want, sizeof(want), tls->authz);
        return prl_error(EACCES,
                         "%s: TLS: %s identity '%s' is not authorized "
                         "(--tls-authz allows '%s')",
                         peer, prl_nbd_tls_kind(tls), identity, want);
    }
    return 0;
}
