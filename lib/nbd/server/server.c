/* SPDX-License-Identifier: MIT */
/* The server object: exports, listening sockets, the accept loop with
 * its connection limits, a thread per connection, and a stop that lets
 * every connection finish what it started. */
#include "nbd/server/internal.h"
#include "common/util.h"
#include "prl/bitmap.h"
#include "prl/error.h"
#include "prl/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* After a stop, connections get this long to finish before their
 * sockets are cut. */
#define STOP_DRAIN_MS 30000
#define MAX_LISTENERS 64

struct prl_nbd_server {
    struct prl_nbd_server_config cfg;
    struct prl_nbd_export **exports;
    size_t n_exports;
    int listen_fds[MAX_LISTENERS];
    size_t n_listen;
    char *unix_paths[MAX_LISTENERS];
    size_t n_unix;
    int wake[2]; /* readable for good once stop was asked */
    int done[2]; /* a byte per connection that ended */
    atomic_bool stopping;

    pthread_mutex_t lock; /* protects what follows */
    struct prl_nbd_conn *conns;
    unsigned n_conns;
    unsigned served; /* connections ever accepted */
};

bool prl_nbd_server_stopping(const struct prl_nbd_server *srv)
{
    return atomic_load_explicit(&((struct prl_nbd_server *)srv)->stopping,
                                memory_order_relaxed);
}

const struct prl_nbd_server_config *
prl_nbd_server_cfg(const struct prl_nbd_server *srv)
{
    return &srv->cfg;
}

size_t prl_nbd_server_n_exports(const struct prl_nbd_server *srv)
{
    return srv->n_exports;
}

struct prl_nbd_export *prl_nbd_server_export(struct prl_nbd_server *srv,
                                             size_t i)
{
    return srv->exports[i];
}

struct prl_nbd_export *prl_nbd_server_find(struct prl_nbd_server *srv,
                                           const char *name)
{
    for (size_t i = 0; i < srv->n_exports; i++) {
        if (strcmp(srv->exports[i]->name, name) == 0) {
            return srv->exports[i];
        }
    }
    /* The empty name means the default export: the first one. */
    if (name[0] == '\0' && srv->n_exports > 0) {
        return srv->exports[0];
    }
    return NULL;
}

void prl_nbd_server_conn_set_sock(struct prl_nbd_conn *conn,
                                  const struct prl_nbd_sock_ops *ops,
                                  void *opaque)
{
    pthread_mutex_lock(&conn->srv->lock);
    conn->sock.opaque = opaque;
    conn->sock.ops = ops;
    pthread_mutex_unlock(&conn->srv->lock);
}

void prl_nbd_server_conn_log(const struct prl_nbd_conn *conn, const char *what)
{
    prl_info("%s: %s", conn->peer, what);
}

static int make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        return prl_error_errno(errno, "pipe");
    }
    return 0;
}

int prl_nbd_server_new(const struct prl_nbd_server_config *cfg,
                       struct prl_nbd_server **out)
{
    struct prl_nbd_server *srv;
    int r;

    *out = NULL;
    if (cfg->min_block_size != 0 && (!prl_is_power_of_2(cfg->min_block_size) ||
                                     cfg->min_block_size > 65536)) {
        return prl_error(EINVAL,
                         "minimum block size %u is not a power of "
                         "two up to 65536",
                         cfg->min_block_size);
    }
    srv = prl_calloc(1, sizeof(*srv));
    if (!srv) {
        return -ENOMEM;
    }
    srv->cfg = *cfg;
    pthread_mutex_init(&srv->lock, NULL);
    atomic_init(&srv->stopping, false);
    srv->wake[0] = srv->wake[1] = srv->done[0] = srv->done[1] = -1;
    r = make_pipe(srv->wake);
    if (r == 0) {
        r = make_pipe(srv->done);
    }
    if (r < 0) {
        prl_nbd_server_free(srv);
        return r;
    }
    *out = srv;
    return 0;
}

static void export_free(struct prl_nbd_export *exp)
{
    for (size_t i = 0; i < exp->n_bitmaps; i++) {
        prl_nbd_meta_bitmap_free(&exp->bitmaps[i]);
    }
    free(exp->bitmaps);
    free(exp->name);
    free(exp->description);
    pthread_mutex_destroy(&exp->lock);
    free(exp);
}

