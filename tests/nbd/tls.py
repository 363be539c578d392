# SPDX-License-Identifier: MIT
"""TLS from python: libnbd's binding with set_tls(TLS_REQUIRE), X.509
(set_tls_certificates) and PSK (set_tls_psk_file, set_tls_username) for
reads, writes, flush, zero, trim, block status, many requests in flight
and two connections at once, also over -s (the server as a command); and
a raw client from the spec that checks FORCEDTLS before STARTTLS (every
option but ABORT refused with ERR_TLS_REQD, EXPORT_NAME hung up on),
STARTTLS with data and STARTTLS twice, garbage or silence instead of a
ClientHello, and a client certificate of another CA, with the server
serving a good client afterwards and no refused write landing."""

import os
import socket
import ssl
import struct
import subprocess

from nbdtest import *  # noqa: F401,F403

try:
    import nbd
except ImportError:
    skip('python module nbd (libnbd) is not installed')

requires('certtool', 'psktool')

SIZE = 16 << 20
HERE = os.path.dirname(os.path.abspath(__file__))


def creds():
    d = path('creds')
    subprocess.run([os.path.join(HERE, 'lib', 'make-tls-creds'), d],
                   check=True)
    return d


def x509_args(c, *extra):
    return ['--object',
            'tls-creds-x509,id=tls0,dir=%s/server,endpoint=server' % c,
            '--tls-creds=tls0'] + list(extra)


def psk_args(c):
    return ['--object',
            'tls-creds-psk,id=tls0,dir=%s/psk,endpoint=server' % c,
            '--tls-creds=tls0']


def x509_handle(c, sub='client'):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(os.path.join(c, sub))
    h.add_meta_context('base:allocation')
    return h


def psk_handle(c, user='alice', sub='psk'):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(os.path.join(c, sub, 'keys.psk'))
    h.set_tls_username(user)
    h.add_meta_context('base:allocation')
    return h


def exercise(h, img, base):
    """Commands through TLS, checked against the file behind the
    export."""
    check(h.get_tls_negotiated(), 'TLS not negotiated')
    check(h.get_size() == SIZE, 'size %d' % h.get_size())
    data = os.urandom(3 << 20)
    h.pwrite(data, base)
    h.pwrite(data[:4096], base + (4 << 20), nbd.CMD_FLAG_FUA)
    h.flush()
    check(file_bytes(img, base, len(data)) == data, 'write not in the file')
    check(h.pread(len(data), base) == data, 'read back')
    # Lengths that are not multiples of a TLS record.
    for off, n in ((base + 1, 100000), (base + 16383, 16385), (base, 17)):
        check(h.pread(n, off) == data[off - base:off - base + n],
              'read %d at %d' % (n, off))
    h.zero(65536, base)
    h.trim(65536, base + 65536)
    check(h.pread(131072, base)[:65536] == bytes(65536), 'zeroed')
    got = []

    def cb(ctx, off, entries, err):
        if ctx == 'base:allocation':
            got.extend(entries)
    h.block_status(1 << 20, base, cb)
    check(got and sum(got[0::2]) > 0, 'block status %r' % got)

    # Many requests in flight, of mixed sizes, reads and writes.
    bufs = {}
    cookies = []
    for i in range(24):
        off = base + (7 << 19) + i * (192 << 10)
        n = (i % 5 + 1) * 37000
        if i % 3 == 0:
            b = os.urandom(n)
            bufs[off] = b
            cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(
                bytearray(b)), off))
        else:
            cookies.append(h.aio_pread(nbd.Buffer(n), off))
    check(h.aio_in_flight() > 1, 'nothing in flight')
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for ck in cookies:
        check(h.aio_command_completed(ck), 'request %d not done' % ck)
    for off, b in bufs.items():
        check(h.pread(len(b), off) == b, 'aio write at %d' % off)


def multi_conn(c, connect, img):
    """Two connections: a write flushed on one is read on the other."""
    a, b = x509_handle(c), x509_handle(c)
    connect(a)
    connect(b)
    check(a.can_multi_conn(), 'multi-conn')
    data = os.urandom(1 << 20)
    a.pwrite(data, 12 << 20)
    a.flush()
    check(b.pread(1 << 20, 12 << 20) == data, 'write seen by the other')
    a.shutdown()
    b.shutdown()


