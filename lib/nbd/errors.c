/* SPDX-License-Identifier: MIT */
/* Command names and the errno <-> NBD error mapping (see errors.h). */
#include "nbd/errors.h"
#include "common/util.h"
#include "nbd/wire.h"

#include <errno.h>

const char *prl_nbd_cmd_name(uint16_t type)
{
    static const char *const names[] = {
        "read", "write", "disconnect",   "flush",
        "trim", "cache", "write zeroes", "block status",
    };
    return type < PRL_ARRAY_SIZE(names) ? names[type] : "unknown command";
}

/* errno -> NBD error, the one table.  Anything not listed is EIO. */
static const struct {
    int err;
    uint32_t wire;
} errno_table[] = {
    {EPERM, PRL_NBD_EPERM},         {EROFS, PRL_NBD_EPERM},
    {EACCES, PRL_NBD_EPERM},        {EIO, PRL_NBD_EIO},
    {ENOMEM, PRL_NBD_ENOMEM},       {EINVAL, PRL_NBD_EINVAL},
    {ERANGE, PRL_NBD_EINVAL},       {ENOSPC, PRL_NBD_ENOSPC},
    {EDQUOT, PRL_NBD_ENOSPC},       {EFBIG, PRL_NBD_ENOSPC},
    {EOVERFLOW, PRL_NBD_EOVERFLOW}, {ENOTSUP, PRL_NBD_ENOTSUP},
    {ESHUTDOWN, PRL_NBD_ESHUTDOWN},
};

uint32_t prl_nbd_errno_to_wire(int err, uint16_t type)
{
    uint32_t wire = PRL_NBD_EIO;

    if (err < 0) {
        err = -err;
    }
    for (size_t i = 0; i < PRL_ARRAY_SIZE(errno_table); i++) {
        if (errno_table[i].err == err) {
            wire = errno_table[i].wire;
            break;
        }
    }
    /* The spec reserves ENOTSUP for a refused fast zero. */
    if (wire == PRL_NBD_ENOTSUP && type != PRL_NBD_CMD_WRITE_ZEROES) {
        wire = PRL_NBD_EINVAL;
    }
    return wire;
}

int prl_nbd_wire_to_errno(uint32_t wire)
{
    /* The first errno the table gives each NBD error is its own. */
    for (size_t i = 0; i < PRL_ARRAY_SIZE(errno_table); i++) {
        if (errno_table[i].wire == wire) {
            return errno_table[i].err;
        }
    }
    return EIO;
}
