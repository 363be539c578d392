# SPDX-License-Identifier: MIT
"""For the NBD server tests: start prl-nbd captive, and a small NBD
client written from the protocol spec (compact, structured and extended
headers) for what libnbd 1.14 cannot do or refuses to send."""

import atexit
import os
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..', 'lib'))
from prltest import (BUILD, Failure, check, main, path, requires,  # noqa
                     run, skip, tmpdir, _SANITIZER)

PRL_NBD = os.path.join(BUILD, 'tools', 'prl-nbd', 'prl-nbd')

MAGIC_INIT = 0x4e42444d41474943
MAGIC_OPTS = 0x49484156454F5054
MAGIC_REP = 0x0003e889045565a9
MAGIC_REQ = 0x25609513
MAGIC_EXT_REQ = 0x21e41c71
MAGIC_SIMPLE = 0x67446698
MAGIC_STRUCT = 0x668e33ef
MAGIC_EXT = 0x6e8a278c

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS = 1, 2, 3, 4, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 6, 7, 8, 9, 10
OPT_EXTENDED = 11

REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = ERR | 1, ERR | 2, ERR | 3
REP_ERR_PLATFORM, REP_ERR_TLS_REQD, REP_ERR_UNKNOWN = ERR | 4, ERR | 5, ERR | 6
REP_ERR_SHUTDOWN, REP_ERR_BLOCK_SIZE_REQD = ERR | 7, ERR | 8
REP_ERR_TOO_BIG, REP_ERR_EXT_HEADER_REQD = ERR | 9, ERR | 10

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 5, 6, 7

F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO, F_PAYLOAD_LEN = (
    1, 2, 4, 8, 16, 32)

T_HAS_FLAGS, T_READ_ONLY, T_FLUSH, T_FUA = 1, 2, 4, 8
T_ROTATIONAL, T_TRIM, T_WRITE_ZEROES, T_DF = 16, 32, 64, 128
T_MULTI_CONN, T_RESIZE, T_CACHE, T_FAST_ZERO = 256, 512, 1024, 2048
T_BS_PAYLOAD = 4096

R_NONE, R_DATA, R_HOLE, R_BS, R_BS_EXT = 0, 1, 2, 5, 6
R_ERROR, R_ERROR_OFFSET = (1 << 15) | 1, (1 << 15) | 2
REPLY_DONE = 1

EPERM, EIO, ENOMEM, EINVAL, ENOSPC = 1, 5, 12, 22, 28
EOVERFLOW, ENOTSUP, ESHUTDOWN = 75, 95, 108


