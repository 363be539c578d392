/* SPDX-License-Identifier: MIT */
/* Allocation wrappers and the zero test. */
#include "common/util.h"
#include "prl/error.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

bool prl_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t head = len < 16 ? len : 16;

    /* Check a short head byte by byte, then compare the buffer against
     * itself shifted by 16 bytes: memcmp is vectorized and stops at the
     * first difference, so random data returns almost at once. */
    for (size_t i = 0; i < head; i++) {
        if (p[i]) {
            return false;
        }
    }
    if (len <= 16) {
        return true;
    }
    return memcmp(p, p + 16, len - 16) == 0;
}

void *prl_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p) {
        prl_error(ENOMEM, "out of memory allocating %zu bytes", size);
    }
    return p;
}

void *prl_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        prl_error(ENOMEM, "out of memory allocating %zu x %zu bytes", n, size);
    }
    return p;
}

void *prl_alloc_aligned(size_t size)
{
    void *p = NULL;
    long page = sysconf(_SC_PAGESIZE);

    if (posix_memalign(&p, page > 0 ? (size_t)page : 4096, size ? size : 1) !=
        0) {
        prl_error(ENOMEM, "out of memory allocating %zu bytes", size);
        return NULL;
    }
    return p;
}
