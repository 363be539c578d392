/* SPDX-License-Identifier: MIT */
/* Check and repair of Parallels images (see prl/check.h). */
#ifndef PRL_BLOCK_PARALLELS_CHECK_H
#define PRL_BLOCK_PARALLELS_CHECK_H

#include "prl/check.h"

/* Check |path| and repair what |fix| (PRL_CHECK_FIX_*) asks, working on
 * the file directly so that images the driver refuses can be checked.
 * Fills *res; returns 0 when the check ran to the end. */
int parallels_check(const char *path, unsigned fix,
                    struct prl_check_result *res);

#endif
