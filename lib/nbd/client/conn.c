/* SPDX-License-Identifier: MIT */
/* The client's connection: TCP (IPv4/IPv6, TCP_NODELAY) or Unix socket,
 * exact-length reads and writes, TLS credentials (X.509 directory or
 * psktool keys file) and the TLS handshake. */
#include "nbd/client/internal.h"
#include "nbd/wire.h"
#include "common/util.h"
#include "prl/error.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* A keys file larger than this is not a psktool file. */
#define PSK_FILE_MAX (1u << 20)

void prl_nbd_cl_printable(char *out, size_t size, const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len && i + 1 < size; i++) {
        out[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
    }
    if (size > 0) {
        out[i] = '\0';
    }
}

int prl_nbd_cl_proto(struct prl_nbd_client *c, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->dead = true;
    return prl_error(EIO, "nbd server %s: protocol error: %s", c->name, msg);
}

/* errno after a failed send or receive: a socket timeout (set only for
 * a handshake with a time limit) says EAGAIN, which means ETIMEDOUT. */
static int io_errno(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno;
}

int prl_nbd_cl_send(struct prl_nbd_client *c, const void *buf, size_t n)
{
    const uint8_t *p = buf;

    while (n > 0) {
        ssize_t r;
        if (c->gs) {
            r = gnutls_record_send(c->gs, p, n);
            if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
                continue;
            }
            if (r < 0) {
                c->dead = true;
                return prl_error(EIO, "nbd server %s: TLS send: %s", c->name,
                                 gnutls_strerror((int)r));
            }
        } else {
            r = send(c->fd, p, n, MSG_NOSIGNAL);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0) {
                c->dead = true;
                return prl_error_errno(io_errno(), "nbd server %s: send",
                                       c->name);
            }
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* One read of at most |n| bytes from the socket (through TLS once
 * started): the count, or a negative errno with a message (end of
 * stream included); the client is dead then. */
static ssize_t recv_some(struct prl_nbd_client *c, void *p, size_t n)
{
    ssize_t r;

    for (;;) {
        if (c->gs) {
            r = gnutls_record_recv(c->gs, p, n);
            if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
                continue;
            }
            if (r < 0 && r != GNUTLS_E_PREMATURE_TERMINATION) {
                c->dead = true;
                return prl_error(EIO, "nbd server %s: TLS receive: %s", c->name,
                                 gnutls_strerror((int)r));
            }
            if (r < 0) {
                r = 0;
            }
        } else {
            r = recv(c->fd, p, n, 0);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0) {
                c->dead = true;
                return prl_error_errno(io_errno(), "nbd server %s: receive",
                                       c->name);
            }
        }
        break;
    }
    if (r == 0) {
        c->dead = true;
        return prl_error(
            EIO, "nbd server %s closed the connection unexpectedly", c->name);
    }
    return r;
}

int prl_nbd_cl_recv(struct prl_nbd_client *c, void *buf, size_t n)
{
    uint8_t *p = buf;

    while (n > 0) {
        ssize_t r;
        if (c->rpos < c->rlen) {
            size_t k = PRL_MIN(n, c->rlen - c->rpos);
            memcpy(p, c->rbuf + c->rpos, k);
            c->rpos += k;
            p += k;
            n -= k;
            continue;
        }
        if (n >= PRL_NBD_CL_RBUF) {
            /* Large payloads go straight to their buffer. */
            r = recv_some(c, p, n);
            if (r < 0) {
                return (int)r;
            }
            p += r;
            n -= (size_t)r;
            continue;
        }
        r = recv_some(c, c->rbuf, PRL_NBD_CL_RBUF);
        if (r < 0) {
            return (int)r;
        }
        c->rpos = 0;
        c->rlen = (size_t)r;
    }
    return 0;
}

int prl_nbd_cl_skip(struct prl_nbd_client *c, uint64_t n)
{
    uint8_t buf[4096];

    while (n > 0) {
        size_t k = (size_t)PRL_MIN(n, (uint64_t)sizeof(buf));
        int r = prl_nbd_cl_recv(c, buf, k);
        if (r < 0) {
            return r;
        }
        n -= k;
    }
    return 0;
}

