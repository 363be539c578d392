/* SPDX-License-Identifier: MIT */
/* DiskDescriptor.xml with libxml2: parsing without network, DTD or
 * entity expansion, the rules of prl-xml.rst, in-place edits of the
 * snapshot tree that keep unknown nodes, and atomic write-back. */
#include "block/bundle-xml.h"
#include "common/util.h"
#include "prl/error.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Longest text prl reads from one element (a File path), bytes. */
#define TEXT_MAX 4096

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init(void)
{
    xmlInitParser();
}

/* libxml2 reports some failures (encoding conversion, I/O) through its
 * generic error handler, which prints to stderr; the library never prints,
 * so every call into libxml2 runs with a silent handler, restored after. */
struct xml_quiet {
    xmlGenericErrorFunc fn;
    void *ctx;
};

static void xml_silent(void *ctx, const char *msg, ...)
{
}

static void quiet_begin(struct xml_quiet *q)
{
    pthread_once(&xml_once, xml_init);
    q->fn = xmlGenericError;
    q->ctx = xmlGenericErrorContext;
    xmlSetGenericErrorFunc(NULL, xml_silent);
}

static void quiet_end(const struct xml_quiet *q)
{
    xmlSetGenericErrorFunc(q->ctx, q->fn);
}

static bool is_elem(const xmlNode *n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE &&
           strcmp((const char *)n->name, name) == 0;
}

/* The only child element |name| of |parent| in *out (NULL when absent and
 * not |required|).  Two of them is an error: which one would count? */
static int child1(const struct bundle_desc *d, xmlNode *parent,
                  const char *name, bool required, xmlNode **out)
{
    xmlNode *found = NULL;

    for (xmlNode *n = parent->children; n; n = n->next) {
        if (is_elem(n, name)) {
            if (found) {
                return prl_error(EINVAL,
                                 "'%s': <%s> has more than one "
                                 "<%s> element (line %ld)",
                                 d->name, (const char *)parent->name, name,
                                 (long)xmlGetLineNo(n));
            }
            found = n;
        }
    }
    if (!found && required) {
        return prl_error(EINVAL, "'%s': <%s> has no <%s> element", d->name,
                         (const char *)parent->name, name);
    }
    *out = found;
    return 0;
}

/* The text of an element that must hold only text, whitespace trimmed.
 * Entity references are refused rather than expanded. */
static int elem_text(const struct bundle_desc *d, const xmlNode *el, char *out,
                     size_t cap)
{
    size_t len = 0, start = 0;

    for (const xmlNode *n = el->children; n; n = n->next) {
        if (n->type == XML_COMMENT_NODE || n->type == XML_PI_NODE) {
            continue;
        }
        if (n->type != XML_TEXT_NODE && n->type != XML_CDATA_SECTION_NODE) {
            return prl_error(EINVAL,
                             "'%s': <%s> (line %ld) must hold only "
                             "text",
                             d->name, (const char *)el->name,
                             (long)xmlGetLineNo((xmlNode *)el));
        }
        size_t k = n->content ? strlen((const char *)n->content) : 0;
        if (k >= cap - len) {
            return prl_error(EINVAL,
                             "'%s': <%s> (line %ld) holds more "
                             "than %zu bytes of text",
                             d->name, (const char *)el->name,
                             (long)xmlGetLineNo((xmlNode *)el), cap - 1);
        }
        memcpy(out + len, n->content, k);
        len += k;
    }
    out[len] = '\0';
    while (len > 0 && isspace((unsigned char)out[len - 1])) {
        out[--len] = '\0';
    }
    while (isspace((unsigned char)out[start])) {
        start++;
    }
    memmove(out, out + start, len - start + 1);
    return 0;
}

/* A required child holding a decimal number. */
static int child_u64(const struct bundle_desc *d, xmlNode *parent,
                     const char *name, uint64_t *out)
{
    char text[64];
    xmlNode *el;
    uint64_t v = 0;
    int r = child1(d, parent, name, true, &el);

    if (r < 0) {
        return r;
    }
    r = elem_text(d, el, text, sizeof(text));
    if (r < 0) {
        return r;
    }
    if (text[0] == '\0') {
        return prl_error(EINVAL, "'%s': <%s> in <%s> is empty", d->name, name,
                         (const char *)parent->name);
    }
    for (const char *p = text; *p; p++) {
        if (!isdigit((unsigned char)*p) || prl_mul_overflow(v, 10, &v) ||
            prl_add_overflow(v, (uint64_t)(*p - '0'), &v)) {
            return prl_error(EINVAL,
                             "'%s': <%s> in <%s> is '%s', not a "
                             "number below 2^64",
                             d->name, name, (const char *)parent->name, text);
        }
    }
    *out = v;
    return 0;
}

