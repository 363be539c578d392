/* SPDX-License-Identifier: MIT */
/* prl-nbd: serve images that prl opens over NBD, with qemu-nbd's option
 * names where the two overlap. */
#include "list.h"
#include "nbd/server/server.h"
#include "nbd/tls.h"
#include "prl/block.h"
#include "prl/error.h"
#include "prl/log.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#ifndef PRL_VERSION
#define PRL_VERSION "unknown"
#endif

#define DEFAULT_PORT "10809"
#define MAX_EXPORTS 256
#define MAX_BITMAPS 1024
#define MAX_OBJECTS 32

struct export_arg {
    char *name;
    char *file;
    char *description;
    char *format;
    bool read_only;
    bool alloc_depth; /* offer qemu:allocation-depth */
};

/* A bitmap to offer as qemu:dirty-bitmap:NAME on an export. */
struct bitmap_arg {
    const char *export; /* NULL: FILE's export */
    const char *name;
};

/* An --object, in QEMU's spelling. */
enum object_type {
    OBJ_TLS_X509,
    OBJ_TLS_PSK,
    OBJ_AUTHZ_SIMPLE,
};

struct object_arg {
    enum object_type type;
    const char *id;
    const char *dir;      /* tls-creds-* */
    const char *priority; /* tls-creds-*; NULL: default */
    bool verify_peer;     /* tls-creds-x509 */
    bool sanity_check;    /* tls-creds-x509 */
    const char *identity; /* authz-simple */
    const char *endpoint; /* tls-creds-*: "server", "client"; NULL: client */
    const char *username; /* tls-creds-psk, client endpoint */
};

struct options {
    const char *format;
    bool read_only;
    const char *export_name;
    const char *description;
    bool alloc_depth;
    const char *port;
    const char *bind;
    const char *unix_paths[16];
    int n_unix;
    bool fork;
    const char *pid_file;
    bool single;
    bool use_syslog;
    bool log_given;
    int verbose;
    unsigned open_flags; /* PRL_OPEN_BUNDLE_EXTERNAL */
    struct export_arg exports[MAX_EXPORTS];
    int n_exports;
    struct bitmap_arg bitmaps[MAX_BITMAPS];
    int n_bitmaps;
    struct object_arg objects[MAX_OBJECTS];
    int n_objects;
    const char *tls_creds; /* an object id */
    const char *tls_authz; /* an object id */
    const char *tls_hostname;
    bool list;            /* -L: list a server's exports instead of serving */
    const char *list_uri; /* -L's optional NBD URI */
    struct prl_nbd_server_config cfg;
};

static struct prl_nbd_server *the_server;
static bool log_syslog;

/* Busy polling between requests (--poll-max-ns): QEMU's IOThreads'
 * default, and a cap that keeps a typo from spinning for seconds. */
#define DEFAULT_POLL_NS 32768u
#define MAX_POLL_NS 1000000u