/* GnuTLS writes through here: MSG_NOSIGNAL, so a server that hangs up
 * is an error, not a SIGPIPE. */
static ssize_t tls_push(gnutls_transport_ptr_t ptr, const void *buf, size_t n)
{
    struct prl_nbd_client *c = ptr;
    ssize_t r = send(c->fd, buf, n, MSG_NOSIGNAL);

    if (r < 0) {
        errno = io_errno(); /* a timeout must not look like "again" */
    }
    return r;
}

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t n)
{
    struct prl_nbd_client *c = ptr;
    ssize_t r = recv(c->fd, buf, n, 0);

    if (r < 0) {
        errno = io_errno();
    }
    return r;
}

/* Give every send and receive on |fd| a time limit (0: none). */
static void set_timeout(int fd, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000,
                         .tv_usec = (suseconds_t)(ms % 1000) * 1000};

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    ch = tolower(ch);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* The key of |user| in the psktool file |path| ("user:hexkey" lines)
 * into *key (gnutls_free it). */
static int psk_key(const char *path, const char *user, gnutls_datum_t *key)
{
    gnutls_datum_t d = {NULL, 0};
    size_t ul = strlen(user);
    int r = gnutls_load_file(path, &d);

    if (r < 0) {
        return prl_error(EINVAL, "TLS: cannot read tls-psk-file '%s': %s", path,
                         gnutls_strerror(r));
    }
    r = prl_error(EACCES, "TLS: tls-psk-file '%s' has no key for user '%s'",
                  path, user);
    for (size_t i = 0; i < d.size && d.size <= PSK_FILE_MAX;) {
        const char *line = (const char *)d.data + i;
        size_t len = 0;
        while (i + len < d.size && line[len] != '\n') {
            len++;
        }
        i += len + 1;
        if (len > 0 && line[len - 1] == '\r') {
            len--;
        }
        if (len > ul + 1 && memcmp(line, user, ul) == 0 && line[ul] == ':') {
            const char *hex = line + ul + 1;
            size_t hl = len - ul - 1;
            bool ok = hl % 2 == 0;
            for (size_t j = 0; ok && j < hl; j++) {
                ok = hexval((unsigned char)hex[j]) >= 0;
            }
            if (!ok) {
                r = prl_error(EINVAL,
                              "TLS: tls-psk-file '%s': the key of user "
                              "'%s' is not an even number of hex digits",
                              path, user);
                break;
            }
            key->data = gnutls_malloc(hl / 2);
            if (!key->data) {
                r = prl_error(ENOMEM, "out of memory");
                break;
            }
            key->size = (unsigned)(hl / 2);
            for (size_t j = 0; j < hl / 2; j++) {
                key->data[j] =
                    (unsigned char)(hexval((unsigned char)hex[2 * j]) << 4 |
                                    hexval((unsigned char)hex[2 * j + 1]));
            }
            r = 0;
            break;
        }
    }
    gnutls_memset(d.data, 0, d.size);
    gnutls_free(d.data);
    return r;
}

/* The PSK identity: tls-username, the URI's userinfo, else the login
 * name of this process's user (nbd-uri.md's "local credential"). */
static const char *psk_user(const struct prl_nbd_uri *u)
{
    struct passwd *pw;

    if (u->user) {
        return u->user;
    }
    pw = getpwuid(getuid());
    return pw ? pw->pw_name : NULL;
}

/* X.509 credentials from the tls-certificates directory (ca-cert.pem,
 * optional ca-crl.pem, client-cert.pem + client-key.pem), else the
 * system's trusted CAs. */