bool bundle_guid_parse(const char *s, char out[BUNDLE_GUID_LEN])
{
    static const char shape[] = "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}";

    if (strlen(s) != sizeof(shape) - 1) {
        return false;
    }
    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        if (shape[i] == 'x' ? !isxdigit((unsigned char)s[i])
                            : s[i] != shape[i]) {
            return false;
        }
    }
    for (size_t i = 0; i < BUNDLE_GUID_LEN; i++) {
        out[i] = (char)tolower((unsigned char)s[i]);
    }
    return true;
}

int bundle_guid_random(char out[BUNDLE_GUID_LEN])
{
    uint8_t b[16];
    size_t got = 0;

    while (got < sizeof(b)) {
        ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return prl_error_errno(errno, "getrandom for a new GUID");
        }
        got += (size_t)n;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, BUNDLE_GUID_LEN,
             "{%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x}",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
    return 0;
}

/* A required child holding a GUID in braces. */
static int child_guid(const struct bundle_desc *d, xmlNode *parent,
                      const char *name, char out[BUNDLE_GUID_LEN])
{
    char text[128];
    xmlNode *el;
    int r = child1(d, parent, name, true, &el);

    if (r < 0) {
        return r;
    }
    r = elem_text(d, el, text, sizeof(text));
    if (r < 0) {
        return r;
    }
    if (!bundle_guid_parse(text, out)) {
        return prl_error(EINVAL,
                         "'%s': <%s> in <%s> (line %ld) is '%s', "
                         "not a GUID in braces like {01234567-89ab-cdef-"
                         "0123-456789abcdef}",
                         d->name, name, (const char *)parent->name,
                         (long)xmlGetLineNo(el), text);
    }
    return 0;
}

static void free_model(struct bundle_desc *d)
{
    for (size_t i = 0; i < d->n_images; i++) {
        free(d->images[i].file);
    }
    free(d->images);
    free(d->shots);
    d->images = NULL;
    d->shots = NULL;
    d->n_images = 0;
    d->n_shots = 0;
}

void bundle_desc_free(struct bundle_desc *d)
{
    free_model(d);
    if (d->doc) {
        xmlFreeDoc(d->doc);
    }
    free(d->name);
    memset(d, 0, sizeof(*d));
}

size_t bundle_desc_find(const struct bundle_desc *d, const char *guid)
{
    char g[BUNDLE_GUID_LEN];

    if (!bundle_guid_parse(guid, g)) {
        return SIZE_MAX;
    }
    for (size_t i = 0; i < d->n_shots; i++) {
        if (strcmp(d->shots[i].guid, g) == 0) {
            return i;
        }
    }
    return SIZE_MAX;
}

static size_t find_image(const struct bundle_desc *d, const char *g)
{
    for (size_t i = 0; i < d->n_images; i++) {
        if (strcmp(d->images[i].guid, g) == 0) {
            return i;
        }
    }
    return SIZE_MAX;
}

static int extract_params(struct bundle_desc *d, xmlNode *root)
{
    uint64_t padding, prod;
    xmlNode *p;
    int r = child1(d, root, "Disk_Parameters", true, &p);

    if (r == 0) {
        r = child_u64(d, p, "Disk_size", &d->disk_sectors);
    }
    if (r == 0) {
        r = child_u64(d, p, "Cylinders", &d->cylinders);
    }
    if (r == 0) {
        r = child_u64(d, p, "Heads", &d->heads);
    }
    if (r == 0) {
        r = child_u64(d, p, "Sectors", &d->sectors);
    }
    if (r == 0) {
        r = child_u64(d, p, "Padding", &padding);
    }
    if (r < 0) {
        return r;
    }
    if (d->disk_sectors == 0 || d->disk_sectors > UINT64_MAX / 512) {
        return prl_error(EINVAL,
                         "'%s': <Disk_size> is %" PRIu64 " sectors;"
                         " it must be between 1 and 2^55",
                         d->name, d->disk_sectors);
    }
    if (padding != 0) {
        return prl_error(EINVAL,
                         "'%s': <Padding> is %" PRIu64 "; only 0 "
                         "is supported (prl-xml.rst leaves other values "
                         "undefined)",
                         d->name, padding);
    }
    /* Parallels rounds the cylinders down, so real disks rarely have
     * C*H*S == Disk_size; only a geometry that rounding cannot explain is
     * worth a warning. */
    d->geometry_mismatch =
        (prl_mul_overflow(d->cylinders, d->heads, &prod) ||
         prl_mul_overflow(prod, d->sectors, &prod) ||
         prod != d->disk_sectors) &&
        !(d->heads > 0 && d->sectors > 0 && d->heads <= UINT32_MAX &&
          d->sectors <= UINT32_MAX &&
          d->cylinders == d->disk_sectors / (d->heads * d->sectors));
    return 0;
}

