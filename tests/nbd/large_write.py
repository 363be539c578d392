# SPDX-License-Identifier: MIT
"""Large write payloads, over TCP (where prl-nbd waits for them with a
receive low-water mark) and over a Unix socket: writes of 1 MiB, 1 MiB
+ 1, 3 MiB + 4 KiB and 32 MiB in every header mode land whole; a
payload that comes in pieces with pauses, one whose last bytes come
alone with nothing after them, and one followed in the same send by
small requests are all answered; a client that hangs up inside a
payload writes nothing and the server goes on serving.  Under strace,
the server sets SO_RCVLOWAT while it waits for a payload on TCP, puts
it back to 1, and never sets it on a Unix socket."""

import random
import struct
import time

from nbdtest import *  # noqa: F401,F403

MiB = 1 << 20
SIZE = 48 * MiB
MODES = ('simple', 'structured', 'extended')


def client(srv, port, mode):
    return mode_client(srv.sock, mode, port, timeout=20)


def header(c, cmd, off, length, cookie, flags=0):
    """A request header alone, for sending its payload by hand."""
    if c.extended:
        if cmd == CMD_WRITE:
            flags |= F_PAYLOAD_LEN
        return struct.pack('>IHHQQQ', MAGIC_EXT_REQ, flags, cmd, cookie,
                           off, length)
    return struct.pack('>IHHQQI', MAGIC_REQ, flags, cmd, cookie, off,
                       length)


def ok(r, what):
    check(r.error == 0, '%s: error %d' % (what, r.error))


class Image:
    """The exported file and what it must hold."""

    def __init__(self, name):
        self.p = make_raw(name, SIZE)
        self.want = bytearray(file_bytes(self.p))
        self.rnd = random.Random(11)

    def data(self, n):
        return self.rnd.randbytes(n)

    def wrote(self, off, data):
        self.want[off:off + len(data)] = data

    def verify(self, what):
        check(file_bytes(self.p) == bytes(self.want),
              '%s: the file differs from what was written' % what)


def whole_writes(srv, port, img, where):
    for mode in MODES:
        c = client(srv, port, mode)
        for off, n in ((0, MiB), (MiB + 512, MiB + 1),
                       (5 * MiB, 3 * MiB + 4096), (12 * MiB, 32 * MiB)):
            data = img.data(n)
            ok(c.cmd(CMD_WRITE, off, n, payload=data),
               '%s %s: write %d+%d' % (where, mode, off, n))
            img.wrote(off, data)
            r = c.cmd(CMD_READ, off, n)
            ok(r, '%s %s: read back' % (where, mode))
            check(r.data == bytes(img.want[off:off + n]),
                  '%s %s: read back %d+%d differs' % (where, mode, off, n))
        c.disconnect()
    img.verify(where + ': whole writes')


def piecewise(srv, port, img, where):
    for mode in MODES:
        c = client(srv, port, mode)
        # In seven pieces with pauses between them.
        off, n = 7 * MiB + 4096, 3 * MiB + 100
        data = img.data(n)
        msg = header(c, CMD_WRITE, off, n, 1) + data
        cuts = sorted(random.Random(3).sample(range(1, len(msg)), 6))
        for a, b in zip([0] + cuts, cuts + [len(msg)]):
            c.send(msg[a:b])
            time.sleep(0.03)
        r = c.result(cookie=1)
        ok(r, '%s %s: write in pieces' % (where, mode))
        img.wrote(off, data)
        # The last bytes alone, with nothing after them to wake anyone.
        off, n = 2 * MiB, 2 * MiB
        data = img.data(n)
        c.send(header(c, CMD_WRITE, off, n, 2) + data[:-1000])
        time.sleep(0.2)
        c.send(data[-1000:])
        ok(c.result(cookie=2), '%s %s: write with a late tail' %
           (where, mode))
        img.wrote(off, data)
        # Small requests right behind a large payload, in one send: the
        # server must not wait for more than they are.  (Requests in
        # flight are unordered: the read is of acknowledged data.)
        off, n = 20 * MiB, MiB + 4096
        data = img.data(n)
        small = img.data(512)
        before = bytes(img.want[2 * MiB:2 * MiB + 4096])
        c.send(header(c, CMD_WRITE, off, n, 3) + data +
               header(c, CMD_WRITE, 40 * MiB, 512, 4) + small +
               header(c, CMD_READ, 2 * MiB, 4096, 5))
        img.wrote(off, data)
        img.wrote(40 * MiB, small)
        got = {}
        for _ in range(3):
            r = c.result({5: 4096})
            got[r.cookie] = r
        check(sorted(got) == [3, 4, 5], '%s %s: replies %r' %
              (where, mode, sorted(got)))
        for k in (3, 4, 5):
            ok(got[k], '%s %s: request %d behind a payload' % (where, mode, k))
        check(got[5].data == before, '%s %s: read behind a payload' %
              (where, mode))
        c.disconnect()
    img.verify(where + ': payloads in pieces')


def hang_up_inside(srv, port, img, where):
    """A client gone in the middle of a 2 MiB payload: nothing of it is
    written, and the next client is served."""
    c = client(srv, port, 'structured')
    c.send(header(c, CMD_WRITE, 30 * MiB, 2 * MiB, 1) + b'\xa5' * (MiB + 7))
    time.sleep(0.2)
    c.close()
    c = client(srv, port, 'simple')
    r = c.cmd(CMD_READ, 30 * MiB, 2 * MiB)
    ok(r, where + ': read after a client hung up')
    check(r.data == bytes(img.want[30 * MiB:32 * MiB]),
          where + ': a payload cut short was written')
    c.disconnect()
    img.verify(where + ': after a client hung up')


def exercise(where, port):
    img = Image('lw-%s.raw' % where)
    args = ('-t', '-e', '0')
    if port:
        args += ('-b', '127.0.0.1', '-p', port)
    with Server(*(args + (img.p,))) as srv:
        whole_writes(srv, port, img, where)
        piecewise(srv, port, img, where)
        hang_up_inside(srv, port, img, where)


def traced_lowat(port):
    """prl-nbd under strace: the SO_RCVLOWAT values it sets while a
    client writes 3 MiB whose payload comes after a pause."""
    img = Image('lw-traced.raw')
    extra = ('-b', '127.0.0.1', '-p', port) if port else ()
    t = Traced('-t', *(extra + (img.p,)), calls='setsockopt')
    try:
        c = mode_client(t.sock, 'simple', port, timeout=20)
        data = img.data(3 * MiB)
        c.send(header(c, CMD_WRITE, 0, len(data), 1) + data[:4096])
        time.sleep(0.3)
        c.send(data[4096:])
        ok(c.result(cookie=1), 'traced write')
        r = c.cmd(CMD_READ, 0, 4096)
        check(r.data == data[:4096], 'traced read back')
        c.disconnect()
    finally:
        lines = t.stop()
    return [int(line.split('[')[1].split(']')[0]) for line in lines
            if 'SO_RCVLOWAT' in line and line.rstrip().endswith('= 0')]


def test():
    exercise('tcp', free_port())
    exercise('unix', None)
    requires('strace')
    marks = traced_lowat(free_port())
    check(marks and max(marks) > 4096,
          'TCP: no SO_RCVLOWAT set for a 3 MiB payload (%r)' % marks)
    check(max(marks) <= MiB, 'TCP: low-water mark above 1 MiB: %r' % marks)
    check(marks[-1] == 1, 'TCP: low-water mark left at %d' % marks[-1])
    marks = traced_lowat(None)
    check(not marks, 'Unix socket: SO_RCVLOWAT set: %r' % marks)


main(test)
