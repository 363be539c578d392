/* SPDX-License-Identifier: MIT */
/* DiskDescriptor.xml (prl-xml.rst): parse with libxml2, validate every
 * rule, edit the snapshot tree in place and write it back atomically,
 * keeping every node prl does not interpret. */
#ifndef PRL_BLOCK_BUNDLE_XML_H
#define PRL_BLOCK_BUNDLE_XML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BUNDLE_DESC_NAME "DiskDescriptor.xml"
/* "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}" plus the terminating NUL. */
#define BUNDLE_GUID_LEN 39
#define BUNDLE_GUID_ZERO "{00000000-0000-0000-0000-000000000000}"
#define BUNDLE_GUID_TOP "{5fbaabe3-6958-40ff-92a7-860e329aab41}"
#define BUNDLE_GUID_BACKUP "{704718e1-2314-44c8-9087-d78ed36b0f4e}"
/* Largest descriptor read, bytes: real ones are a few KiB. */
#define BUNDLE_XML_MAX_BYTES (1u << 20)
/* Most Image elements accepted; every one may become an open file. */
#define BUNDLE_MAX_IMAGES 1024u

struct bundle_image {
    char guid[BUNDLE_GUID_LEN]; /* lower case */
    bool plain;                 /* Type Plain (raw), else Compressed */
    char *file;                 /* File as written */
    void *node;                 /* its <Image> element */
};

struct bundle_shot {
    char guid[BUNDLE_GUID_LEN];
    char parent[BUNDLE_GUID_LEN]; /* BUNDLE_GUID_ZERO for the root */
    size_t image;                 /* index into images */
    size_t parent_shot;           /* index into shots; SIZE_MAX for root */
    size_t n_children;
    void *node; /* its <Shot> element */
};

/* A parsed, validated descriptor.  The strings and indices are rebuilt
 * from the document after every edit. */
struct bundle_desc {
    void *doc;             /* xmlDocPtr, owned */
    char *name;            /* for messages: the descriptor's path */
    uint64_t disk_sectors; /* Disk_size */
    uint64_t cylinders, heads, sectors;
    uint64_t blocksize; /* Storage Blocksize, sectors */
    struct bundle_image *images;
    size_t n_images;
    struct bundle_shot *shots;
    size_t n_shots;
    size_t top;             /* index into shots */
    size_t root;            /* index into shots */
    bool has_top_guid;      /* a <TopGUID> element names the top */
    bool geometry_mismatch; /* C*H*S != Disk_size beyond Parallels'
                             * rounding (allowed, warned) */
};

/* Parse and validate |len| bytes; |name| is used in messages.  On success
 * *d owns the document and is released with bundle_desc_free.  Never
 * loads anything from the network or the file system, never expands
 * entities, refuses a DOCTYPE. */
int bundle_desc_parse(const void *buf, size_t len, const char *name,
                      struct bundle_desc *d);

/* Read |path| (at most BUNDLE_XML_MAX_BYTES) and parse it. */
int bundle_desc_load(const char *path, struct bundle_desc *d);

void bundle_desc_free(struct bundle_desc *d);

/* Index of the shot with |guid| (any case), or SIZE_MAX. */
size_t bundle_desc_find(const struct bundle_desc *d, const char *guid);

/* Add an Image (Compressed, |file|) and a Shot with parent |parent| for
 * the new |guid|, and make it the top (TopGUID).  Revalidates. */
int bundle_desc_add_top(struct bundle_desc *d, const char *guid,
                        const char *file, const char *parent);

/* Remove the Image and Shot of |guid|; every child of it gets its parent.
 * When it was the top, its parent becomes the top.  Revalidates. */
int bundle_desc_remove(struct bundle_desc *d, const char *guid);

/* The document as bytes (malloc'd, the caller frees). */
int bundle_desc_serialize(const struct bundle_desc *d, char **out, size_t *len);

/* Write the document to |path| atomically: a temporary file beside it,
 * fsync, rename over, fsync the directory. */
int bundle_desc_save(const struct bundle_desc *d, const char *path);

/* Write a new descriptor for a one-image disk of |sectors| sectors and a
 * cluster of |blocksize| sectors, geometry as Parallels computes it. */
int bundle_desc_write_new(const char *path, uint64_t sectors,
                          uint64_t blocksize, const char *guid,
                          const char *file);

/* Copy |s| into |out| as a lower-case GUID when it has the form
 * {8-4-4-4-12} (hex, any case).  Returns false otherwise. */
bool bundle_guid_parse(const char *s, char out[BUNDLE_GUID_LEN]);

/* A new random GUID (version 4). */
int bundle_guid_random(char out[BUNDLE_GUID_LEN]);

/* Replace |path| atomically with |len| bytes: temporary file, fsync,
 * rename, fsync of the directory. */
int bundle_write_atomic(const char *path, const void *buf, size_t len);

#endif