static int extract_storage(struct bundle_desc *d, xmlNode *root)
{
    uint64_t start, end;
    xmlNode *sd, *st = NULL;
    size_t n_storage = 0, n_img = 0;
    int r = child1(d, root, "StorageData", true, &sd);

    if (r < 0) {
        return r;
    }
    for (xmlNode *n = sd->children; n; n = n->next) {
        if (is_elem(n, "Storage")) {
            n_storage++;
            st = st ? st : n;
        }
    }
    if (n_storage == 0) {
        return prl_error(EINVAL,
                         "'%s': <StorageData> has no <Storage> "
                         "element",
                         d->name);
    }
    if (n_storage > 1) {
        return prl_error(ENOTSUP,
                         "'%s': <StorageData> has %zu <Storage> "
                         "elements: split disks are not supported, only "
                         "one Storage covering the whole disk",
                         d->name, n_storage);
    }
    r = child_u64(d, st, "Start", &start);
    if (r == 0) {
        r = child_u64(d, st, "End", &end);
    }
    if (r == 0) {
        r = child_u64(d, st, "Blocksize", &d->blocksize);
    }
    if (r < 0) {
        return r;
    }
    if (start != 0) {
        return prl_error(EINVAL,
                         "'%s': <Start> of <Storage> is %" PRIu64
                         "; it must be 0 (split disks are not supported)",
                         d->name, start);
    }
    if (end != d->disk_sectors) {
        return prl_error(EINVAL,
                         "'%s': <End> of <Storage> is %" PRIu64
                         "; it must equal <Disk_size> %" PRIu64,
                         d->name, end, d->disk_sectors);
    }
    if (d->blocksize == 0 || d->blocksize > UINT32_MAX) {
        return prl_error(EINVAL,
                         "'%s': <Blocksize> of <Storage> is %" PRIu64
                         " sectors; it must be between 1 and "
                         "2^32-1",
                         d->name, d->blocksize);
    }
    for (xmlNode *n = st->children; n; n = n->next) {
        n_img += is_elem(n, "Image");
    }
    if (n_img == 0) {
        return prl_error(EINVAL, "'%s': <Storage> has no <Image> element",
                         d->name);
    }
    if (n_img > BUNDLE_MAX_IMAGES) {
        return prl_error(EINVAL,
                         "'%s': <Storage> has %zu <Image> elements;"
                         " at most %u are supported",
                         d->name, n_img, BUNDLE_MAX_IMAGES);
    }
    d->images = prl_calloc(n_img, sizeof(*d->images));
    if (!d->images) {
        return -ENOMEM;
    }
    for (xmlNode *n = st->children; n; n = n->next) {
        struct bundle_image *im;
        char text[TEXT_MAX];
        xmlNode *el;

        if (!is_elem(n, "Image")) {
            continue;
        }
        im = &d->images[d->n_images];
        im->node = n;
        r = child_guid(d, n, "GUID", im->guid);
        if (r < 0) {
            return r;
        }
        if (find_image(d, im->guid) != SIZE_MAX) {
            return prl_error(EINVAL,
                             "'%s': two <Image> elements have the "
                             "GUID %s",
                             d->name, im->guid);
        }
        r = child1(d, n, "Type", true, &el);
        if (r == 0) {
            r = elem_text(d, el, text, sizeof(text));
        }
        if (r < 0) {
            return r;
        }
        if (strcmp(text, "Plain") == 0) {
            im->plain = true;
        } else if (strcmp(text, "Compressed") != 0) {
            return prl_error(EINVAL,
                             "'%s': <Type> of image %s is '%s'; "
                             "it must be Plain or Compressed",
                             d->name, im->guid, text);
        }
        r = child1(d, n, "File", true, &el);
        if (r == 0) {
            r = elem_text(d, el, text, sizeof(text));
        }
        if (r < 0) {
            return r;
        }
        if (text[0] == '\0') {
            return prl_error(EINVAL, "'%s': <File> of image %s is empty",
                             d->name, im->guid);
        }
        im->file = strdup(text);
        if (!im->file) {
            return prl_error(ENOMEM, "out of memory");
        }
        d->n_images++;
    }
    return 0;
}

