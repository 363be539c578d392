/* SPDX-License-Identifier: MIT */
/* Unit tests of lib/nbd/uri.c: the examples of nbd-uri.md, every
 * component parsed into its field, and rejections naming the part. */
#include "testutil.h"

#include "nbd/uri.h"
#include "prl/error.h"

#include <errno.h>
#include <string.h>

static void parse_ok(const char *s, struct prl_nbd_uri *u)
{
    int r = prl_nbd_uri_parse(s, u);

    if (r != 0) {
        fail_msg("prl_nbd_uri_parse(\"%s\") = %d: %s", s, r,
                 prl_error_message());
    }
}

/* The export name table of nbd-uri.md. */
static void test_spec_export_names(void **state)
{
    static const struct {
        const char *uri, *name;
    } cases[] = {
        {"nbd://example.com/disk", "disk"},
        {"nbd+unix:///disk?socket=sock", "disk"},
        {"nbd://example.com/", ""},
        {"nbd://example.com", ""},
        {"nbd://example.com//disk", "/disk"},
        {"nbd://example.com/hello%20world", "hello world"},
    };
    (void)state;

    for (size_t i = 0; i < TU_COUNT(cases); i++) {
        struct prl_nbd_uri u;
        parse_ok(cases[i].uri, &u);
        assert_string_equal(u.export_name, cases[i].name);
        prl_nbd_uri_free(&u);
    }
}

static void test_tcp(void **state)
{
    struct prl_nbd_uri u;
    (void)state;

    parse_ok("nbd://example.com/x", &u);
    assert_false(u.is_unix);
    assert_false(u.tls);
    assert_string_equal(u.host, "example.com");
    assert_string_equal(u.port, "10809");
    assert_null(u.socket);
    prl_nbd_uri_free(&u);

    parse_ok("NBDS://[fe80::1%25eth0]:10810/x?tls-verify-peer=0", &u);
    assert_true(u.tls);
    assert_string_equal(u.host, "fe80::1%eth0"); /* the zone decoded */
    assert_string_equal(u.port, "10810");
    assert_int_equal(u.tls_verify_peer, 0);
    prl_nbd_uri_free(&u);

    parse_ok("nbd://[::1]/", &u);
    assert_string_equal(u.host, "::1");
    prl_nbd_uri_free(&u);

    /* No host: localhost, as other clients do. */
    parse_ok("nbd:///x", &u);
    assert_string_equal(u.host, "localhost");
    prl_nbd_uri_free(&u);
}

static void test_unix(void **state)
{
    struct prl_nbd_uri u;
    (void)state;

    parse_ok("nbd+unix:///e%2Fx?socket=/run/nbd%20s.sock", &u);
    assert_true(u.is_unix);
    assert_string_equal(u.export_name, "e/x");
    assert_string_equal(u.socket, "/run/nbd s.sock");
    assert_int_equal(u.socket_len, strlen("/run/nbd s.sock"));
    assert_null(u.host);
    prl_nbd_uri_free(&u);

    /* The abstract namespace: a leading NUL, kept with its length. */
    parse_ok("nbd+unix:///?socket=%00/abstract", &u);
    assert_int_equal(u.socket_len, 10);
    assert_memory_equal(u.socket, "\0/abstract", 10);
    prl_nbd_uri_free(&u);
}

static void test_tls_params(void **state)
{
    struct prl_nbd_uri u;
    (void)state;

    parse_ok("nbds+unix://alice@/?socket=s&tls-psk-file=/k.psk", &u);
    assert_true(u.tls);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.tls_psk_file, "/k.psk");
    assert_int_equal(u.tls_type, PRL_NBD_URI_TLS_PSK);
    prl_nbd_uri_free(&u);

    parse_ok("nbds://h/?tls-certificates=/d&tls-hostname=n&tls-type=x509", &u);
    assert_string_equal(u.tls_certificates, "/d");
    assert_string_equal(u.tls_hostname, "n");
    assert_int_equal(u.tls_type, PRL_NBD_URI_TLS_X509);
    assert_int_equal(u.tls_verify_peer, -1);
    prl_nbd_uri_free(&u);
}

/* Each rejection: -EINVAL, a zeroed struct, the text in the message. */
static void expect_bad(const char *s, const char *text)
{
    struct prl_nbd_uri u;
    int r = prl_nbd_uri_parse(s, &u);

    if (r != -EINVAL) {
        fail_msg("prl_nbd_uri_parse(\"%s\") = %d, want -EINVAL", s, r);
    }
    assert_null(u.host);
    assert_null(u.export_name);
    if (!strstr(prl_error_message(), text)) {
        fail_msg("message for \"%s\" is \"%s\", lacks \"%s\"", s,
                 prl_error_message(), text);
    }
    assert_non_null(strstr(prl_error_message(), s));
}

static void test_rejections(void **state)
{
    (void)state;
    expect_bad("nbd://h:99999/x", "port '99999' is out of range");
    expect_bad("nbd://h:/x?socket=s", "'socket' is for nbd+unix://");
    expect_bad("http://h/x", "scheme 'http' is not an NBD scheme");
    expect_bad("nbd+vsock://1/x", "scheme 'nbd+vsock' (AF_VSOCK)");
    expect_bad("nbd+unix:///x", "needs the query parameter 'socket=PATH'");
    expect_bad("nbd://h/x?socket", "'socket' has no '=value'");
    expect_bad("nbd+unix:///?socket=a&socket=b", "'socket' is given twice");
    expect_bad("nbd://h/%4", "bad percent-escape");
    expect_bad("nbd://h/x?tls-psk-file=k", "'tls-psk-file' needs TLS");
    expect_bad("nbds://h/x?tls-type=anon", "tls-type 'anon' is not");
    expect_bad("nbds://h/x?tls-type=psk", "tls-type 'psk' needs");
    expect_bad("nbd://a%3Ab/x", "host 'a%3Ab' holds a ':'");
    expect_bad("nbd://[fe80::1%25]/x", "is not an IPv6 address");
    expect_bad("nbd://[]/x", "host '[]' is empty");
}

static void test_is_nbd(void **state)
{
    (void)state;
    assert_true(prl_nbd_uri_is_nbd("nbd://h"));
    assert_true(prl_nbd_uri_is_nbd("NBDS+UNIX:///?socket=s"));
    assert_true(prl_nbd_uri_is_nbd("nbd+vsock://1"));
    assert_false(prl_nbd_uri_is_nbd("disk.hdd"));
    assert_false(prl_nbd_uri_is_nbd("nbd:/x"));
    assert_false(prl_nbd_uri_is_nbd("dir/nbd://x"));
    assert_false(prl_nbd_uri_is_nbd(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_export_names),
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_unix),
        cmocka_unit_test(test_tls_params),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_is_nbd),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
