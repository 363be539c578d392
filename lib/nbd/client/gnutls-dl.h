/* SPDX-License-Identifier: MIT */
/* GnuTLS for the NBD client, loaded when the first nbds:// URI is opened.
 * The client sits in libprl with the block layer, so every prl-img run
 * would otherwise load GnuTLS and pay its start-up (about 1 ms, which is
 * a quarter of a `prl-img check`) for nothing.  Include this after
 * <gnutls/gnutls.h> in the client's TLS code: the GnuTLS names it uses
 * then go through pointers filled by prl_gnutls_load(). */
#ifndef PRL_NBD_CLIENT_GNUTLS_DL_H
#define PRL_NBD_CLIENT_GNUTLS_DL_H

#include <gnutls/gnutls.h>

/* The functions the client calls, by their name without "gnutls_". */
#define PRL_GNUTLS_FUNCS(X)                                                    \
    X(alert_get)                                                               \
    X(alert_get_name)                                                          \
    X(bye)                                                                     \
    X(certificate_allocate_credentials)                                        \
    X(certificate_free_credentials)                                            \
    X(certificate_set_x509_crl_file)                                           \
    X(certificate_set_x509_key_file)                                           \
    X(certificate_set_x509_system_trust)                                       \
    X(certificate_set_x509_trust_file)                                         \
    X(certificate_verification_status_print)                                   \
    X(credentials_set)                                                         \
    X(deinit)                                                                  \
    X(error_is_fatal)                                                          \
    X(handshake)                                                               \
    X(init)                                                                    \
    X(load_file)                                                               \
    X(memset)                                                                  \
    X(priority_set_direct)                                                     \
    X(psk_allocate_client_credentials)                                         \
    X(psk_free_client_credentials)                                             \
    X(psk_set_client_credentials)                                              \
    X(record_recv)                                                             \
    X(record_send)                                                             \
    X(server_name_set)                                                         \
    X(session_get_verify_cert_status)                                          \
    X(session_set_verify_cert)                                                 \
    X(strerror)                                                                \
    X(transport_set_ptr)                                                       \
    X(transport_set_pull_function)                                             \
    X(transport_set_push_function)

struct prl_gnutls {
#define PRL_GNUTLS_MEMBER(name) __typeof__(gnutls_##name) *name;
    PRL_GNUTLS_FUNCS(PRL_GNUTLS_MEMBER)
#undef PRL_GNUTLS_MEMBER
    gnutls_alloc_function *malloc_fn; /* GnuTLS's allocator variables */
    gnutls_free_function *free_fn;
};

extern struct prl_gnutls prl_gnutls;

/* Load GnuTLS once (thread-safe).  Returns 0, or -ENOTSUP with a message
 * naming the library and why it did not load. */
int prl_gnutls_load(void);

#ifndef PRL_GNUTLS_DL_IMPL
#define gnutls_alert_get (prl_gnutls.alert_get)
#define gnutls_alert_get_name (prl_gnutls.alert_get_name)
#define gnutls_bye (prl_gnutls.bye)
#define gnutls_certificate_allocate_credentials                                \
    (prl_gnutls.certificate_allocate_credentials)
#define gnutls_certificate_free_credentials                                    \
    (prl_gnutls.certificate_free_credentials)
#define gnutls_certificate_set_x509_crl_file                                   \
    (prl_gnutls.certificate_set_x509_crl_file)
#define gnutls_certificate_set_x509_key_file                                   \
    (prl_gnutls.certificate_set_x509_key_file)
#define gnutls_certificate_set_x509_system_trust                               \
    (prl_gnutls.certificate_set_x509_system_trust)
#define gnutls_certificate_set_x509_trust_file                                 \
    (prl_gnutls.certificate_set_x509_trust_file)
#define gnutls_certificate_verification_status_print                           \
    (prl_gnutls.certificate_verification_status_print)
#define gnutls_credentials_set (prl_gnutls.credentials_set)
#define gnutls_deinit (prl_gnutls.deinit)
#define gnutls_error_is_fatal (prl_gnutls.error_is_fatal)
#define gnutls_handshake (prl_gnutls.handshake)
#define gnutls_init (prl_gnutls.init)
#define gnutls_load_file (prl_gnutls.load_file)
#define gnutls_memset (prl_gnutls.memset)
#define gnutls_priority_set_direct (prl_gnutls.priority_set_direct)
#define gnutls_psk_allocate_client_credentials                                 \
    (prl_gnutls.psk_allocate_client_credentials)
#define gnutls_psk_free_client_credentials                                     \
    (prl_gnutls.psk_free_client_credentials)
#define gnutls_psk_set_client_credentials                                      \
    (prl_gnutls.psk_set_client_credentials)
#define gnutls_record_recv (prl_gnutls.record_recv)
#define gnutls_record_send (prl_gnutls.record_send)
#define gnutls_server_name_set (prl_gnutls.server_name_set)
#define gnutls_session_get_verify_cert_status                                  \
    (prl_gnutls.session_get_verify_cert_status)
#define gnutls_session_set_verify_cert (prl_gnutls.session_set_verify_cert)
#define gnutls_strerror (prl_gnutls.strerror)
#define gnutls_transport_set_ptr (prl_gnutls.transport_set_ptr)
#define gnutls_transport_set_pull_function                                     \
    (prl_gnutls.transport_set_pull_function)
#define gnutls_transport_set_push_function                                     \
    (prl_gnutls.transport_set_push_function)
#undef gnutls_free
#define gnutls_free(a) ((*prl_gnutls.free_fn)((void *)(a)), (a) = NULL)
#define gnutls_malloc (*prl_gnutls.malloc_fn)
#endif

#endif