static int extract_shots(struct bundle_desc *d, xmlNode *root)
{
    char top[BUNDLE_GUID_LEN];
    xmlNode *sn, *tg;
    size_t n_shot = 0, n_roots = 0;
    int r = child1(d, root, "Snapshots", true, &sn);

    if (r == 0) {
        r = child1(d, sn, "TopGUID", false, &tg);
    }
    if (r < 0) {
        return r;
    }
    d->has_top_guid = tg != NULL;
    if (tg) {
        r = child_guid(d, sn, "TopGUID", top);
        if (r < 0) {
            return r;
        }
    } else {
        memcpy(top, BUNDLE_GUID_TOP, BUNDLE_GUID_LEN);
    }
    for (xmlNode *n = sn->children; n; n = n->next) {
        n_shot += is_elem(n, "Shot");
    }
    if (n_shot == 0) {
        return prl_error(EINVAL, "'%s': <Snapshots> has no <Shot> element",
                         d->name);
    }
    if (n_shot > BUNDLE_MAX_IMAGES) {
        return prl_error(EINVAL,
                         "'%s': <Snapshots> has %zu <Shot> "
                         "elements; at most %u are supported",
                         d->name, n_shot, BUNDLE_MAX_IMAGES);
    }
    d->shots = prl_calloc(n_shot, sizeof(*d->shots));
    if (!d->shots) {
        return -ENOMEM;
    }
    for (xmlNode *n = sn->children; n; n = n->next) {
        struct bundle_shot *sh;

        if (!is_elem(n, "Shot")) {
            continue;
        }
        sh = &d->shots[d->n_shots];
        sh->node = n;
        r = child_guid(d, n, "GUID", sh->guid);
        if (r == 0) {
            r = child_guid(d, n, "ParentGUID", sh->parent);
        }
        if (r < 0) {
            return r;
        }
        if (bundle_desc_find(d, sh->guid) != SIZE_MAX) {
            return prl_error(EINVAL,
                             "'%s': two <Shot> elements have the "
                             "GUID %s",
                             d->name, sh->guid);
        }
        sh->image = find_image(d, sh->guid);
        if (sh->image == SIZE_MAX) {
            return prl_error(EINVAL,
                             "'%s': <Shot> %s names no <Image> of "
                             "<Storage>",
                             d->name, sh->guid);
        }
        if (strcmp(sh->guid, sh->parent) == 0) {
            return prl_error(EINVAL, "'%s': <Shot> %s is its own parent",
                             d->name, sh->guid);
        }
        d->n_shots++;
    }
    for (size_t i = 0; i < d->n_images; i++) {
        if (bundle_desc_find(d, d->images[i].guid) == SIZE_MAX) {
            return prl_error(EINVAL,
                             "'%s': <Image> %s has no <Shot> in "
                             "<Snapshots>",
                             d->name, d->images[i].guid);
        }
    }
    for (size_t i = 0; i < d->n_shots; i++) {
        struct bundle_shot *sh = &d->shots[i];

        if (strcmp(sh->parent, BUNDLE_GUID_ZERO) == 0) {
            sh->parent_shot = SIZE_MAX;
            d->root = i;
            n_roots++;
            continue;
        }
        sh->parent_shot = bundle_desc_find(d, sh->parent);
        if (sh->parent_shot == SIZE_MAX) {
            return prl_error(EINVAL,
                             "'%s': the <ParentGUID> %s of <Shot> "
                             "%s names no <Shot>",
                             d->name, sh->parent, sh->guid);
        }
        d->shots[sh->parent_shot].n_children++;
    }
    if (n_roots != 1) {
        return prl_error(EINVAL,
                         "'%s': <Snapshots> has %zu root <Shot> "
                         "elements (ParentGUID %s); it must have exactly "
                         "one",
                         d->name, n_roots, BUNDLE_GUID_ZERO);
    }
    /* With one root and every parent known, a shot that does not reach
     * the root in n_shots steps is on a cycle. */
    for (size_t i = 0; i < d->n_shots; i++) {
        size_t k = i, steps = 0;
        while (d->shots[k].parent_shot != SIZE_MAX && steps <= d->n_shots) {
            k = d->shots[k].parent_shot;
            steps++;
        }
        if (d->shots[k].parent_shot != SIZE_MAX) {
            return prl_error(EINVAL,
                             "'%s': the <ParentGUID> links of "
                             "<Shot> %s form a cycle",
                             d->name, d->shots[i].guid);
        }
    }
    d->top = bundle_desc_find(d, top);
    if (d->top == SIZE_MAX) {
        if (tg) {
            return prl_error(EINVAL, "'%s': <TopGUID> %s names no <Shot>",
                             d->name, top);
        }
        return prl_error(EINVAL,
                         "'%s': no top snapshot: there is no "
                         "<TopGUID> and no <Shot> with the predefined top "
                         "GUID %s",
                         d->name, BUNDLE_GUID_TOP);
    }
    if (strcmp(top, BUNDLE_GUID_BACKUP) == 0) {
        return prl_error(EINVAL,
                         "'%s': the top snapshot has the BackupID "
                         "GUID %s, which the top must never have",
                         d->name, BUNDLE_GUID_BACKUP);
    }
    for (size_t i = 0; i < d->n_shots; i++) {
        if (i != d->root && d->images[d->shots[i].image].plain) {
            return prl_error(EINVAL,
                             "'%s': image %s has <Type> Plain but "
                             "is not the root; overlays must be "
                             "Compressed",
                             d->name, d->shots[i].guid);
        }
    }
    return 0;
}