def connect_raw(srv):
    cl = Client(srv.sock)
    cl.greet()
    return cl


def closed(sock, timeout=10):
    """True when the peer hangs up (end of stream, reset, TLS alert)."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


def ssl_context(c, sub):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(os.path.join(c, 'server', 'ca-cert.pem'))
    ctx.load_cert_chain(os.path.join(c, sub, 'client-cert.pem'),
                        os.path.join(c, sub, 'client-key.pem'))
    return ctx


def forced_tls(c, srv, img):
    before = file_bytes(img)

    # Before STARTTLS: ERR_TLS_REQD for every option but ABORT.
    cl = connect_raw(srv)
    info = cl.info_data(b'', (INFO_BLOCK_SIZE,))
    for opt, data in ((OPT_GO, info), (OPT_INFO, info), (OPT_LIST, b''),
                      (OPT_STRUCTURED, b''), (OPT_EXTENDED, b''),
                      (OPT_SET_META, cl.meta_data(b'', [b'base:allocation'])),
                      (OPT_LIST_META, cl.meta_data(b'', [])), (99, b'xyz')):
        t, msg = cl.simple_opt(opt, data)
        check(t == REP_ERR_TLS_REQD, 'option %d before STARTTLS: %x %r' %
              (opt, t, msg))
    # An oversized option is drained and refused the same way.
    cl.opt(OPT_GO, bytes(70000))
    t, _ = cl.reply(OPT_GO)
    check(t == REP_ERR_TLS_REQD, 'oversized GO: %x' % t)
    t, _ = cl.simple_opt(OPT_STARTTLS, b'zz')
    check(t == REP_ERR_INVALID, 'STARTTLS with data: %x' % t)
    t, _ = cl.simple_opt(OPT_ABORT)
    check(t == REP_ACK, 'ABORT: %x' % t)
    check(cl.is_closed(), 'open after ABORT')
    cl.close()

    # EXPORT_NAME cannot be refused: the server hangs up, sending nothing.
    cl = connect_raw(srv)
    cl.opt(OPT_EXPORT_NAME, b'')
    cl.s.settimeout(10)
    try:
        rest = cl.s.recv(1024)
    except ConnectionResetError:
        rest = b''
    check(rest == b'', 'EXPORT_NAME before STARTTLS got %r' % rest)
    cl.close()

    # Garbage instead of a ClientHello.
    cl = connect_raw(srv)
    t, _ = cl.simple_opt(OPT_STARTTLS)
    check(t == REP_ACK, 'STARTTLS: %x' % t)
    cl.send(b'GET / HTTP/1.0\r\n\r\n' + os.urandom(2000))
    check(cl.is_closed(), 'server kept a connection that sent garbage')
    cl.close()

    # A client certificate the server's CA did not issue, sent anyway
    # (OpenSSL offers it whatever CAs the server names).
    cl = connect_raw(srv)
    check(cl.simple_opt(OPT_STARTTLS)[0] == REP_ACK, 'STARTTLS')
    try:
        s = ssl_context(c, 'otherclient').wrap_socket(cl.s)
        s.sendall(struct.pack('>QII', MAGIC_OPTS, OPT_LIST, 0))
        check(closed(s), 'server kept a client of another CA')
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    cl.close()

    # A good client over python's ssl, in TLS 1.2 (libnbd and QEMU use
    # 1.3): STARTTLS twice is invalid, then options and data as usual.
    cl = connect_raw(srv)
    check(cl.simple_opt(OPT_STARTTLS)[0] == REP_ACK, 'STARTTLS')
    ctx = ssl_context(c, 'client')
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    cl.s = ctx.wrap_socket(cl.s)
    check(cl.s.version() == 'TLSv1.2', 'python ssl used %s' % cl.s.version())
    t, msg = cl.simple_opt(OPT_STARTTLS)
    check(t == REP_ERR_INVALID, 'second STARTTLS: %x %r' % (t, msg))
    cl.opt(OPT_LIST)
    out = cl.replies(OPT_LIST)
    check(out[-1][0] == REP_ACK and out[0][0] == REP_SERVER,
          'LIST over TLS %r' % out)
    check(cl.simple_opt(OPT_STRUCTURED)[0] == REP_ACK, 'structured')
    cl.structured = True
    cl.go()
    r = cl.cmd(CMD_READ, 0, 65536)
    check(r.error == 0 and r.data == file_bytes(img, 0, 65536),
          'read over python ssl')
    cl.request(CMD_DISC)
    check(closed(cl.s), 'not closed after DISC')
    cl.close()

    log = srv.stderr()
    for why in ('NBD_OPT_EXPORT_NAME without TLS', 'TLS handshake failed',
                'client certificate refused', 'TLS1.2) established'):
        check(why in log, 'no log line with %r:\n%s' % (why, log))
    check(file_bytes(img) == before, 'the image changed')


def handshake_limit(c, img):
    """Silence after STARTTLS's ACK: the handshake limit ends it."""
    with Server('-v', '-t', '--handshake-limit=1', *x509_args(c), img) as srv:
        cl = connect_raw(srv)
        check(cl.simple_opt(OPT_STARTTLS)[0] == REP_ACK, 'STARTTLS')
        check(cl.is_closed(timeout=30), 'silent TLS client not dropped')
        cl.close()
        # Half a ClientHello, then silence: the same.
        cl = connect_raw(srv)
        check(cl.simple_opt(OPT_STARTTLS)[0] == REP_ACK, 'STARTTLS')
        cl.send(bytes([22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3]))
        check(cl.is_closed(timeout=30), 'stalled ClientHello not dropped')
        cl.close()
        h = x509_handle(c)
        h.connect_unix(srv.sock)
        check(h.pread(4096, 0) == file_bytes(img, 0, 4096), 'good client')
        h.shutdown()
    check('took too long' in srv.stderr(), 'no time-limit log line')