static int load_x509(struct prl_nbd_client *c, const struct prl_nbd_uri *u)
{
    const char *dir = u->tls_certificates;
    char ca[4096], crl[4096], cert[4096], key[4096];
    struct stat st;
    int r = gnutls_certificate_allocate_credentials(&c->x509);

    if (r < 0) {
        return prl_error(ENOMEM, "TLS: %s", gnutls_strerror(r));
    }
    if (!dir) {
        r = gnutls_certificate_set_x509_system_trust(c->x509);
        if (r < 0) {
            return prl_error(EINVAL, "TLS: no system CA certificates: %s",
                             gnutls_strerror(r));
        }
        return 0;
    }
    if ((size_t)snprintf(ca, sizeof(ca), "%s/ca-cert.pem", dir) >= sizeof(ca) ||
        (size_t)snprintf(crl, sizeof(crl), "%s/ca-crl.pem", dir) >=
            sizeof(crl) ||
        (size_t)snprintf(cert, sizeof(cert), "%s/client-cert.pem", dir) >=
            sizeof(cert) ||
        (size_t)snprintf(key, sizeof(key), "%s/client-key.pem", dir) >=
            sizeof(key)) {
        return prl_error(ENAMETOOLONG, "TLS: tls-certificates '%s' is too long",
                         dir);
    }
    if (stat(dir, &st) < 0) {
        return prl_error_errno(errno, "TLS: tls-certificates '%s'", dir);
    }
    if (stat(ca, &st) < 0) {
        return prl_error_errno(errno, "TLS: tls-certificates: %s", ca);
    }
    r = gnutls_certificate_set_x509_trust_file(c->x509, ca,
                                               GNUTLS_X509_FMT_PEM);
    if (r <= 0) {
        return prl_error(EINVAL, "TLS: %s: not a PEM CA certificate%s%s", ca,
                         r < 0 ? ": " : "", r < 0 ? gnutls_strerror(r) : "");
    }
    if (stat(crl, &st) == 0) {
        r = gnutls_certificate_set_x509_crl_file(c->x509, crl,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            return prl_error(EINVAL, "TLS: %s: %s", crl, gnutls_strerror(r));
        }
    }
    if (stat(cert, &st) == 0) {
        r = gnutls_certificate_set_x509_key_file(c->x509, cert, key,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            return prl_error(EINVAL, "TLS: %s with %s: %s", cert, key,
                             gnutls_strerror(r));
        }
    }
    return 0;
}

/* PSK credentials: the key of the URI's user from tls-psk-file. */
static int load_psk(struct prl_nbd_client *c, const struct prl_nbd_uri *u)
{
    const char *user = psk_user(u);
    gnutls_datum_t key = {NULL, 0};
    int r;

    if (!user) {
        return prl_error(EINVAL, "TLS: no PSK username: give tls-username= or "
                                 "user@ in the URI");
    }
    r = psk_key(u->tls_psk_file, user, &key);
    if (r < 0) {
        return r;
    }
    r = gnutls_psk_allocate_client_credentials(&c->psk);
    if (r == 0) {
        r = gnutls_psk_set_client_credentials(c->psk, user, &key,
                                              GNUTLS_PSK_KEY_RAW);
    }
    gnutls_memset(key.data, 0, key.size);
    gnutls_free(key.data);
    if (r < 0) {
        return prl_error(EINVAL, "TLS: PSK credentials: %s",
                         gnutls_strerror(r));
    }
    return 0;
}