/* Build the model from the document, checking every rule. */
static int extract(struct bundle_desc *d)
{
    xmlNode *root = xmlDocGetRootElement(d->doc);
    xmlChar *ver;
    int r;

    free_model(d);
    if (!root) {
        return prl_error(EINVAL, "'%s': no root element", d->name);
    }
    if (!is_elem(root, "Parallels_disk_image") &&
        !is_elem(root, "Virtuozzo_disk_image")) {
        return prl_error(EINVAL,
                         "'%s': the root element is <%s>, not "
                         "<Parallels_disk_image>",
                         d->name, (const char *)root->name);
    }
    ver = xmlGetNoNsProp(root, BAD_CAST "Version");
    if (!ver || strcmp((const char *)ver, "1.0") != 0) {
        r = prl_error(EINVAL,
                      "'%s': <%s> has Version '%s'; only 1.0 is "
                      "supported",
                      d->name, (const char *)root->name,
                      ver ? (const char *)ver : "(none)");
        xmlFree(ver);
        return r;
    }
    xmlFree(ver);
    r = extract_params(d, root);
    if (r == 0) {
        r = extract_storage(d, root);
    }
    if (r == 0) {
        r = extract_shots(d, root);
    }
    return r;
}

/* SAX hook for <!DOCTYPE: stop at once, before any declaration inside it
 * is parsed, so entity definitions never take effect. */
static void refuse_doctype(void *ctx, const xmlChar *name,
                           const xmlChar *external_id, const xmlChar *system_id)
{
    xmlParserCtxtPtr ctxt = ctx;

    *(bool *)ctxt->_private = true;
    xmlStopParser(ctxt);
}

int bundle_desc_parse(const void *buf, size_t len, const char *name,
                      struct bundle_desc *d)
{
    struct xml_quiet quiet;
    xmlParserCtxtPtr ctxt;
    bool doctype = false;
    int r;

    memset(d, 0, sizeof(*d));
    d->name = strdup(name);
    if (!d->name) {
        return prl_error(ENOMEM, "out of memory");
    }
    if (len > BUNDLE_XML_MAX_BYTES) {
        r = prl_error(EFBIG,
                      "'%s' is %zu bytes; a descriptor of more than "
                      "%u bytes is refused",
                      name, len, BUNDLE_XML_MAX_BYTES);
        goto fail;
    }
    quiet_begin(&quiet);
    ctxt = xmlNewParserCtxt();
    if (!ctxt) {
        quiet_end(&quiet);
        r = prl_error(ENOMEM, "out of memory for the XML parser");
        goto fail;
    }
    ctxt->_private = &doctype;
    ctxt->sax->internalSubset = refuse_doctype;
    d->doc = xmlCtxtReadMemory(ctxt, buf, (int)len, NULL, NULL,
                               XML_PARSE_NONET | XML_PARSE_NOERROR |
                                   XML_PARSE_NOWARNING);
    if (doctype) {
        r = prl_error(EINVAL,
                      "'%s': a <!DOCTYPE> declaration is not "
                      "allowed in a descriptor (no DTD, no entities)",
                      name);
    } else if (!d->doc || !ctxt->wellFormed) {
        const xmlError *e = xmlCtxtGetLastError(ctxt);
        char msg[256];
        size_t k;

        snprintf(msg, sizeof(msg), "%s",
                 e && e->message ? e->message : "unknown error");
        k = strlen(msg);
        while (k > 0 && isspace((unsigned char)msg[k - 1])) {
            msg[--k] = '\0';
        }
        r = prl_error(EINVAL, "'%s' is not well-formed XML: line %d: %s", name,
                      e ? e->line : 0, msg);
    } else {
        r = 0;
    }
    xmlFreeParserCtxt(ctxt);
    quiet_end(&quiet);
    if (r < 0) {
        goto fail;
    }
    r = extract(d);
    if (r < 0) {
        goto fail;
    }
    return 0;

fail:
    bundle_desc_free(d);
    return r;
}

int bundle_desc_load(const char *path, struct bundle_desc *d)
{
    struct stat st;
    char *buf;
    size_t got = 0;
    int fd, r;

    memset(d, 0, sizeof(*d));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return prl_error_errno(errno, "could not open '%s'", path);
    }
    if (fstat(fd, &st) < 0) {
        r = prl_error_errno(errno, "stat '%s'", path);
        close(fd);
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return prl_error(EINVAL, "'%s' is not a regular file", path);
    }
    if (st.st_size > (off_t)BUNDLE_XML_MAX_BYTES) {
        close(fd);
        return prl_error(EFBIG,
                         "'%s' is %lld bytes; a descriptor of more "
                         "than %u bytes is refused",
                         path, (long long)st.st_size, BUNDLE_XML_MAX_BYTES);
    }
    /* One byte more than the cap, to see a file that grew meanwhile. */
    buf = prl_malloc(BUNDLE_XML_MAX_BYTES + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        ssize_t n = read(fd, buf + got, BUNDLE_XML_MAX_BYTES + 1 - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            r = prl_error_errno(errno, "read '%s'", path);
            close(fd);
            free(buf);
            return r;
        }
        if (n == 0 || (got += (size_t)n) > BUNDLE_XML_MAX_BYTES) {
            break;
        }
    }
    close(fd);
    r = bundle_desc_parse(buf, got, path, d);
    free(buf);
    return r;
}