static void usage(FILE *f)
{
    /* One help line per source line. */
    /* clang-format off */
    fprintf(f,
"Usage: prl-nbd [OPTIONS] [FILE]\n"
"Serve disk images (raw, Parallels) over the NBD protocol.\n"
"\n"
"Exports:\n"
"  -f, --format=FMT          image format of FILE (default: probe)\n"
"  -r, --read-only           export read-only\n"
"  -x, --export-name=NAME    name of FILE's export (default \"\")\n"
"  -D, --description=TEXT    description of FILE's export\n"
"  -A, --allocation-depth    offer the context qemu:allocation-depth\n"
"  -B, --bitmap=NAME         offer FILE's bitmap NAME (a UUID) as the context\n"
"                            qemu:dirty-bitmap:NAME (repeatable)\n"
"      --export=NAME=FILE[,ro][,format=FMT][,description=TEXT][,bitmap=NAME]\n"
"               [,allocation-depth]\n"
"                            one more export (repeatable; ',,' is a comma;\n"
"                            bitmap= repeatable)\n"
"\n"
"Sockets:\n"
"  -p, --port=PORT           TCP port (default 10809)\n"
"  -b, --bind=ADDR           TCP address (default 0.0.0.0)\n"
"  -k, --socket=PATH         Unix socket (TCP too only with -p or -b)\n"
"      --unix=PATH           same as -k\n"
"  -s, --single              serve one client on stdin/stdout\n"
"      (systemd socket activation: LISTEN_FDS/LISTEN_PID)\n"
"\n"
"Serving:\n"
"  -e, --shared=N            clients at once (default 1, 0 = unlimited)\n"
"  -t, --persistent          keep serving after the last client leaves\n"
"      --max-connections=N   refuse sockets beyond N (default 0, none)\n"
"      --discard=ignore|unmap  whether trim frees space (default ignore)\n"
"      --handshake-limit=S   drop clients not done negotiating in S\n"
"                            seconds (default 10, 0 = never)\n"
"      --threads=N           workers per connection (default 8)\n"
"      --poll-max-ns=NS      busy-poll a busy connection's socket up to NS\n"
"                            between requests (default 32768, 0 = off)\n"
"      --min-block-size=N    advertise and enforce a minimum block size\n"
"      --allow-external-files  let a bundle's DiskDescriptor.xml name image\n"
"                            files outside its directory\n"
"\n"
"TLS (a client must use STARTTLS before anything else):\n"
"      --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]\n"
"                            X.509 credentials: DIR/ca-cert.pem,\n"
"                            server-cert.pem, server-key.pem, optional\n"
"                            ca-crl.pem, dh-params.pem; verify-peer=on (the\n"
"                            default) requires a client certificate that\n"
"                            ca-cert.pem vouches for\n"
"      --object tls-creds-psk,id=ID,dir=DIR,endpoint=server\n"
"                            pre-shared keys: DIR/keys.psk, username:hexkey\n"
"                            lines as psktool writes them\n"
"      --object authz-simple,id=ID,identity=NAME\n"
"                            admit NAME only: the client certificate's\n"
"                            distinguished name (',,' is a comma), or the\n"
"                            PSK username\n"
"      --tls-creds=ID        serve only over TLS with credentials ID\n"
"      --tls-authz=ID        admit only the identity of authz object ID\n"
"\n"
"Listing (as a client):\n"
"  -L, --list [URI]          list the exports of the server at URI, or at\n"
"                            -k SOCKET, else -b ADDR (default localhost)\n"
"                            and -p PORT, as qemu-nbd --list does; TLS with\n"
"                            --tls-creds=ID of a tls-creds-x509 (dir with\n"
"                            ca-cert.pem, client-cert.pem, client-key.pem)\n"
"                            or tls-creds-psk (dir/keys.psk, username=,\n"
"                            default qemu) object with endpoint=client\n"
"      --tls-hostname=NAME   the name the server certificate must carry\n"
"\n"
"Process:\n"
"      --fork                run in the background once listening\n"
"      --pid-file=FILE       write the server's process id to FILE\n"
"      --log=stderr|syslog   where messages go (default stderr)\n"
"  -v, --verbose             more messages (twice: debug)\n"
"  -h, --help                this help\n"
"  -V, --version             version\n");
    /* clang-format on */
}

static void log_handler(enum prl_log_level level, const char *msg, void *opaque)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

    if (log_syslog) {
        syslog(prio[level], "%s", msg);
    } else {
        fprintf(stderr, "prl-nbd: %s: %s\n", names[level], msg);
    }
}