def stop_with_tls_clients(c, img):
    """SIGTERM with one TLS client in transmission and one silent after
    STARTTLS's ACK (no handshake limit): both end, the server exits 0."""
    srv = Server('-v', '-t', '-e', '0', '--handshake-limit=0', *x509_args(c),
                 img)
    h = x509_handle(c)
    h.connect_unix(srv.sock)
    h.pwrite(b'x' * 4096, 0)
    cl = connect_raw(srv)
    check(cl.simple_opt(OPT_STARTTLS)[0] == REP_ACK, 'STARTTLS')
    srv.stop()
    check(cl.is_closed(), 'silent TLS client kept after the stop')
    cl.close()
    try:
        h.pread(4096, 0)
        raise Failure('read after the server stopped')
    except nbd.Error:
        pass
    check(file_bytes(img, 0, 4096) == b'x' * 4096, 'write lost at stop')


def test():
    c = creds()
    img = make_raw('disk.img', SIZE)

    with Server('-v', '-t', '-e', '0', *x509_args(c), img) as srv:
        h = x509_handle(c)
        h.connect_unix(srv.sock)
        exercise(h, img, 0)
        h.shutdown()
        multi_conn(c, lambda hh: hh.connect_unix(srv.sock), img)
        forced_tls(c, srv, img)
        # Still serving after all of that.
        h = x509_handle(c)
        h.connect_unix(srv.sock)
        check(h.pread(4096, 0) == file_bytes(img, 0, 4096), 'after refusals')
        h.shutdown()
        # A handle that does not trust the server's CA fails.
        h = x509_handle(c, 'otherca')
        try:
            h.connect_unix(srv.sock)
            raise Failure('connected trusting another CA')
        except nbd.Error:
            pass

    with Server('-v', '-t', '-e', '0', *psk_args(c), img) as srv:
        h = psk_handle(c)
        h.connect_unix(srv.sock)
        exercise(h, img, 8 << 20)
        h.shutdown()
        for user, sub, why in (('alice', 'psk-wrong', 'wrong key'),
                               ('bob', 'psk-bob', "unknown PSK user 'bob'")):
            h = psk_handle(c, user, sub)
            try:
                h.connect_unix(srv.sock)
                raise Failure('PSK %s/%s connected' % (user, sub))
            except nbd.Error:
                pass
            check(why in srv.stderr(), 'no log line %r' % why)

    # -s: TLS over the pipes of a server run as a command.
    h = psk_handle(c)
    h.connect_command([PRL_NBD, '-s'] + psk_args(c) + [img])
    exercise(h, img, 4 << 20)
    h.shutdown()

    handshake_limit(c, img)
    stop_with_tls_clients(c, img)


main(test)