static bool is_blank_text(const xmlNode *n)
{
    if (!n || n->type != XML_TEXT_NODE || !n->content) {
        return false;
    }
    for (const xmlChar *p = n->content; *p; p++) {
        if (!isspace(*p)) {
            return false;
        }
    }
    return true;
}

static const xmlChar *blank_before(const xmlNode *n)
{
    return is_blank_text(n->prev) ? n->prev->content : NULL;
}

static xmlNode *first_elem(xmlNode *parent)
{
    for (xmlNode *n = parent->children; n; n = n->next) {
        if (n->type == XML_ELEMENT_NODE) {
            return n;
        }
    }
    return NULL;
}

/* Insert |text| (may be NULL) as a text node just before |n|. */
static int add_text_before(xmlNode *n, const xmlChar *text)
{
    xmlNode *t;

    if (!text) {
        return 0;
    }
    t = xmlNewText(text);
    if (!t) {
        return prl_error(ENOMEM, "out of memory");
    }
    if (!xmlAddPrevSibling(n, t)) {
        xmlFreeNode(t);
        return prl_error(ENOMEM, "out of memory");
    }
    return 0;
}

/* A new element |name| with text children keys[i] = vals[i], indented
 * like |tmpl| (an element of the same kind) when it is indented.  The
 * values are escaped on output. */
static xmlNode *new_block(const xmlNode *tmpl, const char *name,
                          const char *const *keys, const char *const *vals,
                          size_t n)
{
    const xmlChar *inner = NULL, *close = NULL;
    xmlNode *el = xmlNewNode(NULL, BAD_CAST name);

    if (!el) {
        return NULL;
    }
    if (tmpl) {
        xmlNode *fe = first_elem((xmlNode *)tmpl);
        inner = fe ? blank_before(fe) : NULL;
        close = is_blank_text(tmpl->last) ? tmpl->last->content : NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if ((inner && !xmlAddChild(el, xmlNewText(inner))) ||
            !xmlNewTextChild(el, NULL, BAD_CAST keys[i], BAD_CAST vals[i])) {
            xmlFreeNode(el);
            return NULL;
        }
    }
    if (close && !xmlAddChild(el, xmlNewText(close))) {
        xmlFreeNode(el);
        return NULL;
    }
    return el;
}

/* Insert |el| after |after| with the same leading whitespace. */
static int insert_after(xmlNode *after, xmlNode *el)
{
    const xmlChar *indent = blank_before(after);

    if (!xmlAddNextSibling(after, el)) {
        xmlFreeNode(el);
        return prl_error(ENOMEM, "out of memory");
    }
    return add_text_before(el, indent);
}

static void remove_elem(xmlNode *el)
{
    if (is_blank_text(el->prev)) {
        xmlNode *t = el->prev;
        xmlUnlinkNode(t);
        xmlFreeNode(t);
    }
    xmlUnlinkNode(el);
    xmlFreeNode(el);
}

/* Replace the text of |el| with |text|. */
static int set_text(xmlNode *el, const char *text)
{
    xmlNode *t;

    while (el->children) {
        xmlNode *c = el->children;
        xmlUnlinkNode(c);
        xmlFreeNode(c);
    }
    t = xmlNewText(BAD_CAST text);
    if (!t || !xmlAddChild(el, t)) {
        xmlFreeNode(t);
        return prl_error(ENOMEM, "out of memory");
    }
    return 0;
}

static xmlNode *snapshots_elem(const struct bundle_desc *d)
{
    xmlNode *root = xmlDocGetRootElement(d->doc);

    for (xmlNode *n = root->children; n; n = n->next) {
        if (is_elem(n, "Snapshots")) {
            return n;
        }
    }
    return NULL;
}

/* Name |guid| as the top in a TopGUID element, adding one when there is
 * none (the predefined top GUID then becomes an ordinary one). */
static int set_top(struct bundle_desc *d, const char *guid)
{
    xmlNode *sn = snapshots_elem(d), *tg = NULL, *first, *el;
    int r;

    for (xmlNode *n = sn->children; n; n = n->next) {
        if (is_elem(n, "TopGUID")) {
            tg = n;
        }
    }
    if (tg) {
        return set_text(tg, guid);
    }
    first = first_elem(sn);
    el = xmlNewNode(NULL, BAD_CAST "TopGUID");
    if (!el) {
        return prl_error(ENOMEM, "out of memory");
    }
    r = set_text(el, guid);
    if (r < 0) {
        xmlFreeNode(el);
        return r;
    }
    if (!xmlAddPrevSibling(first, el)) {
        xmlFreeNode(el);
        return prl_error(ENOMEM, "out of memory");
    }
    return add_text_before(first, blank_before(el));
}

