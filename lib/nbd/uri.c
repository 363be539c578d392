/* SPDX-License-Identifier: MIT */
/* The NBD URI parser: RFC 3986 split into scheme, authority, path and
 * query, percent-decoding of each part, then the rules of nbd-uri.md. */
#include "nbd/uri.h"
#include "prl/error.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Longest URI taken; anything longer is a mistake, not an address. */
#define URI_MAX 8192

struct scheme {
    const char *name;
    bool is_unix, tls, refused;
};

static const struct scheme schemes[] = {
    {"nbd", false, false, false},      {"nbds", false, true, false},
    {"nbd+unix", true, false, false},  {"nbds+unix", true, true, false},
    {"nbd+vsock", false, false, true}, {"nbds+vsock", false, true, true},
};

/* The scheme of |s| (up to "://"), or NULL. */
static const struct scheme *find_scheme(const char *s, size_t *len)
{
    const char *sep = strstr(s, "://");

    if (!sep) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
        size_t n = strlen(schemes[i].name);
        if ((size_t)(sep - s) == n && strncasecmp(s, schemes[i].name, n) == 0) {
            *len = n + 3;
            return &schemes[i];
        }
    }
    return NULL;
}

bool prl_nbd_uri_is_nbd(const char *s)
{
    size_t len;
    return s && find_scheme(s, &len) != NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Percent-decode |len| bytes of |src| (the URI part |what|) into a new
 * string; *out_len gets its length, which counts decoded NULs.  Bytes
 * that RFC 3986 never allows raw (controls, space, non-ASCII, quotes,
 * brackets outside the host...) are refused: they must be encoded. */
static int decode(const char *uri, const char *what, const char *src,
                  size_t len, char **out, size_t *out_len)
{
    char *d = malloc(len + 1);
    size_t n = 0;

    if (!d) {
        return prl_error(ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= len || hexval(src[i + 1]) < 0 ||
                hexval(src[i + 2]) < 0) {
                free(d);
                return prl_error(EINVAL,
                                 "nbd URI '%s': %s '%.*s' has a bad "
                                 "percent-escape (want %%XX, two hex digits)",
                                 uri, what, (int)len, src);
            }
            d[n++] = (char)(hexval(src[i + 1]) << 4 | hexval(src[i + 2]));
            i += 2;
            continue;
        }
        if (c <= 0x20 || c >= 0x7f || strchr("\"<>\\^`{|}", c)) {
            free(d);
            return prl_error(EINVAL,
                             "nbd URI '%s': %s '%.*s' has the character "
                             "0x%02x, which must be percent-encoded",
                             uri, what, (int)len, src, c);
        }
        d[n++] = (char)c;
    }
    d[n] = '\0';
    *out = d;
    *out_len = n;
    return 0;
}

/* Like decode, for parts where a decoded NUL makes no sense. */
static int decode_str(const char *uri, const char *what, const char *src,
                      size_t len, char **out)
{
    size_t n;
    int r = decode(uri, what, src, len, out, &n);

    if (r == 0 && strlen(*out) != n) {
        free(*out);
        *out = NULL;
        return prl_error(EINVAL, "nbd URI '%s': %s '%.*s' decodes to a NUL",
                         uri, what, (int)len, src);
    }
    return r;
}