int prl_nbd_server_add_export(struct prl_nbd_server *srv, const char *name,
                              const char *description, struct prl_block *bs)
{
    struct prl_nbd_export *exp, **v;
    uint32_t pref;

    if (strlen(name) > PRL_NBD_MAX_STRING ||
        (description && strlen(description) > PRL_NBD_MAX_STRING)) {
        prl_block_close(bs);
        return prl_error(EINVAL,
                         "export name or description longer than "
                         "%u bytes",
                         PRL_NBD_MAX_STRING);
    }
    for (size_t i = 0; i < srv->n_exports; i++) {
        if (strcmp(srv->exports[i]->name, name) == 0) {
            prl_block_close(bs);
            return prl_error(EEXIST, "export name '%s' is used twice", name);
        }
    }
    exp = prl_calloc(1, sizeof(*exp));
    v = realloc(srv->exports, (srv->n_exports + 1) * sizeof(*v));
    if (!exp || !v) {
        free(exp);
        prl_block_close(bs);
        return prl_error(ENOMEM, "out of memory");
    }
    srv->exports = v;
    exp->name = strdup(name);
    exp->description =
        description && description[0] ? strdup(description) : NULL;
    pthread_mutex_init(&exp->lock, NULL);
    if (!exp->name || (description && description[0] && !exp->description)) {
        export_free(exp);
        prl_block_close(bs);
        return prl_error(ENOMEM, "out of memory");
    }
    exp->bs = bs;
    exp->size = prl_block_size(bs);
    exp->caps = prl_block_caps(bs);
    exp->read_only = !(exp->caps & PRL_CAP_WRITE);
    exp->serialize = !(exp->caps & PRL_CAP_PARALLEL);
    /* Every driver so far takes byte-granular requests. */
    exp->min_block = srv->cfg.min_block_size ? srv->cfg.min_block_size : 1;
    /* Preferred: the driver's size as a power of two, 512 .. max. */
    pref = prl_block_preferred_size(bs);
    if (pref < 512) {
        pref = 512;
    }
    while (!prl_is_power_of_2(pref)) {
        pref &= pref - 1;
    }
    exp->pref_block =
        PRL_MIN(PRL_MAX(pref, exp->min_block), PRL_NBD_MAX_PAYLOAD);
    srv->exports[srv->n_exports++] = exp;
    return 0;
}

int prl_nbd_server_add_bitmap(struct prl_nbd_server *srv,
                              const char *export_name, const char *bitmap)
{
    struct prl_nbd_export *exp = NULL;
    struct prl_bitmap_info *info = NULL;
    struct prl_nbd_meta_def *v;
    size_t n = 0, i;
    int r;

    for (i = 0; i < srv->n_exports; i++) {
        if (strcmp(srv->exports[i]->name, export_name) == 0) {
            exp = srv->exports[i];
        }
    }
    if (!exp) {
        return prl_error(ENOENT, "no export named '%s'", export_name);
    }
    r = prl_bitmap_list(exp->bs, &info, &n);
    if (r < 0) {
        return r;
    }
    for (i = 0; i < n && strcasecmp(info[i].name, bitmap) != 0; i++) {
    }
    if (i == n) {
        free(info);
        return prl_error(ENOENT, "image of export '%s' has no bitmap '%s'",
                         export_name, bitmap);
    }
    if (!info[i].consistent) {
        r = prl_error(EINVAL,
                      "bitmap '%s' of export '%s' is inconsistent (the image "
                      "was not closed cleanly); clear or remove it",
                      info[i].name, export_name);
        free(info);
        return r;
    }
    for (size_t j = 0; j < exp->n_bitmaps; j++) {
        if (strcmp(exp->bitmaps[j].bitmap, info[i].name) == 0) {
            free(info);
            return 0;
        }
    }
    /* The fixed contexts and every bitmap fit in one connection's
     * selection. */
    if (exp->n_bitmaps + 2 >= PRL_NBD_MAX_META) {
        free(info);
        return prl_error(E2BIG, "export '%s': more than %u bitmaps",
                         export_name, PRL_NBD_MAX_META - 2);
    }
    v = realloc(exp->bitmaps, (exp->n_bitmaps + 1) * sizeof(*v));
    if (!v) {
        free(info);
        return prl_error(ENOMEM, "out of memory");
    }
    exp->bitmaps = v;
    prl_nbd_meta_bitmap_def(&v[exp->n_bitmaps], info[i].name);
    free(info);
    if (!v[exp->n_bitmaps].name) {
        return prl_error(ENOMEM, "out of memory");
    }
    exp->n_bitmaps++;
    return 0;
}

