/* SPDX-License-Identifier: MIT */
/* Small helpers every layer uses: checked arithmetic, rounding, cleanup. */
#ifndef PRL_COMMON_UTIL_H
#define PRL_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define PRL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PRL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PRL_MAX(a, b) ((a) > (b) ? (a) : (b))

/* CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t prl_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CLOCK_MONOTONIC in milliseconds. */
static inline int64_t prl_mono_ms(void)
{
    return prl_mono_ns() / 1000000;
}

/* Checked arithmetic: true when the result overflowed (then *r is
 * unspecified). */
#define prl_add_overflow(a, b, r) __builtin_add_overflow((a), (b), (r))
#define prl_mul_overflow(a, b, r) __builtin_mul_overflow((a), (b), (r))
#define prl_sub_overflow(a, b, r) __builtin_sub_overflow((a), (b), (r))

/* x rounded down/up to a multiple of m (m > 0, need not be a power of
 * two).  round_up may overflow; use prl_round_up_checked on untrusted
 * values. */
static inline uint64_t prl_round_down(uint64_t x, uint64_t m)
{
    return x - x % m;
}

static inline uint64_t prl_round_up(uint64_t x, uint64_t m)
{
    return prl_round_down(x + m - 1, m);
}

/* Returns false on overflow. */
static inline bool prl_round_up_checked(uint64_t x, uint64_t m, uint64_t *r)
{
    uint64_t t;
    if (prl_add_overflow(x, m - 1, &t)) {
        return false;
    }
    *r = prl_round_down(t, m);
    return true;
}

static inline uint64_t prl_div_round_up(uint64_t x, uint64_t m)
{
    return x / m + (x % m != 0);
}

static inline bool prl_is_power_of_2(uint64_t x)
{
    return x != 0 && (x & (x - 1)) == 0;
}

/* True when all |len| bytes of |buf| are zero; fast on non-zero data
 * (returns at the first non-zero word). */
bool prl_is_zero(const void *buf, size_t len);

/* Scope-bound free: `__attribute__((cleanup(prl_freep))) char *s = ...`. */
static inline void prl_freep(void *p)
{
    free(*(void **)p);
}
#define PRL_AUTOFREE __attribute__((cleanup(prl_freep)))

/* malloc/calloc that record a prl_error on failure. */
void *prl_malloc(size_t size);
void *prl_calloc(size_t n, size_t size);
/* Page-aligned buffer for I/O, freed with free(). */
void *prl_alloc_aligned(size_t size);

#endif