/* host[:port] or [v6]:port, after any userinfo. */
static int parse_hostport(const char *uri, struct prl_nbd_uri *u, const char *a,
                          size_t len)
{
    const char *port = NULL;
    size_t port_len = 0;
    int r;

    if (len > 0 && a[0] == '[') {
        const char *end = memchr(a, ']', len);
        if (!end) {
            return prl_error(EINVAL,
                             "nbd URI '%s': host '%.*s' lacks the closing "
                             "']' of an IPv6 address",
                             uri, (int)len, a);
        }
        /* Hex digits, colons and dots, then maybe a zone (RFC 6874:
         * "%25" and the interface name). */
        const char *zone = NULL;
        for (const char *p = a + 1; p < end && !zone; p++) {
            if (strncmp(p, "%25", 3) == 0 && p + 3 < end) {
                zone = p;
            } else if (!strchr("0123456789abcdefABCDEF:.", *p)) {
                return prl_error(EINVAL,
                                 "nbd URI '%s': host '%.*s' is not an IPv6 "
                                 "address",
                                 uri, (int)(end + 1 - a), a);
            }
        }
        if (end == a + 1 || zone == a + 1) {
            return prl_error(EINVAL, "nbd URI '%s': host '%.*s' is empty", uri,
                             (int)(end + 1 - a), a);
        }
        r = decode_str(uri, "host", a + 1, (size_t)(end - a - 1), &u->host);
        if (r < 0) {
            return r;
        }
        if ((size_t)(end + 1 - a) < len) {
            if (end[1] != ':') {
                return prl_error(EINVAL,
                                 "nbd URI '%s': '%.*s' follows the IPv6 host "
                                 "where ':port' may",
                                 uri, (int)(len - (size_t)(end + 1 - a)),
                                 end + 1);
            }
            port = end + 2;
            port_len = len - (size_t)(end + 2 - a);
        }
    } else {
        const char *colon = memchr(a, ':', len);
        size_t hlen = colon ? (size_t)(colon - a) : len;
        if (colon) {
            port = colon + 1;
            port_len = len - hlen - 1;
        }
        if (hlen > 0) {
            r = decode_str(uri, "host", a, hlen, &u->host);
            if (r < 0) {
                return r;
            }
            if (strchr(u->host, ':')) {
                return prl_error(EINVAL,
                                 "nbd URI '%s': host '%.*s' holds a ':' "
                                 "(write an IPv6 address in brackets)",
                                 uri, (int)hlen, a);
            }
        }
    }
    if (port && port_len > 0) {
        unsigned long v = 0;
        for (size_t i = 0; i < port_len; i++) {
            if (port[i] < '0' || port[i] > '9') {
                return prl_error(EINVAL,
                                 "nbd URI '%s': port '%.*s' is not a "
                                 "number",
                                 uri, (int)port_len, port);
            }
            if (v <= 65535) {
                v = v * 10 + (unsigned long)(port[i] - '0');
            }
        }
        if (v == 0 || v > 65535) {
            return prl_error(EINVAL,
                             "nbd URI '%s': port '%.*s' is out of range "
                             "(1 to 65535)",
                             uri, (int)port_len, port);
        }
        if (asprintf(&u->port, "%lu", v) < 0) {
            u->port = NULL;
            return prl_error(ENOMEM, "out of memory");
        }
    }
    return 0;
}