/* Why the handshake failed, in words. */
static int handshake_error(struct prl_nbd_client *c, int err)
{
    gnutls_datum_t out = {NULL, 0};
    char text[512] = "";

    if (err == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        unsigned status = gnutls_session_get_verify_cert_status(c->gs);
        if (gnutls_certificate_verification_status_print(
                status, GNUTLS_CRT_X509, &out, 0) == 0 &&
            out.data) {
            snprintf(text, sizeof(text), "%s", (const char *)out.data);
        }
        gnutls_free(out.data);
        return prl_error(EACCES,
                         "nbd server %s: TLS: the server certificate is not "
                         "trusted: %s (tls-certificates names the CA; "
                         "tls-verify-peer=0 skips the check)",
                         c->name, text);
    }
    if (err == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        return prl_error(EACCES,
                         "nbd server %s: TLS: the server refused the "
                         "handshake with alert '%s'%s",
                         c->name,
                         gnutls_alert_get_name(gnutls_alert_get(c->gs)),
                         c->psk ? " (wrong PSK key or unknown user?)"
                                : " (does it need a client certificate?)");
    }
    if (err == GNUTLS_E_PREMATURE_TERMINATION || err == GNUTLS_E_PULL_ERROR ||
        err == GNUTLS_E_PUSH_ERROR) {
        return prl_error(EACCES,
                         "nbd server %s: TLS: the server hung up during the "
                         "handshake%s",
                         c->name,
                         c->psk ? " (wrong PSK key or unknown user?)"
                                : " (does it trust our certificate?)");
    }
    return prl_error(EPROTO, "nbd server %s: TLS handshake failed: %s", c->name,
                     gnutls_strerror(err));
}

int prl_nbd_cl_start_tls(struct prl_nbd_client *c, const struct prl_nbd_uri *u)
{
    bool psk = u->tls_type == PRL_NBD_URI_TLS_PSK;
    const char *prio = psk ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : "NORMAL";
    const char *host = u->tls_hostname ? u->tls_hostname
                       : u->is_unix    ? NULL
                                       : u->host;
    int r;

    if (c->rpos != c->rlen) {
        return prl_nbd_cl_proto(c,
                                "%zu bytes came after the STARTTLS "
                                "reply, before the TLS handshake",
                                c->rlen - c->rpos);
    }
    r = prl_gnutls_load();
    if (r == 0) {
        r = psk ? load_psk(c, u) : load_x509(c, u);
    }
    if (r < 0) {
        return r;
    }
    r = gnutls_init(&c->gs, GNUTLS_CLIENT);
    if (r < 0) {
        c->gs = NULL;
        return prl_error(ENOMEM, "TLS: %s", gnutls_strerror(r));
    }
    r = gnutls_priority_set_direct(c->gs, prio, NULL);
    if (r == 0) {
        r = psk ? gnutls_credentials_set(c->gs, GNUTLS_CRD_PSK, c->psk)
                : gnutls_credentials_set(c->gs, GNUTLS_CRD_CERTIFICATE,
                                         c->x509);
    }
    if (r == 0 && !psk && host && u->tls_hostname) {
        r = gnutls_server_name_set(c->gs, GNUTLS_NAME_DNS, host, strlen(host));
    }
    if (r < 0) {
        return prl_error(EINVAL, "TLS: %s", gnutls_strerror(r));
    }
    if (!psk && u->tls_verify_peer != 0) {
        /* The handshake verifies the chain (and the name, when there is
         * one) and fails with a status we can print. */
        gnutls_session_set_verify_cert(c->gs, host, 0);
    }
    gnutls_transport_set_ptr(c->gs, c);
    gnutls_transport_set_push_function(c->gs, tls_push);
    gnutls_transport_set_pull_function(c->gs, tls_pull);
    do {
        r = gnutls_handshake(c->gs);
    } while (r < 0 && !gnutls_error_is_fatal(r));
    if (r < 0) {
        r = handshake_error(c, r);
        gnutls_deinit(c->gs);
        c->gs = NULL;
        c->dead = true;
        return r;
    }
    c->exp.tls = true;
    return 0;
}

/* Connect a TCP socket to host:port, trying each address. */
static int connect_tcp(const struct prl_nbd_uri *u, const char *name)
{
    struct addrinfo hints, *res, *ai;
    int fd = -1, err = 0, r;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    r = getaddrinfo(u->host, u->port, &hints, &res);
    if (r == EAI_BADFLAGS || r == EAI_NONAME) {
        /* AI_ADDRCONFIG hides ::1 on hosts with IPv6 only on loopback. */
        hints.ai_flags = 0;
        r = getaddrinfo(u->host, u->port, &hints, &res);
    }
    if (r != 0) {
        return prl_error(EHOSTUNREACH, "%s: cannot resolve host '%s': %s", name,
                         u->host, gai_strerror(r));
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            break;
        }
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        return prl_error_errno(err ? err : ECONNREFUSED,
                               "%s: cannot connect to host '%s' port %s", name,
                               u->host, u->port);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* Connect to the URI's Unix socket (a leading NUL: the abstract
 * namespace).  The descriptor, or a negative errno with a message. */