int prl_nbd_server_export_depth(struct prl_nbd_server *srv,
                                const char *export_name)
{
    for (size_t i = 0; i < srv->n_exports; i++) {
        if (strcmp(srv->exports[i]->name, export_name) == 0) {
            srv->exports[i]->alloc_depth = true;
            return 0;
        }
    }
    return prl_error(ENOENT, "no export named '%s'", export_name);
}

static int add_listener(struct prl_nbd_server *srv, int fd)
{
    if (srv->n_listen == MAX_LISTENERS) {
        close(fd);
        return prl_error(EMFILE, "more than %d listening sockets",
                         MAX_LISTENERS);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    srv->listen_fds[srv->n_listen++] = fd;
    return 0;
}

int prl_nbd_server_listen_fd(struct prl_nbd_server *srv, int fd)
{
    return add_listener(srv, fd);
}

int prl_nbd_server_listen_tcp(struct prl_nbd_server *srv, const char *addr,
                              const char *port)
{
    struct addrinfo hints = {
        .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
    };
    struct addrinfo *res, *ai;
    int r, bound = 0, err = 0;

    r = getaddrinfo(addr, port, &hints, &res);
    if (r != 0) {
        return prl_error(EINVAL, "cannot resolve %s port %s: %s",
                         addr ? addr : "*", port, gai_strerror(r));
    }
    for (ai = res; ai; ai = ai->ai_next) {
        int one = 1;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, SOMAXCONN) < 0) {
            err = errno;
            close(fd);
            continue;
        }
        r = add_listener(srv, fd);
        if (r < 0) {
            freeaddrinfo(res);
            return r;
        }
        bound++;
    }
    freeaddrinfo(res);
    if (bound == 0) {
        return prl_error_errno(err ? err : EADDRNOTAVAIL,
                               "cannot listen on %s port %s", addr ? addr : "*",
                               port);
    }
    return 0;
}

int prl_nbd_server_listen_unix(struct prl_nbd_server *srv, const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    struct stat st;
    int fd, r;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        return prl_error(ENAMETOOLONG, "socket path '%s' is too long", path);
    }
    strcpy(sun.sun_path, path);
    /* A socket left by an earlier run is replaced; other files are not. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return prl_error_errno(errno, "socket");
    }
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
        listen(fd, SOMAXCONN) < 0) {
        r = prl_error_errno(errno, "cannot listen on '%s'", path);
        close(fd);
        return r;
    }
    r = add_listener(srv, fd);
    if (r == 0 && srv->n_unix < MAX_LISTENERS) {
        srv->unix_paths[srv->n_unix] = strdup(path);
        if (srv->unix_paths[srv->n_unix]) {
            srv->n_unix++;
        }
    }
    return r;
}

void prl_nbd_server_stop(struct prl_nbd_server *srv)
{
    char c = 0;
    ssize_t n;

    atomic_store(&srv->stopping, true);
    n = write(srv->wake[1], &c, 1); /* full pipe: already awake */
    (void)n;
}

static void peer_name(int fd, char *buf, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";

    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) {
        snprintf(buf, size, "client on fd %d", fd);
        return;
    }
    switch (ss.ss_family) {
    case AF_INET: {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        snprintf(buf, size, "%s:%u", host, ntohs(sin->sin_port));
        break;
    }
    case AF_INET6: {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        snprintf(buf, size, "[%s]:%u", host, ntohs(sin6->sin6_port));
        break;
    }
    default:
        snprintf(buf, size, "unix client (fd %d)", fd);
        break;
    }
}