/* key=value; sets the field the key names. */
static int parse_param(const char *uri, struct prl_nbd_uri *u, const char *p,
                       size_t len)
{
    const char *eq = memchr(p, '=', len);
    char *key = NULL, *val = NULL;
    size_t klen = eq ? (size_t)(eq - p) : len, vlen = 0;
    int r;

    if (len == 0) {
        return 0; /* "a=1&&b=2": an empty parameter is harmless */
    }
    if (!eq) {
        return prl_error(EINVAL,
                         "nbd URI '%s': query parameter '%.*s' has no "
                         "'=value'",
                         uri, (int)len, p);
    }
    r = decode_str(uri, "query parameter name", p, klen, &key);
    if (r < 0) {
        return r;
    }
    if (strcmp(key, "socket") == 0) {
        r = decode(uri, "query parameter 'socket'", eq + 1, len - klen - 1,
                   &val, &vlen);
    } else {
        char what[64];
        snprintf(what, sizeof(what), "query parameter '%.32s'", key);
        r = decode_str(uri, what, eq + 1, len - klen - 1, &val);
    }
    if (r < 0) {
        free(key);
        return r;
    }

    char **slot = NULL;
    if (strcmp(key, "socket") == 0) {
        slot = &u->socket;
        u->socket_len = vlen;
    } else if (strcmp(key, "tls-certificates") == 0) {
        slot = &u->tls_certificates;
    } else if (strcmp(key, "tls-psk-file") == 0) {
        slot = &u->tls_psk_file;
    } else if (strcmp(key, "tls-username") == 0) {
        slot = &u->user;
    } else if (strcmp(key, "tls-hostname") == 0) {
        slot = &u->tls_hostname;
    } else if (strcmp(key, "tls-verify-peer") == 0) {
        if (strcmp(val, "0") == 0 || strcasecmp(val, "false") == 0 ||
            strcasecmp(val, "off") == 0 || strcasecmp(val, "no") == 0) {
            u->tls_verify_peer = 0;
        } else if (strcmp(val, "1") == 0 || strcasecmp(val, "true") == 0 ||
                   strcasecmp(val, "on") == 0 || strcasecmp(val, "yes") == 0) {
            u->tls_verify_peer = 1;
        } else {
            r = prl_error(EINVAL,
                          "nbd URI '%s': tls-verify-peer '%s' is not 0 or 1",
                          uri, val);
        }
    } else if (strcmp(key, "tls-type") == 0) {
        if (strcasecmp(val, "x509") == 0) {
            u->tls_type = PRL_NBD_URI_TLS_X509;
        } else if (strcasecmp(val, "psk") == 0) {
            u->tls_type = PRL_NBD_URI_TLS_PSK;
        } else {
            r = prl_error(EINVAL,
                          "nbd URI '%s': tls-type '%s' is not supported "
                          "(x509 or psk)",
                          uri, val);
        }
    } else {
        r = prl_error(EINVAL,
                      "nbd URI '%s': unknown query parameter '%s' (known: "
                      "socket, tls-certificates, tls-psk-file, "
                      "tls-username, tls-hostname, tls-verify-peer, "
                      "tls-type)",
                      uri, key);
    }
    if (r == 0 && slot) {
        if (*slot) {
            r = prl_error(EINVAL,
                          "nbd URI '%s': query parameter '%s' is given "
                          "twice",
                          uri, key);
        } else {
            *slot = val;
            val = NULL;
        }
    }
    free(key);
    free(val);
    return r;
}

/* The checks that need the whole URI. */
static int check_uri(const char *uri, struct prl_nbd_uri *u)
{
    if (u->is_unix) {
        if (!u->socket) {
            return prl_error(EINVAL,
                             "nbd URI '%s': a Unix socket URI needs the "
                             "query parameter 'socket=PATH'",
                             uri);
        }
        if (u->socket_len == 0) {
            return prl_error(EINVAL, "nbd URI '%s': socket '' is empty", uri);
        }
        if (u->host || u->port) {
            return prl_error(EINVAL,
                             "nbd URI '%s': host '%s' given for a Unix "
                             "socket; write nbd+unix:///EXPORT?socket=PATH",
                             uri, u->host ? u->host : "");
        }
    } else {
        if (u->socket) {
            return prl_error(EINVAL,
                             "nbd URI '%s': query parameter 'socket' is for "
                             "nbd+unix:// URIs, not TCP",
                             uri);
        }
        if (!u->host && !(u->host = strdup("localhost"))) {
            return prl_error(ENOMEM, "out of memory");
        }
        if (!u->port && !(u->port = strdup(PRL_NBD_DEFAULT_PORT))) {
            return prl_error(ENOMEM, "out of memory");
        }
    }
    if (!u->tls) {
        const char *p = u->tls_certificates       ? "tls-certificates"
                        : u->tls_psk_file         ? "tls-psk-file"
                        : u->tls_hostname         ? "tls-hostname"
                        : u->tls_verify_peer >= 0 ? "tls-verify-peer"
                        : u->tls_type != PRL_NBD_URI_TLS_DEFAULT ? "tls-type"
                                                                 : NULL;
        if (p) {
            return prl_error(EINVAL,
                             "nbd URI '%s': query parameter '%s' needs TLS: "
                             "use an nbds:// or nbds+unix:// URI",
                             uri, p);
        }
    }
    if (u->tls_certificates && u->tls_psk_file) {
        return prl_error(EINVAL,
                         "nbd URI '%s': tls-certificates and tls-psk-file "
                         "exclude each other",
                         uri);
    }
    if (u->tls_type == PRL_NBD_URI_TLS_PSK && !u->tls_psk_file) {
        return prl_error(
            EINVAL, "nbd URI '%s': tls-type 'psk' needs tls-psk-file", uri);
    }
    if (u->tls_type == PRL_NBD_URI_TLS_X509 && u->tls_psk_file) {
        return prl_error(EINVAL,
                         "nbd URI '%s': tls-type 'x509' does not take "
                         "tls-psk-file",
                         uri);
    }
    if (u->tls_psk_file) {
        u->tls_type = PRL_NBD_URI_TLS_PSK;
    }
    return 0;
}