class Server:
    """prl-nbd started with |args| on a Unix socket of its own (unless
    the args name sockets themselves); stop() checks a clean exit."""

    def __init__(self, *args, sock=True, env=None, wait=True):
        self.sock = path('nbd-%d.sock' % id(self)) if sock else None
        self.log = path('nbd-%d.log' % id(self))
        argv = [PRL_NBD] + [str(a) for a in args]
        if sock:
            argv += ['-k', self.sock]
        if not os.access(PRL_NBD, os.X_OK):
            raise Failure('not built: ' + PRL_NBD)
        self.errf = open(self.log, 'wb')
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=self.errf, env=env)
        atexit.register(self.kill)
        if sock and wait:
            self.wait_ready()

    def wait_ready(self):
        for _ in range(200):
            if os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                raise Failure('prl-nbd exited %d: %s' %
                              (self.proc.returncode, self.stderr()))
            time.sleep(0.05)
        raise Failure('prl-nbd did not create ' + self.sock)

    @property
    def uri(self):
        return 'nbd+unix:///?socket=' + self.sock

    def uri_for(self, name):
        return 'nbd+unix:///%s?socket=%s' % (name, self.sock)

    def stderr(self):
        with open(self.log, 'rb') as f:
            return f.read().decode(errors='replace')

    def stop(self, want=0, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure('prl-nbd did not stop within %ds' % timeout)
        self.errf.close()
        err = self.stderr()
        check(not _SANITIZER.search(err), 'sanitizer report:\n' + err)
        check(rc == want, 'prl-nbd exited %d, want %d:\n%s' %
              (rc, want, err))
        return err

    def kill(self):
        """End this server (only it) if it still runs: for failures."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self):
        return self.proc.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.stop()
        elif self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port():
    """A TCP port on 127.0.0.1 free a moment ago, for a server to take."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tcp_client(port, timeout=10):
    """A Client connected to 127.0.0.1:|port|."""
    return Client(sock=socket.create_connection(('127.0.0.1', port),
                                                timeout=timeout))


def mode_client(sockpath, mode, port=None, timeout=10):
    """A Client past the handshake over the Unix socket |sockpath| (or
    TCP |port|), with |mode| 'simple', 'structured' or 'extended'
    headers."""
    c = tcp_client(port, timeout) if port else Client(sockpath,
                                                      timeout=timeout)
    c.connect(structured=mode == 'structured', extended=mode == 'extended')
    return c


class Traced:
    """prl-nbd |args| (and -k on a socket of its own) under strace,
    which logs its calls of |calls| (strace's -e trace= list)."""

    def __init__(self, *args, calls='sendfile'):
        self.sock = path('traced-%d.sock' % id(self))
        self.trace = path('traced-%d.trace' % id(self))
        self.proc = subprocess.Popen(
            ['strace', '-f', '-qq', '-e', 'trace=' + calls, '-o', self.trace,
             PRL_NBD] + [str(a) for a in args] + ['-k', self.sock],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(lambda: self.proc.poll() is None and self.proc.kill())
        for _ in range(400):
            if os.path.exists(self.sock):
                return
            time.sleep(0.05)
        self.proc.kill()
        raise Failure('prl-nbd under strace did not start')

    def stop(self):
        """Stop the server (strace's child, by its pid); the lines of the
        trace."""
        with open('/proc/%d/task/%d/children' % (self.proc.pid,
                                                  self.proc.pid)) as f:
            kids = f.read().split()
        if kids:
            os.kill(int(kids[0]), signal.SIGTERM)
        self.proc.wait(60)
        with open(self.trace) as f:
            return f.readlines()


class Closed(Exception):
    """The server closed the connection."""


class Client:
    """A raw NBD client over a Unix socket (or |sock| given)."""

    def __init__(self, sockpath=None, sock=None, timeout=10):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(sockpath)
        self.s = sock
        self.structured = False
        self.extended = False
        self.flags = 0
        self.size = None

    def close(self):
        self.s.close()

    def send(self, data):
        self.s.sendall(data)

    def recv(self, n):
        buf = b''
        while len(buf) < n:
            d = self.s.recv(n - len(buf))
            if not d:
                raise Closed('closed after %d of %d bytes' % (len(buf), n))
            buf += d
        return buf

    def is_closed(self, timeout=5):
        """True when the server hangs up (reads end of stream)."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    # ---- handshake ----

    def greet(self, cflags=3):
        magic, opts, hflags = struct.unpack('>QQH', self.recv(18))
        check(magic == MAGIC_INIT, 'bad init magic %x' % magic)
        check(opts == MAGIC_OPTS, 'bad IHAVEOPT %x' % opts)
        check(hflags == 3, 'handshake flags %d, want FIXED|NO_ZEROES' %
              hflags)
        self.send(struct.pack('>I', cflags))
        return hflags

    def opt(self, option, data=b'', length=None):
        if length is None:
            length = len(data)
        self.send(struct.pack('>QII', MAGIC_OPTS, option, length) + data)

    def reply(self, option=None):
        magic, opt, rtype, length = struct.unpack('>QIII', self.recv(20))
        check(magic == MAGIC_REP, 'bad option reply magic %x' % magic)
        if option is not None:
            check(opt == option, 'reply for option %d, want %d' %
                  (opt, option))
        return rtype, self.recv(length)

    def replies(self, option):
        """Every reply up to the final one: [(type, data)]."""
        out = []
        while True:
            rtype, data = self.reply(option)
            out.append((rtype, data))
            if rtype != REP_SERVER and rtype != REP_INFO and \
                    rtype != REP_META:
                return out

    def simple_opt(self, option, data=b''):
        self.opt(option, data)
        rtype, data = self.reply(option)
        return rtype, data

    def info_data(self, name=b'', reqs=()):
        return (struct.pack('>I', len(name)) + name +
                struct.pack('>H', len(reqs)) +
                b''.join(struct.pack('>H', r) for r in reqs))

    def meta_data(self, name, queries):
        d = struct.pack('>I', len(name)) + name + struct.pack('>I',
                                                             len(queries))
        for q in queries:
            d += struct.pack('>I', len(q)) + q
        return d

    def set_meta(self, queries, name=b''):
        self.opt(OPT_SET_META, self.meta_data(name, queries))
        out = self.replies(OPT_SET_META)
        check(out[-1][0] == REP_ACK, 'SET_META failed: %r' % (out,))
        ids = {}
        for rtype, data in out[:-1]:
            (cid,) = struct.unpack('>I', data[:4])
            ids[data[4:].decode()] = cid
        return ids

    def go(self, name=b'', reqs=(INFO_BLOCK_SIZE,)):
        self.opt(OPT_GO, self.info_data(name, reqs))
        out = self.replies(OPT_GO)
        check(out[-1][0] == REP_ACK, 'GO failed: %r' % (out,))
        info = {}
        for rtype, data in out[:-1]:
            (itype,) = struct.unpack('>H', data[:2])
            info[itype] = data[2:]
        self.size, self.flags = struct.unpack('>QH', info[INFO_EXPORT])
        return info

    def connect(self, name=b'', structured=False, extended=False,
                meta=()):
        self.greet()
        if extended:
            check(self.simple_opt(OPT_EXTENDED)[0] == REP_ACK,
                  'extended headers refused')
            self.extended = True
        if structured:
            check(self.simple_opt(OPT_STRUCTURED)[0] == REP_ACK,
                  'structured replies refused')
            self.structured = True
        ids = self.set_meta(meta, name) if meta else {}
        self.go(name)
        return ids

    # ---- transmission ----

    def request(self, cmd, offset=0, length=0, flags=0, cookie=1,
                payload=b''):
        if self.extended:
            if payload:
                flags |= F_PAYLOAD_LEN  # the extended form of a payload
            hdr = struct.pack('>IHHQQQ', MAGIC_EXT_REQ, flags, cmd, cookie,
                              offset, length)
        else:
            hdr = struct.pack('>IHHQQI', MAGIC_REQ, flags, cmd, cookie,
                              offset, length)
        self.send(hdr + payload)

    def read_reply(self, read_len=None):
        """One reply message: ('simple', cookie, error, data) or
        ('chunk', cookie, flags, type, payload, offset)."""
        (magic,) = struct.unpack('>I', self.recv(4))
        if magic == MAGIC_SIMPLE:
            error, cookie = struct.unpack('>IQ', self.recv(12))
            data = b''
            if isinstance(read_len, dict):
                read_len = read_len.get(cookie)
            if error == 0 and read_len:
                data = self.recv(read_len)
            return ('simple', cookie, error, data)
        if magic == MAGIC_STRUCT:
            check(not self.extended, 'structured reply with extended '
                  'headers')
            flags, rtype, cookie, length = struct.unpack('>HHQI',
                                                         self.recv(16))
            return ('chunk', cookie, flags, rtype, self.recv(length), None)
        if magic == MAGIC_EXT:
            check(self.extended, 'extended reply without negotiation')
            flags, rtype, cookie, off, length = struct.unpack(
                '>HHQQQ', self.recv(28))
            return ('chunk', cookie, flags, rtype, self.recv(length), off)
        raise Failure('bad reply magic %x' % magic)

    def result(self, read_len=None, cookie=None):
        """All messages of one reply as a Reply; read data is reassembled
        from data and hole chunks."""
        chunks = []
        while True:
            r = self.read_reply(read_len)
            if cookie is not None:
                check(r[1] == cookie, 'cookie %d, want %d' % (r[1], cookie))
            if r[0] == 'simple':
                check(not self.extended, 'simple reply with extended '
                      'headers')
                return Reply(r[1], r[2], r[3], {}, [])
            chunks.append(r)
            if r[2] & REPLY_DONE:
                break
        err, data, status = decode_chunks(chunks)
        return Reply(chunks[0][1], err, data, status, chunks)

    def cmd(self, cmd, offset=0, length=0, flags=0, payload=b'',
            cookie=7):
        """Send one request and return its Reply."""
        self.request(cmd, offset, length, flags, cookie, payload)
        return self.result(length if cmd == CMD_READ else None, cookie)

    def disconnect(self):
        self.request(CMD_DISC)
        check(self.is_closed(), 'server did not close after NBD_CMD_DISC')
        self.close()


class Reply:
    def __init__(self, cookie, error, data, status, chunks):
        self.cookie, self.error, self.data = cookie, error, data
        self.status, self.chunks = status, chunks
        self.simple = not chunks

    def types(self):
        return [c[3] for c in self.chunks]

    def __repr__(self):
        return 'Reply(cookie=%d error=%d data=%s status=%r types=%r)' % (
            self.cookie, self.error,
            None if self.data is None else '%d bytes' % len(self.data),
            self.status, self.types())


# ---- for servers written in a test (tests/client) ----

def recv_exact(c, n):
    """Exactly n bytes from socket c; EOFError when it closes first."""
    b = b''
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b


def opt_reply(c, opt, typ, data=b''):
    """An option reply: magic, option, type, length, data."""
    c.sendall(struct.pack('>QIII', MAGIC_REP, opt, typ, len(data)) + data)


def decode_chunks(chunks):
    """(error, data, {context_id: [(len, status)]}) of a chunk list."""
    err = 0
    pieces = {}
    status = {}
    for _, cookie, flags, rtype, payload, off in chunks:
        if rtype == R_DATA:
            (o,) = struct.unpack('>Q', payload[:8])
            pieces[o] = payload[8:]
        elif rtype == R_HOLE:
            o, n = struct.unpack('>QI', payload)
            pieces[o] = bytes(n)
        elif rtype == R_ERROR or rtype == R_ERROR_OFFSET:
            err, mlen = struct.unpack('>IH', payload[:6])
        elif rtype == R_BS:
            (cid,) = struct.unpack('>I', payload[:4])
            d = payload[4:]
            status[cid] = [struct.unpack('>II', d[i:i + 8])
                           for i in range(0, len(d), 8)]
        elif rtype == R_BS_EXT:
            cid, count = struct.unpack('>II', payload[:8])
            d = payload[8:]
            check(len(d) == 16 * count, 'descriptor count %d for %d bytes'
                  % (count, len(d)))
            status[cid] = [struct.unpack('>QQ', d[i:i + 16])
                           for i in range(0, len(d), 16)]
        elif rtype == R_NONE:
            check(flags & REPLY_DONE, 'NONE chunk without DONE')
        else:
            raise Failure('unexpected chunk type %d' % rtype)
    data = None
    if pieces:
        start = min(pieces)
        data = b''
        for o in sorted(pieces):
            check(o == start + len(data), 'chunks overlap or leave a gap '
                  'at %d' % o)
            data += pieces[o]
    return err, data, status


def make_raw(name, size, pattern=True):
    """A raw image of |size| bytes; with |pattern| the first MiB holds
    a recognisable non-zero pattern and the rest is a hole."""
    p = path(name)
    with open(p, 'wb') as f:
        f.truncate(size)
        if pattern:
            f.write(bytes((i * 7 + i // 4096) & 0xff or 1
                          for i in range(min(size, 1 << 20))))
    return p


def file_bytes(p, off=0, n=None):
    with open(p, 'rb') as f:
        f.seek(off)
        return f.read() if n is None else f.read(n)


class QemuNbd:
    """qemu-nbd serving |image| with |args| on a Unix socket of its own,
    as a peer to compare prl-nbd with; stop() ends only this process."""

    def __init__(self, image, *args):
        import shutil
        if not shutil.which('qemu-nbd'):
            skip('qemu-nbd is not installed')
        self.sock = path('qemu-nbd-%d.sock' % id(self))
        self.log = path('qemu-nbd-%d.log' % id(self))
        self.errf = open(self.log, 'wb')
        self.proc = subprocess.Popen(
            ['qemu-nbd', '-t', '-k', self.sock] + [str(a) for a in args] +
            [image], stdout=subprocess.DEVNULL, stderr=self.errf)
        atexit.register(self.stop)
        for _ in range(200):
            if os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                self.errf.close()
                with open(self.log, 'rb') as f:
                    err = f.read().decode(errors='replace')
                raise Failure('qemu-nbd exited %d: %s' %
                              (self.proc.returncode, err))
            time.sleep(0.05)
        self.stop()
        raise Failure('qemu-nbd did not create ' + self.sock)

    @property
    def uri(self):
        return 'nbd+unix:///?socket=' + self.sock

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def nbdinfo_map(uri, ctx='base:allocation'):
    """nbdinfo --map=|ctx| of |uri| as [(offset, length, type)], adjacent
    equal ranges merged, checked to cover the export from 0 without gaps."""
    import json
    r = run(['timeout', '60', 'nbdinfo', '--json', '--map=' + ctx, uri])
    out = []
    for e in json.loads(r.out):
        off, n, t = e['offset'], e['length'], e['type']
        end = out[-1][0] + out[-1][1] if out else 0
        check(off == end and n > 0, '%s: extent %r after %d' % (ctx, e, end))
        if out and out[-1][2] == t:
            out[-1] = (out[-1][0], out[-1][1] + n, t)
        else:
            out.append((off, n, t))
    return out