static void *conn_main(void *opaque)
{
    struct prl_nbd_conn *conn = opaque;
    struct prl_nbd_server *srv = conn->srv;
    char c = 0;
    ssize_t wr;
    int r;

    prl_error_clear();
    r = prl_nbd_handshake(conn);
    if (r == 0) {
        char msg[PRL_NBD_MAX_STRING + 64];
        bool stop;

        pthread_mutex_lock(&srv->lock);
        conn->in_transmission = true;
        stop = prl_nbd_server_stopping(srv);
        pthread_mutex_unlock(&srv->lock);
        if (stop) {
            conn->sock.ops->shutdown_read(&conn->sock);
        }
        snprintf(msg, sizeof(msg), "serving export '%s'%s%s", conn->exp->name,
                 conn->extended     ? " (extended headers)"
                 : conn->structured ? " (structured replies)"
                                    : "",
                 conn->exp->read_only ? " read-only" : "");
        prl_nbd_server_conn_log(conn, msg);
        prl_nbd_transmit(conn);
        prl_nbd_server_conn_log(conn, conn->got_disc
                                          ? "disconnected"
                                          : "gone without NBD_CMD_DISC");
    } else if (r == -ECONNABORTED) {
        prl_debug("%s", prl_error_message());
    } else if (r == -EACCES) {
        /* A client refused by TLS or its authorization. */
        prl_warn("%s", prl_error_message());
    } else {
        prl_info("%s", prl_error_message());
    }
    conn->sock.ops->bye(&conn->sock);

    pthread_mutex_lock(&srv->lock);
    for (struct prl_nbd_conn **p = &srv->conns; *p; p = &(*p)->next) {
        if (*p == conn) {
            *p = conn->next;
            break;
        }
    }
    srv->n_conns--;
    conn->sock.ops->close(&conn->sock);
    pthread_mutex_destroy(&conn->read_lock);
    pthread_mutex_destroy(&conn->send_lock);
    free(conn);
    wr = write(srv->done[1], &c, 1);
    (void)wr;
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

/* Start serving |rfd|/|wfd| on a thread of its own. */
static int start_conn(struct prl_nbd_server *srv, int rfd, int wfd, bool owned)
{
    struct prl_nbd_conn *conn = calloc(1, sizeof(*conn));
    pthread_attr_t attr;
    pthread_t tid;
    int r;

    if (!conn) {
        return prl_error(ENOMEM, "out of memory");
    }
    conn->srv = srv;
    prl_nbd_sock_plain(&conn->sock, rfd, wfd, owned, srv->wake[0]);
    peer_name(rfd, conn->peer, sizeof(conn->peer));
    atomic_init(&conn->dead, false);
    pthread_mutex_init(&conn->read_lock, NULL);
    pthread_mutex_init(&conn->send_lock, NULL);

    pthread_mutex_lock(&srv->lock);
    conn->next = srv->conns;
    srv->conns = conn;
    srv->n_conns++;
    srv->served++;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    r = pthread_create(&tid, &attr, conn_main, conn);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        srv->conns = conn->next;
        srv->n_conns--;
        pthread_mutex_unlock(&srv->lock);
        pthread_mutex_destroy(&conn->read_lock);
        pthread_mutex_destroy(&conn->send_lock);
        free(conn);
        return prl_error(r, "cannot start a connection thread");
    }
    pthread_mutex_unlock(&srv->lock);
    prl_nbd_server_conn_log(conn, "connected");
    return 0;
}

/* Bytes asked for as the send buffer of an accepted Unix socket. */
#define UNIX_SNDBUF (4 << 20)

static void accept_one(struct prl_nbd_server *srv, int lfd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
    unsigned n;

    if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
            prl_warn("accept: %s", strerror(errno));
        }
        return;
    }
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
        int one = 1;
        /* Replies are written whole; never wait for an ACK to send. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    } else if (ss.ss_family == AF_UNIX) {
        /* A Unix socket's send buffer (about 200 KiB by default, no
         * autotuning) holds less than one 1 MiB read reply: each reply
         * then waits for the client several times.  With room for a
         * few, sequential reads ran 10-30% faster.  The kernel caps it
         * at net.core.wmem_max; TCP tunes its own (setting it there was
         * slower). */
        int size = UNIX_SNDBUF;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    }
    pthread_mutex_lock(&srv->lock);
    n = srv->n_conns;
    pthread_mutex_unlock(&srv->lock);
    if (srv->cfg.max_connections && n >= srv->cfg.max_connections) {
        char peer[80];
        peer_name(fd, peer, sizeof(peer));
        prl_warn("%s: refused: already %u connections (--max-connections)",
                 peer, n);
        close(fd);
        return;
    }
    if (start_conn(srv, fd, fd, true) < 0) {
        prl_warn("%s", prl_error_message());
        close(fd);
    }
}

