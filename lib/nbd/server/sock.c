/* SPDX-License-Identifier: MIT */
/* The plain socket layer: whole sends with writev semantics (and from a
 * file with sendfile), receives that a server stop can interrupt, for
 * sockets and for pipes (-s). */
#include "nbd/server/internal.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

/* Try to receive without sleeping until |t0| + poll_ns.  The count, 0 at
 * end of stream, -EAGAIN when nothing came in time, or a negative
 * errno. */
static ssize_t poll_recv(struct prl_nbd_sock *s, void *buf, size_t len,
                         int64_t t0)
{
    for (;;) {
        ssize_t n = recv(s->rfd, buf, len, MSG_DONTWAIT);

        if (n >= 0) {
            return n;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return -errno;
        }
        if (prl_mono_ns() - t0 >= s->poll_ns) {
            return -EAGAIN;
        }
    }
}

/* After a receive that waited |waited| ns: keep a running average of
 * the waits (each capped, so that one idle minute does not outweigh a
 * busy stretch for long) and poll, with the whole budget, while it is
 * within the budget. */
static void poll_adapt(struct prl_nbd_sock *s, int64_t waited)
{
    waited = PRL_MIN(waited, PRL_NBD_POLL_WAIT_CAP * s->poll_max_ns);
    s->poll_avg += (waited - s->poll_avg) / 8;
    s->poll_ns = s->poll_avg <= s->poll_max_ns ? s->poll_max_ns : 0;
}

/* A large payload is received in pieces of at most this much, each
 * taken at one wake-up. */
#define LOWAT_CHUNK (1u << 20)

static bool set_rcvlowat(struct prl_nbd_sock *s, int bytes)
{
    if (s->rcvlowat != bytes && setsockopt(s->rfd, SOL_SOCKET, SO_RCVLOWAT,
                                           &bytes, sizeof(bytes)) != 0) {
        return false;
    }
    s->rcvlowat = bytes;
    return true;
}

/*
 * Receive |len| bytes whole from a TCP socket.  recv(MSG_WAITALL) wakes
 * for every segment that comes in (16 a MiB on loopback, hundreds on a
 * network), each a context switch on both sides; with SO_RCVLOWAT the
 * kernel wakes the reader once a piece has come in whole.  The waiting
 * is done by poll(), as a blocking recv() that took part of a piece would
 * then wait for a whole low-water mark more.  Poll also wakes at end of
 * stream, on shutdown and when the receive buffer is nearly full, so
 * nothing waits for data that cannot come.  The count (less than |len|
 * at end of stream), or a negative errno.
 */
static ssize_t lowat_recv(struct prl_nbd_sock *s, uint8_t *buf, size_t len)
{
    size_t got = 0;
    ssize_t r = 0;

    while (got < len) {
        struct pollfd pfd = {.fd = s->rfd, .events = POLLIN};
        ssize_t n = recv(s->rfd, buf + got, len - got, MSG_DONTWAIT);

        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0) {
            break;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            r = -errno;
            break;
        }
        if (!set_rcvlowat(s, (int)PRL_MIN(len - got, LOWAT_CHUNK))) {
            /* No mark: wait the usual way. */
            n = recv(s->rfd, buf + got, len - got, MSG_WAITALL);
            if (n > 0) {
                got += (size_t)n;
            } else if (n == 0) {
                break;
            } else if (errno != EINTR) {
                r = -errno;
                break;
            }
            continue;
        }
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR) {
            r = -errno;
            break;
        }
    }
    if (!set_rcvlowat(s, 1) && r == 0) {
        r = -errno; /* later receives would wait for too much */
    }
    return r < 0 ? r : (ssize_t)got;
}

static ssize_t plain_recv(struct prl_nbd_sock *s, void *buf, size_t len,
                          bool all)
{
    bool polled = s->poll_max_ns > 0 && s->is_socket && !all;
    int64_t t0 = 0;

    if (all && s->r_tcp) {
        return lowat_recv(s, buf, len);
    }
    if (polled) {
        t0 = prl_mono_ns();
        s->poll_recvs++;
        if (s->poll_ns > 0) {
            ssize_t n = poll_recv(s, buf, len, t0);
            s->poll_spins++;
            if (n > 0) {
                s->poll_hits++;
                poll_adapt(s, prl_mono_ns() - t0);
            }
            if (n != -EAGAIN) {
                return n;
            }
        }
    }
    for (;;) {
        ssize_t n;

        if (atomic_load_explicit(&s->down, memory_order_relaxed) &&
            !s->is_socket) {
            return 0;
        }
        if (!s->is_socket && s->wake_fd >= 0) {
            /* A pipe cannot be shut down: wait for data or the stop. */
            struct pollfd pfd[2] = {
                {.fd = s->rfd, .events = POLLIN},
                {.fd = s->wake_fd, .events = POLLIN},
            };
            if (poll(pfd, 2, -1) < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return -errno;
            }
            if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) &&
                (pfd[1].revents & POLLIN)) {
                return 0;
            }
        }
        n = s->is_socket ? recv(s->rfd, buf, len, all ? MSG_WAITALL : 0)
                         : read(s->rfd, buf, len);
        if (n >= 0) {
            if (polled && n > 0) {
                poll_adapt(s, prl_mono_ns() - t0);
            }
            return n;
        }
        if (errno != EINTR) {
            return -errno;
        }
    }
}