static int connect_unix(const struct prl_nbd_uri *u, const char *name)
{
    struct sockaddr_un sa;
    socklen_t len;
    int fd;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (u->socket_len >= sizeof(sa.sun_path)) {
        return prl_error(ENAMETOOLONG,
                         "%s: socket '%s' is longer than %zu bytes", name,
                         u->socket, sizeof(sa.sun_path) - 1);
    }
    memcpy(sa.sun_path, u->socket, u->socket_len);
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + u->socket_len +
                      (u->socket[0] ? 1 : 0));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return prl_error_errno(errno, "%s: socket", name);
    }
    if (connect(fd, (struct sockaddr *)&sa, len) < 0) {
        int e = errno;
        close(fd);
        return prl_error_errno(e, "%s: cannot connect to socket '%s'", name,
                               u->socket[0] ? u->socket : "(abstract)");
    }
    return fd;
}

/* A client on |fd| named |name|, not negotiated yet. */
static int client_new(int fd, const char *name, const char *export_name,
                      struct prl_nbd_client **out)
{
    struct prl_nbd_client *c = prl_calloc(1, sizeof(*c));

    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    c->name = strdup(name);
    c->export_name = strdup(export_name);
    c->rbuf = malloc(PRL_NBD_CL_RBUF);
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->next_cookie = 1;
    *out = c;
    if (!c->name || !c->export_name || !c->rbuf) {
        prl_nbd_client_close(c);
        *out = NULL;
        return prl_error(ENOMEM, "out of memory");
    }
    return 0;
}

int prl_nbd_client_connect_fd(int fd, const char *name, const char *export_name,
                              const struct prl_nbd_client_opts *opts,
                              struct prl_nbd_client **out)
{
    struct prl_nbd_client *c;
    int r = client_new(fd, name, export_name, &c);

    *out = NULL;
    if (r < 0) {
        return r;
    }
    r = prl_nbd_cl_handshake(c, NULL, opts);
    if (r < 0) {
        prl_nbd_client_close(c); /* NBD_OPT_ABORT if still in sync */
        return r;
    }
    *out = c;
    return 0;
}

/* Connect to where |uri| points and make a client there, named for
 * messages by the address and, with |export|, the export.  0 and *out,
 * or a negative errno with a message. */
static int connect_uri(const struct prl_nbd_uri *uri, bool export,
                       struct prl_nbd_client **out)
{
    char name[512], what[300] = "";
    int fd;

    if (export) {
        snprintf(what, sizeof(what), " (export '%s')", uri->export_name);
    }
    if (uri->is_unix) {
        char sock[256];
        prl_nbd_cl_printable(sock, sizeof(sock), uri->socket, uri->socket_len);
        snprintf(name, sizeof(name), "'%s'%s", sock, what);
        fd = connect_unix(uri, name);
    } else {
        bool v6 = strchr(uri->host, ':') != NULL;
        snprintf(name, sizeof(name), "%s%s%s:%s%s", v6 ? "[" : "", uri->host,
                 v6 ? "]" : "", uri->port, what);
        fd = connect_tcp(uri, name);
    }
    if (fd < 0) {
        return fd;
    }
    return client_new(fd, name, export ? uri->export_name : "", out);
}

int prl_nbd_client_connect(const struct prl_nbd_uri *uri,
                           const struct prl_nbd_client_opts *opts,
                           struct prl_nbd_client **out)
{
    struct prl_nbd_client *c;
    int r;