/* Accept (when there are listeners) until stopped, then drain. */
static int serve_loop(struct prl_nbd_server *srv)
{
    struct pollfd pfd[MAX_LISTENERS + 2];
    int64_t cut_at = -1;
    bool cut = false, swept = false;

    for (;;) {
        unsigned n_conns, served;
        size_t n = 0;
        bool stopping = prl_nbd_server_stopping(srv);
        int timeout = -1;

        pthread_mutex_lock(&srv->lock);
        n_conns = srv->n_conns;
        served = srv->served;
        if (stopping && !swept) {
            /* No new requests; what is in flight gets answered. */
            for (struct prl_nbd_conn *c = srv->conns; c; c = c->next) {
                if (c->in_transmission) {
                    c->sock.ops->shutdown_read(&c->sock);
                }
            }
            swept = true;
            cut_at = prl_mono_ms() + STOP_DRAIN_MS;
        }
        if (stopping && !cut && prl_mono_ms() >= cut_at) {
            for (struct prl_nbd_conn *c = srv->conns; c; c = c->next) {
                c->sock.ops->shutdown_all(&c->sock);
            }
            cut = true;
        }
        pthread_mutex_unlock(&srv->lock);

        if (stopping && n_conns == 0) {
            return 0;
        }
        if (!stopping && !srv->cfg.persistent && served > 0 && n_conns == 0) {
            prl_info("last client left; exiting (use -t to keep serving)");
            return 0;
        }
        pfd[n++] = (struct pollfd){.fd = srv->done[0], .events = POLLIN};
        if (!stopping) {
            pfd[n++] = (struct pollfd){.fd = srv->wake[0], .events = POLLIN};
            if (srv->cfg.shared == 0 || n_conns < srv->cfg.shared) {
                for (size_t i = 0; i < srv->n_listen; i++) {
                    pfd[n++] = (struct pollfd){.fd = srv->listen_fds[i],
                                               .events = POLLIN};
                }
            }
        } else if (!cut) {
            timeout = (int)PRL_MAX(cut_at - prl_mono_ms(), (int64_t)0);
        }
        if (poll(pfd, (nfds_t)n, timeout) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return prl_error_errno(errno, "poll");
        }
        if (pfd[0].revents & POLLIN) {
            char buf[64];
            while (read(srv->done[0], buf, sizeof(buf)) > 0) {
            }
        }
        if (!stopping) {
            for (size_t i = 2; i < n; i++) {
                if (pfd[i].revents & POLLIN) {
                    accept_one(srv, pfd[i].fd);
                }
            }
        }
    }
}

int prl_nbd_server_run(struct prl_nbd_server *srv)
{
    if (srv->n_listen == 0) {
        return prl_error(EINVAL, "no socket to listen on");
    }
    return serve_loop(srv);
}

int prl_nbd_server_serve_fds(struct prl_nbd_server *srv, int rfd, int wfd)
{
    int r;

    srv->cfg.persistent = false;
    srv->cfg.shared = 1;
    r = start_conn(srv, rfd, wfd, false);
    if (r < 0) {
        return r;
    }
    return serve_loop(srv);
}

int prl_nbd_server_free(struct prl_nbd_server *srv)
{
    int ret = 0;

    if (!srv) {
        return 0;
    }
    for (size_t i = 0; i < srv->n_listen; i++) {
        close(srv->listen_fds[i]);
    }
    for (size_t i = 0; i < srv->n_unix; i++) {
        unlink(srv->unix_paths[i]);
        free(srv->unix_paths[i]);
    }
    for (size_t i = 0; i < srv->n_exports; i++) {
        int r = prl_block_close(srv->exports[i]->bs);
        if (r < 0 && ret == 0) {
            ret = prl_error_context(r, "closing export '%s'",
                                    srv->exports[i]->name);
        }
        export_free(srv->exports[i]);
    }
    free(srv->exports);
    for (int i = 0; i < 2; i++) {
        if (srv->wake[i] >= 0) {
            close(srv->wake[i]);
        }
        if (srv->done[i] >= 0) {
            close(srv->done[i]);
        }
    }
    if (srv->n_conns == 0) {
        pthread_mutex_destroy(&srv->lock);
    }
    free(srv);
    return ret;
}
