/* SPDX-License-Identifier: MIT */
/* NBD URIs (spec/nbd-uri.md): nbd://, nbds://, nbd+unix://, nbds+unix://
 * parsed into where to connect, which export and how to secure it. */
#ifndef PRL_NBD_URI_H
#define PRL_NBD_URI_H

#include <stdbool.h>
#include <stddef.h>

/* The default NBD port (IANA). */
#define PRL_NBD_DEFAULT_PORT "10809"

enum prl_nbd_tls_kind {
    PRL_NBD_URI_TLS_DEFAULT, /* X.509 unless a PSK file is given */
    PRL_NBD_URI_TLS_X509,
    PRL_NBD_URI_TLS_PSK,
};

/* A parsed URI.  Every string is owned by the struct (freed by
 * prl_nbd_uri_free) and NUL-terminated; NULL when absent. */
struct prl_nbd_uri {
    bool is_unix;           /* nbd+unix / nbds+unix */
    bool tls;               /* nbds / nbds+unix: TLS is required */
    char *host;             /* TCP: name or address, IPv6 without brackets */
    char *port;             /* TCP: decimal 1..65535, default 10809 */
    char *socket;           /* Unix: the path; may begin with NUL (abstract) */
    size_t socket_len;      /* bytes of socket, which may hold a NUL */
    char *export_name;      /* percent-decoded path without its leading '/' */
    char *user;             /* userinfo or tls-username: the PSK identity */
    char *tls_certificates; /* directory: ca-cert.pem, client-*.pem */
    char *tls_psk_file;     /* psktool keys file */
    char *tls_hostname;     /* name to verify the certificate against */
    enum prl_nbd_tls_kind tls_type;
    int tls_verify_peer; /* -1 default (verify), 0 or 1 */
};

/* True when |s| starts with a scheme this parser takes (or refuses by
 * name, as nbd+vsock): the block layer routes such names to the NBD
 * driver instead of probing a file. */
bool prl_nbd_uri_is_nbd(const char *s);

/* Parse |s| into *u.  0, or -EINVAL with a message that quotes the URI
 * and names the part at fault and its value; *u is then zeroed. */
int prl_nbd_uri_parse(const char *s, struct prl_nbd_uri *u);

/* Free the strings of *u and zero it.  A zeroed struct is fine. */
void prl_nbd_uri_free(struct prl_nbd_uri *u);

#endif
