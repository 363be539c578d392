/* SPDX-License-Identifier: MIT */
/* Error reporting: one thread-local message per failure, set where it is
 * detected, read by the tool that prints it. */
#ifndef PRL_ERROR_H
#define PRL_ERROR_H

#include <stdarg.h>

/* Record a message for the failure |errnum| (a positive errno value) and
 * return -errnum, so detecting code can write
 *     return prl_error(EINVAL, "%s: bad magic", path);
 * The message replaces any earlier one of this thread. */
int prl_error(int errnum, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Like prl_error, with the text of errnum appended (": No such file"). */
int prl_error_errno(int errnum, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepend context to the current message ("open foo.hdd: " + old) and
 * return ret unchanged, for callers that only propagate. */
int prl_error_context(int ret, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The last message of this thread, or strerror(-ret) style text when no
 * message was recorded.  Valid until the next prl_error* call of this
 * thread. */
const char *prl_error_message(void);

/* Forget the current message of this thread. */
void prl_error_clear(void);

#endif
