/* SPDX-License-Identifier: MIT */
/* Logging: the library never prints; it hands warnings and notes to a
 * callback that the tool installs. */
#ifndef PRL_LOG_H
#define PRL_LOG_H

enum prl_log_level {
    PRL_LOG_ERROR = 0,
    PRL_LOG_WARNING = 1,
    PRL_LOG_INFO = 2,
    PRL_LOG_DEBUG = 3,
};

typedef void (*prl_log_fn)(enum prl_log_level level, const char *msg,
                           void *opaque);

/* Install the process-wide log callback (NULL drops messages) and the
 * highest level passed to it. Not thread-safe against concurrent logging;
 * call it at start-up. */
void prl_log_set_handler(prl_log_fn fn, void *opaque,
                         enum prl_log_level max_level);

/* Send one message to the handler, if its level is enabled. */
void prl_log(enum prl_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define prl_warn(...) prl_log(PRL_LOG_WARNING, __VA_ARGS__)
#define prl_info(...) prl_log(PRL_LOG_INFO, __VA_ARGS__)
#define prl_debug(...) prl_log(PRL_LOG_DEBUG, __VA_ARGS__)

#endif
