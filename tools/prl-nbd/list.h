/* SPDX-License-Identifier: MIT */
/* prl-nbd --list (list.c). */
#ifndef PRL_NBD_TOOL_LIST_H
#define PRL_NBD_TOOL_LIST_H

#include "nbd/uri.h"

/* Print the exports of the server |uri| names; the exit status. */
int prl_nbd_list_exports(const struct prl_nbd_uri *uri);

#endif