int bundle_desc_add_top(struct bundle_desc *d, const char *guid,
                        const char *file, const char *parent)
{
    xmlNode *last_img = d->images[d->n_images - 1].node;
    xmlNode *last_shot = d->shots[d->n_shots - 1].node;
    const char *ik[] = {"GUID", "Type", "File"};
    const char *iv[] = {guid, "Compressed", file};
    const char *sk[] = {"GUID", "ParentGUID"};
    const char *sv[] = {guid, parent};
    xmlNode *img, *shot;
    int r;

    if (bundle_desc_find(d, guid) != SIZE_MAX) {
        return prl_error(EEXIST, "'%s': snapshot %s already exists", d->name,
                         guid);
    }
    img = new_block(last_img, "Image", ik, iv, 3);
    shot = new_block(last_shot, "Shot", sk, sv, 2);
    if (!img || !shot) {
        xmlFreeNode(img);
        xmlFreeNode(shot);
        return prl_error(ENOMEM, "out of memory");
    }
    r = insert_after(last_img, img);
    if (r < 0) {
        xmlFreeNode(shot);
        return r;
    }
    r = insert_after(last_shot, shot);
    if (r == 0) {
        r = set_top(d, guid);
    }
    if (r == 0) {
        r = extract(d);
    }
    return r;
}

int bundle_desc_remove(struct bundle_desc *d, const char *guid)
{
    size_t i = bundle_desc_find(d, guid);
    struct bundle_shot *sh;
    char parent[BUNDLE_GUID_LEN];
    int r = 0;

    if (i == SIZE_MAX) {
        return prl_error(ENOENT, "'%s': no snapshot %s", d->name, guid);
    }
    sh = &d->shots[i];
    memcpy(parent, sh->parent, sizeof(parent));
    if (i == d->top && sh->parent_shot == SIZE_MAX) {
        return prl_error(EINVAL, "'%s': %s is the only image of the chain",
                         d->name, guid);
    }
    if (sh->parent_shot == SIZE_MAX && sh->n_children != 1) {
        return prl_error(EINVAL,
                         "'%s': the root %s has %zu children; "
                         "only a root with one child can be removed",
                         d->name, guid, sh->n_children);
    }
    for (size_t k = 0; k < d->n_shots && r == 0; k++) {
        if (d->shots[k].parent_shot == i) {
            xmlNode *pg;
            r = child1(d, d->shots[k].node, "ParentGUID", true, &pg);
            if (r == 0) {
                r = set_text(pg, parent);
            }
        }
    }
    if (r == 0 && i == d->top) {
        r = set_top(d, parent);
    }
    if (r < 0) {
        return r;
    }
    remove_elem(d->images[sh->image].node);
    remove_elem(sh->node);
    return extract(d);
}

int bundle_desc_serialize(const struct bundle_desc *d, char **out, size_t *len)
{
    struct xml_quiet quiet;
    xmlChar *mem = NULL;
    int size = 0;

    /* Always UTF-8 (libxml2's own encoding), whatever the input declared:
     * converting back to an exotic declared encoding can fail. */
    quiet_begin(&quiet);
    xmlDocDumpMemoryEnc(d->doc, &mem, &size, "UTF-8");
    quiet_end(&quiet);
    if (!mem || size <= 0) {
        xmlFree(mem);
        return prl_error(ENOMEM, "'%s': could not serialize the descriptor",
                         d->name);
    }
    *out = prl_malloc((size_t)size);
    if (!*out) {
        xmlFree(mem);
        return -ENOMEM;
    }
    memcpy(*out, mem, (size_t)size);
    *len = (size_t)size;
    xmlFree(mem);
    return 0;
}

static int sync_dir_of(const char *path)
{
    char *copy = strdup(path), *slash;
    int fd, r = 0;

    if (!copy) {
        return prl_error(ENOMEM, "out of memory");
    }
    slash = strrchr(copy, '/');
    if (slash == copy) {
        slash[1] = '\0';
    } else if (slash) {
        *slash = '\0';
    } else {
        strcpy(copy, ".");
    }
    fd = open(copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0) {
        r = prl_error_errno(errno, "sync directory '%s'", copy);
    }
    if (fd >= 0) {
        close(fd);
    }
    free(copy);
    return r;
}