/* Send |iov| whole; |more|: MSG_MORE, more of the message follows. */
static int plain_sendv_flags(struct prl_nbd_sock *s, struct iovec *iov,
                             int iovcnt, bool more)
{
    while (iovcnt > 0) {
        struct msghdr msg = {
            .msg_iov = iov,
            .msg_iovlen = (size_t)(iovcnt > IOV_MAX ? IOV_MAX : iovcnt),
        };
        ssize_t n = s->w_socket ? sendmsg(s->wfd, &msg,
                                          MSG_NOSIGNAL | (more ? MSG_MORE : 0))
                                : writev(s->wfd, iov, (int)msg.msg_iovlen);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        /* Skip what was sent; a partial vector is advanced in place. */
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

static int plain_sendv(struct prl_nbd_sock *s, struct iovec *iov, int iovcnt)
{
    return plain_sendv_flags(s, iov, iovcnt, false);
}

static int plain_sendfile(struct prl_nbd_sock *s, struct iovec *iov, int iovcnt,
                          int fd, uint64_t off, uint64_t len, bool more)
{
    off_t pos = (off_t)off;
    int r = plain_sendv_flags(s, iov, iovcnt, len > 0 || more);

    if (r < 0) {
        return r;
    }
    while (len > 0) {
        /* sendfile(2) moves at most 0x7ffff000 bytes a call. */
        size_t n = (size_t)PRL_MIN(len, (uint64_t)1 << 30);
        ssize_t got;

        got = sendfile(s->wfd, fd, &pos, n);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (got == 0) {
            return -ENODATA; /* the file is shorter than block status said */
        }
        len -= (uint64_t)got;
    }
    return 0;
}

static size_t plain_pending(struct prl_nbd_sock *s)
{
    return 0;
}

static void plain_shutdown_read(struct prl_nbd_sock *s)
{
    atomic_store(&s->down, true);
    if (s->is_socket) {
        shutdown(s->rfd, SHUT_RD);
    }
}

static void plain_shutdown_all(struct prl_nbd_sock *s)
{
    atomic_store(&s->down, true);
    if (s->is_socket) {
        shutdown(s->rfd, SHUT_RDWR);
    }
    if (s->w_socket && s->wfd != s->rfd) {
        shutdown(s->wfd, SHUT_RDWR);
    }
}

static void plain_bye(struct prl_nbd_sock *s)
{
}

static void plain_close(struct prl_nbd_sock *s)
{
    if (s->owned) {
        close(s->rfd);
        if (s->wfd != s->rfd) {
            close(s->wfd);
        }
    }
    s->rfd = s->wfd = -1;
}

const struct prl_nbd_sock_ops prl_nbd_sock_plain_ops = {
    .recv = plain_recv,
    .sendv = plain_sendv,
    .sendfile = plain_sendfile,
    .pending = plain_pending,
    .shutdown_read = plain_shutdown_read,
    .shutdown_all = plain_shutdown_all,
    .bye = plain_bye,
    .close = plain_close,
};

/* What a descriptor is, for the choices the plain layer makes. */
enum sock_kind {
    SK_NONE,         /* not a socket (a pipe, -s) */
    SK_OTHER,        /* a Unix socket, or one not known to be TCP */
    SK_TCP,          /* TCP to another host (or a peer not known) */
    SK_TCP_LOOPBACK, /* TCP to this host's loopback address */
};

static bool loopback_peer(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) ||
               (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
                in6->sin6_addr.s6_addr[12] == 127);
    }
    return false;
}

static enum sock_kind sock_kind(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    int v;
    socklen_t len = sizeof(v);

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) != 0) {
        return SK_NONE;
    }
    len = sizeof(v);
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) != 0 ||
        v != IPPROTO_TCP) {
        return SK_OTHER;
    }
    if (getpeername(fd, (struct sockaddr *)&ss, &sslen) != 0) {
        return SK_TCP;
    }
    return loopback_peer(&ss) ? SK_TCP_LOOPBACK : SK_TCP;
}

void prl_nbd_sock_plain(struct prl_nbd_sock *s, int rfd, int wfd, bool owned,
                        int wake_fd)
{
    enum sock_kind rk = sock_kind(rfd);
    enum sock_kind wk = wfd == rfd ? rk : sock_kind(wfd);

    s->ops = &prl_nbd_sock_plain_ops;
    s->rfd = rfd;
    s->wfd = wfd;
    s->owned = owned;
    s->is_socket = rk != SK_NONE;
    s->r_tcp = rk == SK_TCP || rk == SK_TCP_LOOPBACK;
    s->rcvlowat = 1;
    s->w_socket = wk != SK_NONE;
    /*
     * sendfile(2) saves the copy into the socket on a Unix socket and on
     * TCP to another host.  On TCP loopback the receiver then copies out
     * of the page cache pages the packets point at, and that is slower
     * than two copies: fio sequential 1 MiB reads at iodepth 16, 4
     * rounds, 2137-2943 IOPS with sendfile, 2990-3246 without (Unix: 8491
     * with, 3741 for nbdkit's copies).
     */
    s->w_sendfile = s->w_socket && wk != SK_TCP_LOOPBACK;
    s->wake_fd = wake_fd;
    atomic_init(&s->down, false);
    s->opaque = NULL;
    s->poll_max_ns = 0;
    s->poll_ns = 0;
    s->poll_avg = 0;
    s->poll_recvs = s->poll_spins = s->poll_hits = 0;
}
