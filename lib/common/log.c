/* SPDX-License-Identifier: MIT */
/* The log callback (see prl/log.h). */
#include "prl/log.h"

#include <stdarg.h>
#include <stdio.h>

static prl_log_fn log_fn;
static void *log_opaque;
static enum prl_log_level log_max = PRL_LOG_WARNING;

void prl_log_set_handler(prl_log_fn fn, void *opaque,
                         enum prl_log_level max_level)
{
    log_fn = fn;
    log_opaque = opaque;
    log_max = max_level;
}

void prl_log(enum prl_log_level level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (!log_fn || level > log_max) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_fn(level, msg, log_opaque);
}
