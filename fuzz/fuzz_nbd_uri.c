/* SPDX-License-Identifier: MIT */
/* Fuzz target for the NBD URI parser (nbd/uri.h): the input is one
 * string.  A URI that parses has what its scheme needs (a socket, or a
 * host and a port of 1..65535), and printing its parts again, every byte
 * percent-encoded where it may need to be, parses to the same parts. */
#include "nbd/uri.h"
#include "prl/error.h"

#include "fuzz-util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Longest input used, bytes; longer inputs are cut. */
#define MAX_LEN 4096

/* Append |len| bytes of |s| to |out| at *pos, encoding all but
 * unreserved characters. */
static void put_enc(char *out, size_t *pos, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~') {
            out[(*pos)++] = (char)c;
        } else {
            out[(*pos)++] = '%';
            out[(*pos)++] = hex[c >> 4];
            out[(*pos)++] = hex[c & 15];
        }
    }
}

static void put_raw(char *out, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    memcpy(out + *pos, s, n);
    *pos += n;
}

static void put_param(char *out, size_t *pos, bool *first, const char *key,
                      const char *val, size_t len)
{
    put_raw(out, pos, *first ? "?" : "&");
    *first = false;
    put_raw(out, pos, key);
    put_raw(out, pos, "=");
    put_enc(out, pos, val, len);
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Print |u| as a URI again (the caller frees it). */
static char *print(const struct prl_nbd_uri *u)
{
    size_t cap = 16 * MAX_LEN + 256, pos = 0;
    char *out = malloc(cap);
    bool first = true;

    CHECK(out != NULL);
    put_raw(out, &pos,
            u->is_unix ? (u->tls ? "nbds+unix://" : "nbd+unix://")
                       : (u->tls ? "nbds://" : "nbd://"));
    if (!u->is_unix) {
        if (strchr(u->host, ':')) {
            /* An IPv6 address, maybe with a zone after '%'. */
            const char *z = strchr(u->host, '%');
            size_t al = z ? (size_t)(z - u->host) : strlen(u->host);
            put_raw(out, &pos, "[");
            memcpy(out + pos, u->host, al);
            pos += al;
            if (z) {
                put_raw(out, &pos, "%25");
                put_enc(out, &pos, z + 1, strlen(z + 1));
            }
            put_raw(out, &pos, "]");
        } else {
            put_enc(out, &pos, u->host, strlen(u->host));
        }
        put_raw(out, &pos, ":");
        put_raw(out, &pos, u->port);
    }
    put_raw(out, &pos, "/");
    put_enc(out, &pos, u->export_name, strlen(u->export_name));
    if (u->socket) {
        put_param(out, &pos, &first, "socket", u->socket, u->socket_len);
    }
    if (u->user) {
        put_param(out, &pos, &first, "tls-username", u->user, strlen(u->user));
    }
    if (u->tls_certificates) {
        put_param(out, &pos, &first, "tls-certificates", u->tls_certificates,
                  strlen(u->tls_certificates));
    }
    if (u->tls_psk_file) {
        put_param(out, &pos, &first, "tls-psk-file", u->tls_psk_file,
                  strlen(u->tls_psk_file));
    }
    if (u->tls_hostname) {
        put_param(out, &pos, &first, "tls-hostname", u->tls_hostname,
                  strlen(u->tls_hostname));
    }
    if (u->tls_verify_peer >= 0) {
        put_param(out, &pos, &first, "tls-verify-peer",
                  u->tls_verify_peer ? "1" : "0", 1);
    }
    if (u->tls_type != PRL_NBD_URI_TLS_DEFAULT) {
        const char *t = u->tls_type == PRL_NBD_URI_TLS_PSK ? "psk" : "x509";
        put_param(out, &pos, &first, "tls-type", t, strlen(t));
    }
    CHECK(pos < cap);
    out[pos] = '\0';
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len = size < MAX_LEN ? size : MAX_LEN;
    struct prl_nbd_uri u, v;
    char *s = malloc(len + 1), *again;
    int r;

    CHECK(s != NULL);
    memcpy(s, data, len);
    s[len] = '\0';
    r = prl_nbd_uri_parse(s, &u);
    if (r < 0) {
        CHECK(r == -EINVAL || r == -ENOMEM);
        CHECK(prl_error_message() != NULL);
        CHECK(u.host == NULL && u.export_name == NULL && u.socket == NULL);
        free(s);
        prl_error_clear();
        return 0;
    }
    CHECK(prl_nbd_uri_is_nbd(s));
    CHECK(u.export_name != NULL);
    if (u.is_unix) {
        CHECK(u.socket && u.socket_len > 0 && !u.host && !u.port);
    } else {
        CHECK(u.host && u.port && !u.socket);
        long port = strtol(u.port, NULL, 10);
        CHECK(port >= 1 && port <= 65535);
    }
    CHECK(u.tls || (!u.tls_certificates && !u.tls_psk_file));

    again = print(&u);
    r = prl_nbd_uri_parse(again, &v);
    if (r < 0) {
        fprintf(stderr, "'%s' printed as '%s' fails: %s\n", s, again,
                prl_error_message());
    }
    CHECK(r == 0);
    CHECK(v.is_unix == u.is_unix && v.tls == u.tls);
    CHECK(same(v.host, u.host) && same(v.port, u.port));
    CHECK(same(v.export_name, u.export_name) && same(v.user, u.user));
    CHECK(v.socket_len == u.socket_len &&
          (!u.socket || memcmp(v.socket, u.socket, u.socket_len) == 0));
    CHECK(same(v.tls_certificates, u.tls_certificates));
    CHECK(same(v.tls_psk_file, u.tls_psk_file));
    CHECK(same(v.tls_hostname, u.tls_hostname));
    CHECK(v.tls_verify_peer == u.tls_verify_peer);
    CHECK(v.tls_type == u.tls_type);
    prl_nbd_uri_free(&v);
    prl_nbd_uri_free(&u);
    free(again);
    free(s);
    prl_error_clear();
    return 0;
}