    *out = NULL;
    r = connect_uri(uri, true, &c);
    if (r < 0) {
        return r;
    }
    if (opts && opts->timeout_ms) {
        set_timeout(c->fd, opts->timeout_ms);
    }
    r = prl_nbd_cl_handshake(c, uri->tls ? uri : NULL, opts);
    if (r < 0) {
        prl_nbd_client_close(c); /* NBD_OPT_ABORT if still in sync */
        return r;
    }
    if (opts && opts->timeout_ms) {
        set_timeout(c->fd, 0);
    }
    *out = c;
    return 0;
}

int prl_nbd_client_list(const struct prl_nbd_uri *uri,
                        struct prl_nbd_export_info **out, size_t *n_out)
{
    struct prl_nbd_client *c;
    int r;

    *out = NULL;
    *n_out = 0;
    r = connect_uri(uri, false, &c);
    if (r < 0) {
        return r;
    }
    r = prl_nbd_cl_list(c, uri->tls ? uri : NULL, out, n_out);
    prl_nbd_client_close(c); /* NBD_OPT_ABORT */
    return r;
}

int prl_nbd_client_list_fd(int fd, const char *name,
                           struct prl_nbd_export_info **out, size_t *n_out)
{
    struct prl_nbd_client *c;
    int r = client_new(fd, name, "", &c);

    *out = NULL;
    *n_out = 0;
    if (r < 0) {
        return r;
    }
    r = prl_nbd_cl_list(c, NULL, out, n_out);
    prl_nbd_client_close(c);
    return r;
}

/* Send |n| bytes if the socket takes them now; no error is reported
 * (the message of the failure that led here must stay). */
static void send_quiet(struct prl_nbd_client *c, const void *buf, size_t n)
{
    if (c->gs) {
        gnutls_record_send(c->gs, buf, n);
    } else if (send(c->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* Nothing to do: the connection is being dropped anyway. */
    }
}

void prl_nbd_client_close(struct prl_nbd_client *c)
{
    if (!c) {
        return;
    }
    if (!c->dead && c->haggling) {
        /* The handshake failed cleanly (say, no such export): end it as
         * the protocol asks, with NBD_OPT_ABORT, without waiting for the
         * reply. */
        uint8_t h[sizeof(struct prl_nbd_opt_hdr)];
        prl_be64_store(h, PRL_NBD_MAGIC_OPTS);
        prl_be32_store(h + 8, PRL_NBD_OPT_ABORT);
        prl_be32_store(h + 12, 0);
        send_quiet(c, h, sizeof(h));
    }
    if (!c->dead && c->transmission) {
        /* Soft disconnect: NBD_CMD_DISC has no reply. */
        uint8_t req[sizeof(struct prl_nbd_ext_request)];
        size_t n;
        memset(req, 0, sizeof(req));
        if (c->exp.extended) {
            prl_be32_store(req, PRL_NBD_MAGIC_EXT_REQUEST);
            n = sizeof(struct prl_nbd_ext_request);
        } else {
            prl_be32_store(req, PRL_NBD_MAGIC_REQUEST);
            n = sizeof(struct prl_nbd_request);
        }
        prl_be16_store(req + 6, PRL_NBD_CMD_DISC);
        prl_be64_store(req + 8, c->next_cookie++);
        if (prl_nbd_cl_send(c, req, n) == 0 && c->gs) {
            gnutls_bye(c->gs, GNUTLS_SHUT_WR);
        }
    }
    if (c->gs) {
        gnutls_deinit(c->gs);
    }
    if (c->x509) {
        gnutls_certificate_free_credentials(c->x509);
    }
    if (c->psk) {
        gnutls_psk_free_client_credentials(c->psk);
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->send_lock);
    pthread_cond_destroy(&c->cond);
    for (size_t i = 0; i < c->n_bitmaps; i++) {
        free(c->bitmaps[i].name);
    }
    free(c->bitmaps);
    free(c->rbuf);
    free(c->name);
    free(c->export_name);
    free(c);
}

const struct prl_nbd_export *
prl_nbd_client_export(const struct prl_nbd_client *c)
{
    return &c->exp;
}
