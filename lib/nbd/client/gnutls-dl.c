/* SPDX-License-Identifier: MIT */
/* Loading GnuTLS for the NBD client on first use (see gnutls-dl.h). */
#define PRL_GNUTLS_DL_IMPL
#include "nbd/client/gnutls-dl.h"
#include "prl/error.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

/* The soname of the GnuTLS the build was compiled against (3.x). */
#define GNUTLS_SONAME "libgnutls.so.30"

struct prl_gnutls prl_gnutls;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[256]; /* empty once loaded */

static void *sym(void *h, const char *name)
{
    void *p = dlsym(h, name);

    if (!p && !load_error[0]) {
        snprintf(load_error, sizeof(load_error), "%s has no symbol %s",
                 GNUTLS_SONAME, name);
    }
    return p;
}

static void load(void)
{
    /* Already in the process (prl-nbd links it) or loaded now; never
     * unloaded. */
    void *h = dlopen(GNUTLS_SONAME, RTLD_NOW | RTLD_LOCAL);

    if (!h) {
        const char *e = dlerror();
        snprintf(load_error, sizeof(load_error), "%s", e ? e : GNUTLS_SONAME);
        return;
    }
    /* dlsym returns void *; a function pointer may hold it on POSIX. */
#define PRL_GNUTLS_LOAD(name)                                                  \
    *(void **)&prl_gnutls.name = sym(h, "gnutls_" #name);
    PRL_GNUTLS_FUNCS(PRL_GNUTLS_LOAD)
#undef PRL_GNUTLS_LOAD
    prl_gnutls.malloc_fn = sym(h, "gnutls_malloc");
    prl_gnutls.free_fn = sym(h, "gnutls_free");
}

int prl_gnutls_load(void)
{
    pthread_once(&load_once, load);
    if (load_error[0]) {
        return prl_error(ENOTSUP, "TLS needs GnuTLS, which did not load: %s",
                         load_error);
    }
    return 0;
}
