/* SPDX-License-Identifier: MIT */
/* Parallels disks (DiskDescriptor.xml bundles, prl-xml.rst): listing,
 * creating, deleting and committing snapshots.  Every change writes the
 * images first and the descriptor last, atomically, so a crash leaves the
 * guest contents of before or after the operation. */
#ifndef PRL_BUNDLE_H
#define PRL_BUNDLE_H

#include "prl/block.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* PRL_OPEN_BUNDLE_EXTERNAL (prl/block.h), with prl_block_open and the
 * functions below: accept image files that are absolute or lie outside
 * the bundle directory.  Without it such a descriptor is refused, so that
 * a served bundle can never make prl read an arbitrary host file. */

/* One image of the bundle, as prl_bundle_list reports it. */
struct prl_snapshot {
    char guid[39];      /* "{...}", lower case */
    char parent[39];    /* parent GUID, all zeroes for the root */
    char *file;         /* File as written in the descriptor */
    char *path;         /* resolved path (NULL when it could not be) */
    bool plain;         /* Type Plain (raw), else Compressed */
    bool top;           /* the active image the guest writes to */
    unsigned depth;     /* 1 = top, 2 = its parent, ...; 0 = off the
                         * active chain (another branch) */
    uint64_t allocated; /* bytes the file occupies on the host */
};

struct prl_snapshot_list {
    struct prl_snapshot *v; /* in descriptor order */
    size_t n;
    uint64_t disk_size;    /* guest bytes */
    uint64_t cluster_size; /* bytes (Blocksize) */
};

/* List the images of the bundle at |path| (its directory or its
 * DiskDescriptor.xml).  |flags|: PRL_OPEN_BUNDLE_EXTERNAL.  Release with
 * prl_snapshot_list_free. */
int prl_bundle_list(const char *path, unsigned flags,
                    struct prl_snapshot_list *out);
void prl_snapshot_list_free(struct prl_snapshot_list *list);

/* Take a snapshot: a new empty overlay becomes the top and the old top
 * becomes read-only.  The new GUID is written to |guid| (39 bytes). */
int prl_bundle_snapshot_create(const char *path, unsigned flags, char guid[39]);

/* Delete the snapshot |guid| by merging its data into its only child, so
 * no guest-visible data changes; its image file is removed.  The top
 * cannot be deleted (commit it instead). */
int prl_bundle_snapshot_delete(const char *path, const char *guid,
                               unsigned flags);

/* Merge the top into its parent, which becomes the top; the old top's
 * image file is removed. */
int prl_bundle_commit(const char *path, unsigned flags);

#endif
