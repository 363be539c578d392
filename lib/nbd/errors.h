/* SPDX-License-Identifier: MIT */
/* What the server and the client of NBD share beyond the wire layout:
 * command names for messages, and errno <-> NBD error values. */
#ifndef PRL_NBD_ERRORS_H
#define PRL_NBD_ERRORS_H

#include <stdint.h>

/* "read", "write zeroes"...: |type| in words, for messages. */
const char *prl_nbd_cmd_name(uint16_t type);

/* The NBD error for a (negative or positive) errno from the block layer,
 * answering a command of |type|: one table, EIO for anything it lacks;
 * ENOTSUP only for WRITE_ZEROES (the spec keeps it for a refused fast
 * zero), EINVAL elsewhere. */
uint32_t prl_nbd_errno_to_wire(int err, uint16_t type);

/* The (positive) errno for an NBD error a server sent: EIO for values
 * the spec does not define. */
int prl_nbd_wire_to_errno(uint32_t wire);

#endif