int bundle_write_atomic(const char *path, const void *buf, size_t len)
{
    struct stat st;
    mode_t mode = 0644;
    const char *p = buf;
    char *tmp;
    int fd, r = 0;

    if (stat(path, &st) == 0) {
        mode = st.st_mode & 07777;
    }
    if (asprintf(&tmp, "%s.prl-tmp", path) < 0) {
        return prl_error(ENOMEM, "out of memory");
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        r = prl_error_errno(errno, "could not create '%s'", tmp);
        free(tmp);
        return r;
    }
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            r = prl_error_errno(errno, "write '%s'", tmp);
            break;
        }
        p += n;
        len -= (size_t)n;
    }
    if (r == 0 && fsync(fd) < 0) {
        r = prl_error_errno(errno, "fsync '%s'", tmp);
    }
    if (close(fd) < 0 && r == 0) {
        r = prl_error_errno(errno, "close '%s'", tmp);
    }
    if (r == 0 && rename(tmp, path) < 0) {
        r = prl_error_errno(errno, "rename '%s' to '%s'", tmp, path);
    }
    if (r < 0) {
        unlink(tmp);
    } else {
        r = sync_dir_of(path);
    }
    free(tmp);
    return r;
}

int bundle_desc_save(const struct bundle_desc *d, const char *path)
{
    char *buf;
    size_t len;
    int r = bundle_desc_serialize(d, &buf, &len);

    if (r < 0) {
        return r;
    }
    r = bundle_write_atomic(path, buf, len);
    free(buf);
    return r;
}

/* Append a newline and |depth| levels of indent to |parent|. */
static void add_indent(xmlNode *parent, int depth)
{
    char ws[64];

    snprintf(ws, sizeof(ws), "\n%*s", 4 * depth, "");
    xmlAddChild(parent, xmlNewText(BAD_CAST ws));
}

/* Append <name>text</name> to |parent| at |depth| levels of indent. */
static xmlNode *add_leaf(xmlNode *parent, int depth, const char *name,
                         const char *text)
{
    add_indent(parent, depth);
    return xmlNewTextChild(parent, NULL, BAD_CAST name, BAD_CAST text);
}

int bundle_desc_write_new(const char *path, uint64_t sectors,
                          uint64_t blocksize, const char *guid,
                          const char *file)
{
    char num[4][24];
    uint64_t cyl = sectors / (16 * 63);
    xmlDoc *doc;
    xmlNode *root, *p, *sd, *st, *im, *sn, *sh;
    struct xml_quiet quiet;
    xmlChar *mem = NULL;
    int size = 0, r;

    quiet_begin(&quiet);
    snprintf(num[0], sizeof(num[0]), "%" PRIu64, sectors);
    snprintf(num[1], sizeof(num[1]), "%" PRIu64, cyl);
    snprintf(num[2], sizeof(num[2]), "%" PRIu64, blocksize);
    doc = xmlNewDoc(BAD_CAST "1.0");
    if (!doc) {
        quiet_end(&quiet);
        return prl_error(ENOMEM, "out of memory");
    }
    root = xmlNewNode(NULL, BAD_CAST "Parallels_disk_image");
    xmlDocSetRootElement(doc, root);
    xmlNewProp(root, BAD_CAST "Version", BAD_CAST "1.0");
    p = add_leaf(root, 1, "Disk_Parameters", NULL);
    add_leaf(p, 2, "Disk_size", num[0]);
    add_leaf(p, 2, "Cylinders", num[1]);
    add_leaf(p, 2, "Heads", "16");
    add_leaf(p, 2, "Sectors", "63");
    add_leaf(p, 2, "Padding", "0");
    add_indent(p, 1);
    sd = add_leaf(root, 1, "StorageData", NULL);
    st = add_leaf(sd, 2, "Storage", NULL);
    add_leaf(st, 3, "Start", "0");
    add_leaf(st, 3, "End", num[0]);
    add_leaf(st, 3, "Blocksize", num[2]);
    im = add_leaf(st, 3, "Image", NULL);
    add_leaf(im, 4, "GUID", guid);
    add_leaf(im, 4, "Type", "Compressed");
    add_leaf(im, 4, "File", file);
    add_indent(im, 3);
    add_indent(st, 2);
    add_indent(sd, 1);
    sn = add_leaf(root, 1, "Snapshots", NULL);
    sh = add_leaf(sn, 2, "Shot", NULL);
    add_leaf(sh, 3, "GUID", guid);
    add_leaf(sh, 3, "ParentGUID", BUNDLE_GUID_ZERO);
    add_indent(sh, 2);
    add_indent(sn, 1);
    add_indent(root, 0);
    xmlDocDumpMemoryEnc(doc, &mem, &size, "UTF-8");
    xmlFreeDoc(doc);
    quiet_end(&quiet);
    if (!mem || size <= 0) {
        xmlFree(mem);
        return prl_error(ENOMEM, "out of memory");
    }
    r = bundle_write_atomic(path, mem, (size_t)size);
    xmlFree(mem);
    return r;
}
