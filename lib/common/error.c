/* SPDX-License-Identifier: MIT */
/* Thread-local error messages (see prl/error.h). */
#include "prl/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define PRL_ERROR_MAX 1024

static _Thread_local char error_msg[PRL_ERROR_MAX];
static _Thread_local int error_set;

static void error_vset(const char *fmt, va_list ap)
    __attribute__((format(printf, 1, 0)));

static void error_vset(const char *fmt, va_list ap)
{
    vsnprintf(error_msg, sizeof(error_msg), fmt, ap);
    error_set = 1;
}

int prl_error(int errnum, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    error_vset(fmt, ap);
    va_end(ap);
    return -errnum;
}

int prl_error_errno(int errnum, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    error_vset(fmt, ap);
    va_end(ap);
    n = strlen(error_msg);
    snprintf(error_msg + n, sizeof(error_msg) - n, ": %s", strerror(errnum));
    return -errnum;
}

int prl_error_context(int ret, const char *fmt, ...)
{
    char old[PRL_ERROR_MAX];
    va_list ap;
    size_t n;

    if (error_set) {
        memcpy(old, error_msg, sizeof(old));
    } else {
        snprintf(old, sizeof(old), "%s", strerror(ret < 0 ? -ret : ret));
    }
    va_start(ap, fmt);
    vsnprintf(error_msg, sizeof(error_msg), fmt, ap);
    va_end(ap);
    n = strlen(error_msg);
    snprintf(error_msg + n, sizeof(error_msg) - n, ": %s", old);
    error_set = 1;
    return ret;
}

const char *prl_error_message(void)
{
    if (!error_set) {
        return "unknown error";
    }
    return error_msg;
}

void prl_error_clear(void)
{
    error_set = 0;
    error_msg[0] = '\0';
}