static int die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int die(const char *fmt, ...)
{
    va_list ap;

    fputs("prl-nbd: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

static bool parse_uint(const char *s, unsigned long max, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > max || s[0] == '-') {
        return false;
    }
    *out = (unsigned)v;
    return true;
}

/* Take the next comma-separated item of *p (",," is a literal comma),
 * in place.  NULL at the end. */
static char *next_item(char **p)
{
    char *start = *p, *r, *w;

    if (!start) {
        return NULL;
    }
    for (r = w = start; *r; r++) {
        if (*r == ',') {
            if (r[1] == ',') {
                *w++ = ',';
                r++;
                continue;
            }
            *w = '\0';
            *p = r + 1;
            return start;
        }
        *w++ = *r;
    }
    *w = '\0';
    *p = NULL;
    return start;
}

static int add_bitmap_arg(struct options *o, const char *export,
                          const char *name)
{
    if (o->n_bitmaps == MAX_BITMAPS) {
        return die("more than %d bitmaps", MAX_BITMAPS);
    }
    if (name[0] == '\0') {
        return die("empty bitmap name");
    }
    o->bitmaps[o->n_bitmaps++] = (struct bitmap_arg){export, name};
    return 0;
}

/* NAME=FILE[,ro][,format=FMT][,description=TEXT][,bitmap=NAME]...
 * [,allocation-depth] */
static int parse_export(struct options *o, char *arg)
{
    struct export_arg *e;
    char *eq = strchr(arg, '='), *rest, *item;

    if (o->n_exports == MAX_EXPORTS) {
        return die("more than %d exports", MAX_EXPORTS);
    }
    if (!eq || eq[1] == '\0') {
        return die("--export '%s': expected NAME=FILE[,ro][,format=FMT]"
                   "[,description=TEXT]",
                   arg);
    }
    e = &o->exports[o->n_exports];
    memset(e, 0, sizeof(*e));
    *eq = '\0';
    e->name = arg;
    rest = eq + 1;
    e->file = next_item(&rest);
    while ((item = next_item(&rest))) {
        if (strcmp(item, "ro") == 0 || strcmp(item, "readonly") == 0) {
            e->read_only = true;
        } else if (strncmp(item, "description=", 12) == 0) {
            e->description = item + 12;
        } else if (strncmp(item, "format=", 7) == 0) {
            e->format = item + 7;
        } else if (strncmp(item, "bitmap=", 7) == 0) {
            if (add_bitmap_arg(o, e->name, item + 7) != 0) {
                return 1;
            }
        } else if (strcmp(item, "allocation-depth") == 0) {
            e->alloc_depth = true;
        } else {
            return die("--export %s: unknown key '%s' (ro, format=, "
                       "description=, bitmap=, allocation-depth)",
                       e->name, item);
        }
    }
    if (e->file[0] == '\0') {
        return die("--export %s: no file", e->name);
    }
    o->n_exports++;
    return 0;
}

/* on/off as QEMU's boolean properties take them. */
static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"on", "yes", "true", "y"};
    static const char *const no[] = {"off", "no", "false", "n"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* TYPE,id=ID,KEY=VALUE...: what --object takes, as qemu-nbd spells it
 * (',,' is a literal comma). */
static int parse_object(struct options *o, char *arg)
{
    struct object_arg *ob;
    const char *type_name;
    char *rest = arg, *item;

    if (o->n_objects == MAX_OBJECTS) {
        return die("more than %d objects", MAX_OBJECTS);
    }
    ob = &o->objects[o->n_objects];
    memset(ob, 0, sizeof(*ob));
    ob->verify_peer = true; /* QEMU's default */
    ob->sanity_check = true;
    type_name = next_item(&rest);
    if (strcmp(type_name, "tls-creds-x509") == 0) {
        ob->type = OBJ_TLS_X509;
    } else if (strcmp(type_name, "tls-creds-psk") == 0) {
        ob->type = OBJ_TLS_PSK;
    } else if (strcmp(type_name, "authz-simple") == 0) {
        ob->type = OBJ_AUTHZ_SIMPLE;
    } else {
        return die("--object: unknown object type '%s' (prl-nbd knows "
                   "tls-creds-x509, tls-creds-psk and authz-simple)",
                   type_name);
    }
    while ((item = next_item(&rest))) {
        char *eq = strchr(item, '=');
        const char *key = item, *val;
        bool creds = ob->type != OBJ_AUTHZ_SIMPLE;

        if (!eq) {
            return die("--object %s: '%s' is not KEY=VALUE", type_name, item);
        }
        *eq = '\0';
        val = eq + 1;
        if (strcmp(key, "id") == 0) {
            ob->id = val;
        } else if (creds && strcmp(key, "dir") == 0) {
            ob->dir = val;
        } else if (creds && strcmp(key, "endpoint") == 0) {
            if (strcmp(val, "server") != 0 && strcmp(val, "client") != 0) {
                return die("--object %s: endpoint=%s is not server or client",
                           type_name, val);
            }
            ob->endpoint = val;
        } else if (creds && strcmp(key, "priority") == 0) {
            ob->priority = val;
        } else if (ob->type == OBJ_TLS_X509 &&
                   strcmp(key, "verify-peer") == 0) {
            if (!parse_bool(val, &ob->verify_peer)) {
                return die("--object %s: verify-peer=%s is not on or off",
                           type_name, val);
            }
        } else if (ob->type == OBJ_TLS_X509 &&
                   strcmp(key, "sanity-check") == 0) {
            if (!parse_bool(val, &ob->sanity_check)) {
                return die("--object %s: sanity-check=%s is not on or off",
                           type_name, val);
            }
        } else if (ob->type == OBJ_TLS_X509 && strcmp(key, "passwordid") == 0) {
            return die("--object %s: passwordid= (an encrypted key) is not "
                       "supported; give server-key.pem unencrypted",
                       type_name);
        } else if (ob->type == OBJ_TLS_PSK && strcmp(key, "username") == 0) {
            ob->username = val;
        } else if (ob->type == OBJ_AUTHZ_SIMPLE &&
                   strcmp(key, "identity") == 0) {
            ob->identity = val;
        } else {
            return die("--object %s: unknown property '%s'", type_name, key);
        }
    }
    if (!ob->id || !ob->id[0]) {
        return die("--object %s: id= is required", type_name);
    }
    for (int i = 0; i < o->n_objects; i++) {
        if (strcmp(o->objects[i].id, ob->id) == 0) {
            return die("--object: id '%s' is used twice", ob->id);
        }
    }
    if (ob->type == OBJ_AUTHZ_SIMPLE) {
        if (!ob->identity) {
            return die("--object authz-simple,id=%s: identity= is required",
                       ob->id);
        }
    } else {
        if (!ob->dir || !ob->dir[0]) {
            return die("--object %s,id=%s: dir= is required", type_name,
                       ob->id);
        }
    }
    o->n_objects++;
    return 0;
}

static const struct object_arg *find_object(const struct options *o,
                                            const char *id)
{
    for (int i = 0; i < o->n_objects; i++) {
        if (strcmp(o->objects[i].id, id) == 0) {
            return &o->objects[i];
        }
    }
    return NULL;
}

/* The credential objects suit what prl-nbd is to do: serve (endpoint=
 * server; QEMU's default is client, which a server cannot use) or list
 * a server's exports (-L: endpoint=client). */
static int check_endpoints(const struct options *o)
{
    for (int i = 0; i < o->n_objects; i++) {
        const struct object_arg *ob = &o->objects[i];
        const char *type =
            ob->type == OBJ_TLS_X509 ? "tls-creds-x509" : "tls-creds-psk";
        bool server = ob->endpoint && strcmp(ob->endpoint, "server") == 0;

        if (ob->type == OBJ_AUTHZ_SIMPLE) {
            continue;
        }
        if (!o->list && !server) {
            return die("--object %s,id=%s: prl-nbd needs endpoint=server%s%s",
                       type, ob->id, ob->endpoint ? ", not " : "",
                       ob->endpoint ? ob->endpoint : "");
        }
        if (o->list && server) {
            return die("--object %s,id=%s: -L connects to a server: it "
                       "needs endpoint=client",
                       type, ob->id);
        }
        if (server && ob->username) {
            return die("--object %s,id=%s: username= is for client "
                       "endpoints; a server takes every user in keys.psk "
                       "(restrict them with --tls-authz)",
                       type, ob->id);
        }
    }
    return 0;
}

/* -L: where to connect, from the URI argument or -k / -b / -p and the
 * client credentials of --tls-creds, into *u. */
static int list_target(const struct options *o, struct prl_nbd_uri *u)
{
    const struct object_arg *ob =
        o->tls_creds ? find_object(o, o->tls_creds) : NULL;

    memset(u, 0, sizeof(*u));
    if (o->list_uri) {
        if (prl_nbd_uri_parse(o->list_uri, u) < 0) {
            return die("%s", prl_error_message());
        }
        return 0;
    }
    u->tls_verify_peer = -1;
    if (o->n_unix > 0) {
        u->is_unix = true;
        u->socket = strdup(o->unix_paths[0]);
        u->socket_len = strlen(o->unix_paths[0]);
    } else {
        u->host = strdup(o->bind ? o->bind : "localhost");
        u->port = strdup(o->port ? o->port : PRL_NBD_DEFAULT_PORT);
    }
    u->export_name = strdup("");
    if (ob) {
        u->tls = true;
        u->tls_hostname = o->tls_hostname ? strdup(o->tls_hostname) : NULL;
        if (ob->type == OBJ_TLS_X509) {
            u->tls_type = PRL_NBD_URI_TLS_X509;
            u->tls_certificates = strdup(ob->dir);
            u->tls_verify_peer = ob->verify_peer ? 1 : 0;
        } else {
            u->tls_type = PRL_NBD_URI_TLS_PSK;
            if (asprintf(&u->tls_psk_file, "%s/keys.psk", ob->dir) < 0) {
                u->tls_psk_file = NULL;
            }
            /* QEMU's default PSK identity. */
            u->user = strdup(ob->username ? ob->username : "qemu");
        }
    }
    if (!u->export_name || (u->is_unix ? !u->socket : !u->host || !u->port) ||
        (ob && (ob->type == OBJ_TLS_X509 ? !u->tls_certificates
                                         : !u->tls_psk_file || !u->user))) {
        prl_nbd_uri_free(u);
        return die("out of memory");
    }
    return 0;
}

enum {
    OPT_FORK = 256,
    OPT_PID_FILE,
    OPT_DISCARD,
    OPT_EXPORT,
    OPT_MAX_CONN,
    OPT_LOG,
    OPT_HANDSHAKE,
    OPT_THREADS,
    OPT_POLL,
    OPT_MIN_BLOCK,
    OPT_UNIX,
    OPT_EXTERNAL,
    OPT_OBJECT,
    OPT_TLS_CREDS,
    OPT_TLS_AUTHZ,
    OPT_TLS_HOSTNAME,
};

static const struct option long_opts[] = {
    {"format", required_argument, NULL, 'f'},
    {"read-only", no_argument, NULL, 'r'},
    {"export-name", required_argument, NULL, 'x'},
    {"description", required_argument, NULL, 'D'},
    {"bitmap", required_argument, NULL, 'B'},
    {"allocation-depth", no_argument, NULL, 'A'},
    {"port", required_argument, NULL, 'p'},
    {"bind", required_argument, NULL, 'b'},
    {"socket", required_argument, NULL, 'k'},
    {"unix", required_argument, NULL, OPT_UNIX},
    {"shared", required_argument, NULL, 'e'},
    {"persistent", no_argument, NULL, 't'},
    {"single", no_argument, NULL, 's'},
    {"fork", no_argument, NULL, OPT_FORK},
    {"pid-file", required_argument, NULL, OPT_PID_FILE},
    {"discard", required_argument, NULL, OPT_DISCARD},
    {"export", required_argument, NULL, OPT_EXPORT},
    {"max-connections", required_argument, NULL, OPT_MAX_CONN},
    {"log", required_argument, NULL, OPT_LOG},
    {"handshake-limit", required_argument, NULL, OPT_HANDSHAKE},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"poll-max-ns", required_argument, NULL, OPT_POLL},
    {"min-block-size", required_argument, NULL, OPT_MIN_BLOCK},
    {"allow-external-files", no_argument, NULL, OPT_EXTERNAL},
    {"object", required_argument, NULL, OPT_OBJECT},
    {"tls-creds", required_argument, NULL, OPT_TLS_CREDS},
    {"tls-authz", required_argument, NULL, OPT_TLS_AUTHZ},
    {"tls-hostname", required_argument, NULL, OPT_TLS_HOSTNAME},
    {"list", no_argument, NULL, 'L'},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* 0 to go on, 1 for an error (printed), -1 for a clean early exit. */
static int parse_args(struct options *o, int argc, char **argv)
{
    int c;

    o->cfg.shared = 1;
    o->cfg.handshake_limit = 10;
    o->cfg.poll_max_ns = DEFAULT_POLL_NS;
    while ((c = getopt_long(argc, argv, "f:rx:D:AB:p:b:k:e:tsLvhV", long_opts,
                            NULL)) != -1) {
        unsigned v;

        switch (c) {
        case 'f':
            o->format = optarg;
            break;
        case 'r':
            o->read_only = true;
            break;
        case 'x':
            o->export_name = optarg;
            break;
        case 'D':
            o->description = optarg;
            break;
        case 'A':
            o->alloc_depth = true;
            break;
        case 'B':
            if (add_bitmap_arg(o, NULL, optarg) != 0) {
                return 1;
            }
            break;
        case 'p':
            if (!parse_uint(optarg, 65535, &v) || v == 0) {
                return die("invalid port '%s'", optarg);
            }
            o->port = optarg;
            break;
        case 'b':
            o->bind = optarg;
            break;
        case 'k':
        case OPT_UNIX:
            if (o->n_unix == 16) {
                return die("too many Unix sockets");
            }
            o->unix_paths[o->n_unix++] = optarg;
            break;
        case 'e':
            if (!parse_uint(optarg, UINT_MAX, &o->cfg.shared)) {
                return die("invalid number of shared clients '%s'", optarg);
            }
            break;
        case 't':
            o->cfg.persistent = true;
            break;
        case 's':
            o->single = true;
            break;
        case OPT_FORK:
            o->fork = true;
            break;
        case OPT_PID_FILE:
            o->pid_file = optarg;
            break;
        case OPT_DISCARD:
            if (strcmp(optarg, "ignore") == 0 || strcmp(optarg, "off") == 0) {
                o->cfg.discard = PRL_NBD_DISCARD_IGNORE;
            } else if (strcmp(optarg, "unmap") == 0 ||
                       strcmp(optarg, "on") == 0) {
                o->cfg.discard = PRL_NBD_DISCARD_UNMAP;
            } else {
                return die("invalid --discard '%s' (ignore or unmap)", optarg);
            }
            break;
        case OPT_EXPORT:
            if (parse_export(o, optarg) != 0) {
                return 1;
            }
            break;
        case OPT_MAX_CONN:
            if (!parse_uint(optarg, UINT_MAX, &o->cfg.max_connections)) {
                return die("invalid --max-connections '%s'", optarg);
            }
            break;
        case OPT_LOG:
            if (strcmp(optarg, "syslog") == 0) {
                o->use_syslog = true;
            } else if (strcmp(optarg, "stderr") != 0) {
                return die("invalid --log '%s' (stderr or syslog)", optarg);
            }
            o->log_given = true;
            break;
        case OPT_HANDSHAKE:
            if (!parse_uint(optarg, 86400, &o->cfg.handshake_limit)) {
                return die("invalid --handshake-limit '%s'", optarg);
            }
            break;
        case OPT_THREADS:
            if (!parse_uint(optarg, 256, &o->cfg.workers) ||
                o->cfg.workers == 0) {
                return die("invalid --threads '%s' (1 to 256)", optarg);
            }
            break;
        case OPT_POLL:
            if (!parse_uint(optarg, MAX_POLL_NS, &v)) {
                return die("invalid --poll-max-ns '%s' (0 to %u)", optarg,
                           MAX_POLL_NS);
            }
            o->cfg.poll_max_ns = v;
            break;
        case OPT_EXTERNAL:
            o->open_flags |= PRL_OPEN_BUNDLE_EXTERNAL;
            break;
        case OPT_OBJECT:
            if (parse_object(o, optarg) != 0) {
                return 1;
            }
            break;
        case OPT_TLS_CREDS:
            o->tls_creds = optarg;
            break;
        case OPT_TLS_AUTHZ:
            o->tls_authz = optarg;
            break;
        case OPT_TLS_HOSTNAME:
            o->tls_hostname = optarg;
            break;
        case 'L':
            o->list = true;
            break;
        case OPT_MIN_BLOCK:
            if (!parse_uint(optarg, 65536, &o->cfg.min_block_size) ||
                (o->cfg.min_block_size & (o->cfg.min_block_size - 1))) {
                return die("invalid --min-block-size '%s' (a power of two "
                           "up to 65536)",
                           optarg);
            }
            break;
        case 'v':
            o->verbose++;
            break;
        case 'h':
            usage(stdout);
            return -1;
        case 'V':
            printf("prl-nbd %s\n", PRL_VERSION);
            return -1;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (check_endpoints(o) != 0) {
        return 1;
    }
    if (o->tls_creds) {
        const struct object_arg *ob = find_object(o, o->tls_creds);
        if (!ob || ob->type == OBJ_AUTHZ_SIMPLE) {
            return die("--tls-creds=%s: no tls-creds-x509 or tls-creds-psk "
                       "object with that id",
                       o->tls_creds);
        }
    }
    if (o->list) {
        if (optind < argc - 1) {
            return die("-L takes one NBD URI at most");
        }
        if (o->n_exports || o->export_name || o->description ||
            o->alloc_depth || o->n_bitmaps || o->single || o->fork ||
            o->tls_authz) {
            return die("-L lists a server's exports: no exports of its own, "
                       "-s, --fork or --tls-authz");
        }
        if (optind == argc - 1) {
            if (!prl_nbd_uri_is_nbd(argv[optind])) {
                return die("-L: '%s' is not an NBD URI (or give -k SOCKET, "
                           "-b ADDR, -p PORT)",
                           argv[optind]);
            }
            if (o->n_unix || o->bind || o->port || o->tls_creds) {
                return die("-L: the URI says where to connect and how; no "
                           "-k, -b, -p or --tls-creds with it");
            }
            o->list_uri = argv[optind];
        }
        if (o->n_unix > 1) {
            return die("-L connects to one socket");
        }
        return 0;
    }
    if (o->tls_hostname) {
        return die("--tls-hostname is for -L (the server's name to check)");
    }
    if (optind < argc - 1) {
        return die("one FILE at most; use --export for more");
    }
    if (optind == argc - 1) {
        if (o->n_exports == MAX_EXPORTS) {
            return die("too many exports");
        }
        /* FILE goes first: it is the default export. */
        memmove(&o->exports[1], &o->exports[0],
                (size_t)o->n_exports * sizeof(o->exports[0]));
        o->exports[0] = (struct export_arg){
            .name = (char *)(o->export_name ? o->export_name : ""),
            .file = argv[optind],
            .description = (char *)o->description,
            .format = (char *)o->format,
            .read_only = o->read_only,
            .alloc_depth = o->alloc_depth,
        };
        o->n_exports++;
        for (int i = 0; i < o->n_bitmaps; i++) {
            if (!o->bitmaps[i].export) {
                o->bitmaps[i].export = o->exports[0].name;
            }
        }
    } else if (o->export_name || o->description || o->alloc_depth) {
        return die("-x, -D and -A describe FILE, and no FILE was given");
    }
    for (int i = 0; i < o->n_bitmaps; i++) {
        if (!o->bitmaps[i].export) {
            return die("-B names a bitmap of FILE, and no FILE was given");
        }
    }
    if (o->n_exports == 0) {
        usage(stderr);
        return die("no image to serve: give FILE or --export");
    }
    if (o->single && (o->port || o->bind || o->n_unix || o->fork)) {
        return die("-s serves stdin/stdout: no -p, -b, -k or --fork");
    }
    if (o->tls_authz) {
        const struct object_arg *ob = find_object(o, o->tls_authz);
        if (!o->tls_creds) {
            return die("--tls-authz needs --tls-creds");
        }
        if (!ob || ob->type != OBJ_AUTHZ_SIMPLE) {
            return die("--tls-authz=%s: no authz-simple object with that id",
                       o->tls_authz);
        }
    }
    return 0;
}

/* Load every tls-creds object now, so that a missing file or a bad key
 * stops the server at start-up; *out gets the one --tls-creds names. */
static int load_tls(struct options *o, struct prl_nbd_tls **out)
{
    const struct object_arg *authz =
        o->tls_authz ? find_object(o, o->tls_authz) : NULL;

    *out = NULL;
    for (int i = 0; i < o->n_objects; i++) {
        const struct object_arg *ob = &o->objects[i];
        bool used = o->tls_creds && strcmp(ob->id, o->tls_creds) == 0;
        struct prl_nbd_tls_config cfg = {
            .type =
                ob->type == OBJ_TLS_X509 ? PRL_NBD_TLS_X509 : PRL_NBD_TLS_PSK,
            .dir = ob->dir,
            .verify_peer = ob->verify_peer,
            .sanity_check = ob->sanity_check,
            .priority = ob->priority,
            .authz_identity = used && authz ? authz->identity : NULL,
        };
        struct prl_nbd_tls *tls;

        if (ob->type == OBJ_AUTHZ_SIMPLE) {
            continue;
        }
        if (prl_nbd_tls_new_server(&cfg, &tls) < 0) {
            prl_nbd_tls_free(*out);
            *out = NULL;
            return die("--object id=%s: %s", ob->id, prl_error_message());
        }
        if (used) {
            *out = tls;
        } else {
            prl_nbd_tls_free(tls);
        }
    }
    return 0;
}

static void on_signal(int sig)
{
    if (the_server) {
        prl_nbd_server_stop(the_server);
    }
}

static int write_pid_file(const char *path, pid_t pid)
{
    FILE *f = fopen(path, "w");

    if (!f) {
        return die("cannot write pid file '%s': %s", path, strerror(errno));
    }
    fprintf(f, "%ld\n", (long)pid);
    if (fclose(f) != 0) {
        return die("cannot write pid file '%s': %s", path, strerror(errno));
    }
    return 0;
}

/* Socket activation: the listening sockets systemd passed, if any. */
static int activation_fds(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    unsigned n, p;

    if (!pid || !fds || !parse_uint(pid, UINT_MAX, &p) ||
        (pid_t)p != getpid() || !parse_uint(fds, 64, &n)) {
        return 0;
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return (int)n;
}

static int setup_listeners(struct options *o, struct prl_nbd_server *srv)
{
    int n_act = activation_fds();
    int r;

    if (n_act > 0) {
        if (o->port || o->bind || o->n_unix) {
            return die("socket activation: -p, -b and -k cannot be used");
        }
        for (int i = 0; i < n_act; i++) {
            r = prl_nbd_server_listen_fd(srv, 3 + i);
            if (r < 0) {
                return die("%s", prl_error_message());
            }
        }
        return 0;
    }
    for (int i = 0; i < o->n_unix; i++) {
        r = prl_nbd_server_listen_unix(srv, o->unix_paths[i]);
        if (r < 0) {
            return die("%s", prl_error_message());
        }
    }
    if (o->n_unix == 0 || o->port || o->bind) {
        r = prl_nbd_server_listen_tcp(srv, o->bind ? o->bind : "0.0.0.0",
                                      o->port ? o->port : DEFAULT_PORT);
        if (r < 0) {
            return die("%s", prl_error_message());
        }
    }
    return 0;
}

static int open_exports(struct options *o, struct prl_nbd_server *srv)
{
    for (int i = 0; i < o->n_exports; i++) {
        struct export_arg *e = &o->exports[i];
        struct prl_block *bs;
        const char *fmt = e->format ? e->format : o->format;
        int r;

        r = prl_block_open(e->file, fmt,
                           (e->read_only ? 0 : PRL_OPEN_RDWR) | o->open_flags,
                           &bs);
        if (r < 0) {
            return die("%s", prl_error_message());
        }
        r = prl_nbd_server_add_export(srv, e->name, e->description, bs);
        if (r == 0 && e->alloc_depth) {
            r = prl_nbd_server_export_depth(srv, e->name);
        }
        if (r < 0) {
            return die("%s", prl_error_message());
        }
    }
    for (int i = 0; i < o->n_bitmaps; i++) {
        int r = prl_nbd_server_add_bitmap(srv, o->bitmaps[i].export,
                                          o->bitmaps[i].name);
        if (r < 0) {
            return die("%s", prl_error_message());
        }
    }
    return 0;
}

/* Detach: the parent exits 0 once the child is set up to serve. */
static int daemonize(const char *pid_file, bool keep_stderr)
{
    pid_t pid = fork();
    int fd;

    if (pid < 0) {
        return die("fork: %s", strerror(errno));
    }
    if (pid > 0) {
        if (pid_file && write_pid_file(pid_file, pid) != 0) {
            kill(pid, SIGTERM);
            _exit(1);
        }
        _exit(0);
    }
    setsid();
    fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (!keep_stderr) {
            dup2(fd, 2);
        }
        if (fd > 2) {
            close(fd);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    struct prl_nbd_server *srv;
    struct prl_nbd_tls *tls = NULL;
    struct sigaction sa;
    enum prl_log_level level;
    int r;

    memset(&o, 0, sizeof(o));
    r = parse_args(&o, argc, argv);
    if (r != 0) {
        return r < 0 ? 0 : 1;
    }
    if (o.list) {
        struct prl_nbd_uri uri;
        if (list_target(&o, &uri) != 0) {
            return 1;
        }
        r = prl_nbd_list_exports(&uri);
        prl_nbd_uri_free(&uri);
        return r;
    }
    log_syslog = o.use_syslog;
    if (log_syslog) {
        openlog("prl-nbd", LOG_PID, LOG_DAEMON);
    }
    level = o.verbose >= 2   ? PRL_LOG_DEBUG
            : o.verbose == 1 ? PRL_LOG_INFO
                             : PRL_LOG_WARNING;
    prl_log_set_handler(log_handler, NULL, level);

    if (load_tls(&o, &tls) != 0) {
        return 1;
    }
    o.cfg.tls = tls;
    r = prl_nbd_server_new(&o.cfg, &srv);
    if (r < 0) {
        prl_nbd_tls_free(tls);
        return die("%s", prl_error_message());
    }
    if (open_exports(&o, srv) != 0 ||
        (!o.single && setup_listeners(&o, srv) != 0)) {
        prl_nbd_server_free(srv);
        prl_nbd_tls_free(tls);
        return 1;
    }
    if (o.fork) {
        if (daemonize(o.pid_file, o.log_given && !o.use_syslog) != 0) {
            prl_nbd_server_free(srv);
            prl_nbd_tls_free(tls);
            return 1;
        }
    } else if (o.pid_file && write_pid_file(o.pid_file, getpid()) != 0) {
        prl_nbd_server_free(srv);
        prl_nbd_tls_free(tls);
        return 1;
    }

    the_server = srv;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    if (o.single) {
        r = prl_nbd_server_serve_fds(srv, 0, 1);
    } else {
        r = prl_nbd_server_run(srv);
    }
    if (r < 0) {
        fprintf(stderr, "prl-nbd: %s\n", prl_error_message());
    }
    the_server = NULL;
    if (prl_nbd_server_free(srv) < 0) {
        fprintf(stderr, "prl-nbd: %s\n", prl_error_message());
        r = -1;
    }
    prl_nbd_tls_free(tls); /* after the last session made from it */
    if (o.pid_file) {
        unlink(o.pid_file); /* the images are closed: the server is gone */
    }
    return r < 0 ? 1 : 0;
}