/* Split |s| (RFC 3986: scheme, authority, path, query; no fragment)
 * into *u, each part decoded; then the checks of the whole. */
static int parse(const char *s, struct prl_nbd_uri *u)
{
    const struct scheme *sc;
    size_t slen, n = strnlen(s, URI_MAX + 1);
    const char *p, *auth, *path, *query, *end;
    int r;

    if (n > URI_MAX) {
        return prl_error(EINVAL, "nbd URI '%.64s...' is longer than %d bytes",
                         s, URI_MAX);
    }
    sc = find_scheme(s, &slen);
    if (!sc) {
        const char *sep = strstr(s, "://");
        return prl_error(EINVAL,
                         "nbd URI '%s': scheme '%.*s' is not an NBD scheme "
                         "(nbd, nbds, nbd+unix, nbds+unix)",
                         s, sep ? (int)(sep - s) : (int)n, s);
    }
    if (sc->refused) {
        return prl_error(EINVAL,
                         "nbd URI '%s': scheme '%.*s' (AF_VSOCK) is not "
                         "supported",
                         s, (int)(slen - 3), s);
    }
    u->is_unix = sc->is_unix;
    u->tls = sc->tls;
    u->tls_verify_peer = -1;
    end = s + n;
    if (memchr(s, '#', n)) {
        const char *h = memchr(s, '#', n);
        return prl_error(EINVAL,
                         "nbd URI '%s': fragment '%s' has no meaning in an "
                         "NBD URI",
                         s, h);
    }
    auth = s + slen;
    path = auth + strcspn(auth, "/?");
    query = path + strcspn(path, "?");

    /* Authority: [userinfo@]host[:port]. */
    p = memchr(auth, '@', (size_t)(path - auth));
    if (p) {
        r = decode_str(s, "userinfo", auth, (size_t)(p - auth), &u->user);
        if (r < 0) {
            return r;
        }
        auth = p + 1;
    }
    r = parse_hostport(s, u, auth, (size_t)(path - auth));
    if (r < 0) {
        return r;
    }

    /* Path: the export name after the first '/'. */
    if (query > path) {
        r = decode_str(s, "export name", path + 1, (size_t)(query - path - 1),
                       &u->export_name);
    } else {
        u->export_name = strdup("");
        r = u->export_name ? 0 : prl_error(ENOMEM, "out of memory");
    }
    if (r < 0) {
        return r;
    }
    if (strlen(u->export_name) > 4096) {
        return prl_error(EINVAL,
                         "nbd URI '%s': export name is longer than 4096 "
                         "bytes",
                         s);
    }

    /* Query: key=value pairs split at '&'. */
    if (*query == '?') {
        p = query + 1;
        while (p <= end && r == 0) {
            const char *amp = p + strcspn(p, "&");
            r = parse_param(s, u, p, (size_t)(amp - p));
            p = amp + 1;
        }
        if (r < 0) {
            return r;
        }
    }
    return check_uri(s, u);
}

int prl_nbd_uri_parse(const char *s, struct prl_nbd_uri *u)
{
    int r;

    memset(u, 0, sizeof(*u));
    r = parse(s, u);
    if (r < 0) {
        prl_nbd_uri_free(u);
    }
    return r;
}

void prl_nbd_uri_free(struct prl_nbd_uri *u)
{
    free(u->host);
    free(u->port);
    free(u->socket);
    free(u->export_name);
    free(u->user);
    free(u->tls_certificates);
    free(u->tls_psk_file);
    free(u->tls_hostname);
    memset(u, 0, sizeof(*u));
}
