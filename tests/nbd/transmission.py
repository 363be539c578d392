# SPDX-License-Identifier: MIT
"""Transmission from a raw client, in simple, structured and extended
mode: every command and flag, the errors for bad requests (the
connection stays usable, nothing is written), requests that end the
connection, several requests in flight answered by cookie, and the
extended-header forms (64-bit lengths, BLOCK_STATUS_EXT, the payload
filter).  The server keeps serving other clients throughout."""

import os
import random
import struct

from nbdtest import *  # noqa: F401,F403

SIZE = 8 << 20
PAT = bytes(random.Random(1).randrange(1, 256) for _ in range(65536))


def exercise(srv, img, mode):
    c = Client(srv.sock)
    ids = c.connect(structured=mode == 'structured',
                    extended=mode == 'extended',
                    meta=() if mode == 'simple' else
                    (b'base:allocation', b'qemu:allocation-depth'))
    chunky = mode != 'simple'
    check(c.size == SIZE, 'size %d' % c.size)
    want = T_HAS_FLAGS | T_FLUSH | T_FUA | T_TRIM | T_WRITE_ZEROES | \
        T_CACHE | T_FAST_ZERO | T_MULTI_CONN
    if chunky:
        want |= T_DF
    if mode == 'extended':
        want |= T_BS_PAYLOAD
    check(c.flags == want, '%s: flags 0x%x, want 0x%x' % (mode, c.flags,
                                                          want))
    base = {'simple': 0, 'structured': 2 << 20, 'extended': 4 << 20}[mode]

    # WRITE, READ back, FUA; a zero-length read and write.
    r = c.cmd(CMD_WRITE, base, 65536, payload=PAT)
    check(r.error == 0, 'write %r' % r)
    check(r.simple == (mode != 'extended'), 'write reply style %r' % r)
    r = c.cmd(CMD_WRITE, base + 65536, 4096, F_FUA, payload=PAT[:4096])
    check(r.error == 0, 'FUA write %r' % r)
    r = c.cmd(CMD_READ, base, 65536 + 4096)
    check(r.error == 0 and r.data == PAT + PAT[:4096], '%s: read back' % mode)
    check(file_bytes(img, base, 65536) == PAT, 'data not in the file')
    r = c.cmd(CMD_READ, base, 0)
    check(r.error == 0, 'zero-length read %r' % r)
    r = c.cmd(CMD_WRITE, base, 0,
              F_PAYLOAD_LEN if mode == 'extended' else 0)
    check(r.error == 0, 'zero-length write %r' % r)
    # A sparse read: structured replies send the hole as a hole.
    r = c.cmd(CMD_READ, base, 3 * 65536)
    check(r.error == 0 and r.data[:65536] == PAT and
          r.data[69632:] == bytes(3 * 65536 - 69632), 'sparse read %r' % r)
    if chunky:
        check(R_HOLE in r.types() and R_DATA in r.types(),
              'no hole chunk in a sparse read: %r' % r)
        r = c.cmd(CMD_READ, base, 3 * 65536, F_DF)
        check(r.types() == [R_DATA] and len(r.data) == 3 * 65536,
              'DF read not one data chunk: %r' % r)
    else:
        r = c.cmd(CMD_READ, 0, 4096, F_DF)
        check(r.error == EINVAL and r.simple, 'DF without structured %r' % r)
    # FLUSH, CACHE, TRIM (with and without FUA).
    for cmd, off, n, fl in ((CMD_FLUSH, 0, 0, 0), (CMD_FLUSH, 0, 0, F_FUA),
                            (CMD_CACHE, base, 1 << 20, 0),
                            (CMD_TRIM, base + 8192, 8192, 0),
                            (CMD_TRIM, base + 8192, 8192, F_FUA)):
        r = c.cmd(cmd, off, n, fl)
        check(r.error == 0, '%s: command %d flags %d: %r' % (mode, cmd, fl, r))
    # WRITE_ZEROES with each flag.
    for fl in (0, F_FUA, F_NO_HOLE, F_FUA | F_NO_HOLE):
        c.cmd(CMD_WRITE, base, 4096, payload=PAT[:4096])
        r = c.cmd(CMD_WRITE_ZEROES, base, 4096, fl)
        check(r.error == 0, 'zero flags %d: %r' % (fl, r))
        check(file_bytes(img, base, 4096) == bytes(4096), 'not zeroed')
    r = c.cmd(CMD_WRITE_ZEROES, base, 1 << 20, F_FAST_ZERO)
    check(r.error in (0, ENOTSUP), 'fast zero %r' % r)
    # Errors: the connection stays usable and nothing is written.
    before = file_bytes(img)
    for cmd, off, n, fl, payload, err in (
            (CMD_READ, SIZE - 512, 1024, 0, b'', EINVAL),
            (CMD_READ, 1 << 62, 512, 0, b'', EINVAL),
            (CMD_WRITE, SIZE - 512, 1024, 0, bytes(1024), ENOSPC),
            (CMD_WRITE_ZEROES, SIZE, 512, 0, b'', ENOSPC),
            (CMD_TRIM, SIZE - 1, 2, 0, b'', EINVAL),
            (CMD_CACHE, SIZE, 1, 0, b'', EINVAL),
            (CMD_READ, 0, 512, F_NO_HOLE, b'', EINVAL),
            (CMD_READ, 0, 512, 1 << 12, b'', EINVAL),
            (CMD_WRITE, 0, 512, F_DF, bytes(512), EINVAL),
            (CMD_FLUSH, 0, 0, F_REQ_ONE, b'', EINVAL),
            (CMD_WRITE_ZEROES, 0, 512, F_DF, b'', EINVAL),
            (CMD_TRIM, 0, 512, F_NO_HOLE, b'', EINVAL),
            (99, 0, 0, 0, b'', EINVAL),
            (CMD_READ, 0, (32 << 20) + 1, 0, b'', EOVERFLOW)):
        if mode == 'extended' and payload:
            fl |= F_PAYLOAD_LEN
        r = c.cmd(cmd, off, n, fl, payload)
        check(r.error == err, '%s: cmd %d at %d+%d flags 0x%x: %r, want %d'
              % (mode, cmd, off, n, fl, r, err))
        if chunky:
            check(not r.simple or cmd != CMD_READ, 'simple read reply')
    if mode != 'extended':
        # A write over the maximum payload is drained and refused.
        r = c.cmd(CMD_WRITE, 0, (32 << 20) + 4096,
                  payload=b'\xee' * ((32 << 20) + 4096))
        check(r.error == EINVAL, 'oversized write %r' % r)
    check(file_bytes(img) == before, '%s: a refused request wrote' % mode)
    # BLOCK_STATUS.
    if not chunky:
        r = c.cmd(CMD_BLOCK_STATUS, 0, 4096)
        check(r.error == EINVAL, 'block status without contexts %r' % r)
    else:
        alloc, depth = ids['base:allocation'], ids['qemu:allocation-depth']
        fresh = base + (3 << 19)
        c.cmd(CMD_WRITE, fresh, 8192, payload=PAT[:8192])
        r = c.cmd(CMD_BLOCK_STATUS, fresh, 1 << 19)
        check(r.error == 0 and set(r.status) == {alloc, depth},
              'block status %r' % r)
        ext = r.status[alloc]
        check(sum(n for n, _ in ext) == 1 << 19, 'extents %r' % ext)
        check(ext[0][1] == 0 and 8192 <= ext[0][0] < 1 << 19,
              'first extent %r' % ext[:2])
        check(ext[-1][1] == 3, 'tail not a zero hole: %r' % ext[-3:])
        check(all(s == 1 for _, s in r.status[depth]), 'depth of raw %r'
              % r.status[depth])
        r = c.cmd(CMD_BLOCK_STATUS, fresh, 1 << 19, F_REQ_ONE)
        check(all(len(v) == 1 for v in r.status.values()) and
              r.status[alloc][0] == ext[0], 'REQ_ONE %r' % r)
        want_type = R_BS_EXT if mode == 'extended' else R_BS
        check(set(r.types()) == {want_type}, 'status chunk types %r' % r)
        r = c.cmd(CMD_BLOCK_STATUS, 0, 0)
        check(r.error == EINVAL, 'empty block status %r' % r)
        r = c.cmd(CMD_BLOCK_STATUS, SIZE - 512, 1024)
        check(r.error == EINVAL, 'block status past end %r' % r)
    # Several requests in flight, each answered under its cookie.
    cookies = list(range(1000, 1064))
    for i, ck in enumerate(cookies):
        c.request(CMD_READ if i % 2 else CMD_FLUSH, base, 65536 if i % 2
                  else 0, cookie=ck)
    seen = set()
    lens = {ck: 65536 if i % 2 else 0 for i, ck in enumerate(cookies)}
    for i in cookies:
        rep = c.result(lens)
        check(rep.error == 0, 'pipelined request failed %r' % rep)
        seen.add(rep.cookie)
    check(seen == set(cookies), 'cookies answered: %d of %d' %
          (len(seen & set(cookies)), len(cookies)))
    c.disconnect()


def extended_only(srv, img):
    c = Client(srv.sock)
    ids = c.connect(extended=True, meta=(b'base:allocation',
                                         b'qemu:allocation-depth'))
    alloc, depth = ids['base:allocation'], ids['qemu:allocation-depth']
    # Replies carry the request's offset.
    c.request(CMD_FLUSH, 0, 0, cookie=5)
    rep = c.read_reply()
    check(rep[3] == R_NONE and rep[2] & REPLY_DONE, 'flush reply %r' %
          (rep,))
    c.request(CMD_READ, 4096, 512, cookie=6)
    rep = c.read_reply()
    check(rep[5] == 4096, 'extended reply offset %r' % (rep[5],))
    # 64-bit effect lengths: zero and trim of all of it, block status.
    r = c.cmd(CMD_BLOCK_STATUS, 0, SIZE)
    check(r.error == 0 and sum(n for n, _ in r.status[alloc]) == SIZE,
          'whole-export status %r' % r)
    r = c.cmd(CMD_BLOCK_STATUS, 0, 1 << 40)
    check(r.error == EINVAL, 'status over the end %r' % r)
    # Payload filter: one context, duplicates and unknown ids refused.
    pl = struct.pack('>QI', 1 << 20, depth)
    r = c.cmd(CMD_BLOCK_STATUS, 0, len(pl), F_PAYLOAD_LEN, pl)
    check(r.error == 0 and list(r.status) == [depth], 'filtered %r' % r)
    for bad in (struct.pack('>QII', 4096, depth, depth),
                struct.pack('>QI', 4096, 999), struct.pack('>Q', 4096),
                struct.pack('>QH', 4096, 1)):
        r = c.cmd(CMD_BLOCK_STATUS, 0, len(bad), F_PAYLOAD_LEN, bad)
        check(r.error == EINVAL, 'bad filter %r: %r' % (bad, r))
    # A payload on a command that takes none is consumed, then refused.
    r = c.cmd(CMD_FLUSH, 0, 100, F_PAYLOAD_LEN, bytes(100))
    check(r.error == EINVAL, 'flush with payload %r' % r)
    r = c.cmd(CMD_READ, 0, 4000, F_PAYLOAD_LEN, bytes(4000))
    check(r.error == EINVAL, 'read with payload %r' % r)
    # A write must say PAYLOAD_LEN.
    r = c.cmd(CMD_WRITE, 0, 512)
    check(r.error == EINVAL, 'write without PAYLOAD_LEN %r' % r)
    r = c.cmd(CMD_READ, 0, 512)
    check(r.error == 0, 'usable after a bad write %r' % r)
    # A declared payload over the maximum ends the connection.
    c.request(CMD_WRITE, 0, 64 << 20, F_PAYLOAD_LEN)
    check(c.is_closed(), 'oversized extended payload accepted')


def extended_big(big):
    """64-bit effect lengths on an 8 GiB sparse export."""
    with Server('-t', big) as srv:
        c = Client(srv.sock)
        ids = c.connect(extended=True, meta=(b'base:allocation',))
        alloc = ids['base:allocation']
        r = c.cmd(CMD_BLOCK_STATUS, 0, 5 << 30)
        check(r.error == 0 and r.status[alloc] == [(5 << 30, 3)],
              '64-bit block status %r' % r)
        r = c.cmd(CMD_TRIM, 1 << 30, 5 << 30)
        check(r.error == 0, '64-bit trim %r' % r)
        r = c.cmd(CMD_CACHE, 0, 6 << 30)
        check(r.error == 0, '64-bit cache %r' % r)
        r = c.cmd(CMD_READ, 0, 5 << 30)
        check(r.error == EOVERFLOW, '64-bit read %r' % r)
        r = c.cmd(CMD_WRITE_ZEROES, 7 << 30, 2 << 30)
        check(r.error == ENOSPC, 'zero past the end %r' % r)
        c.disconnect()


def abusive(srv, img):
    # Bad request magic: hang up.
    c = Client(srv.sock)
    c.connect()
    c.send(struct.pack('>IHHQQI', 0x12560953, 0, 0, 1, 0, 512))
    check(c.is_closed(), 'bad request magic accepted')
    # Extended magic without negotiation: hang up.
    c = Client(srv.sock)
    c.connect()
    c.send(struct.pack('>IHHQQQ', MAGIC_EXT_REQ, 0, 0, 1, 0, 512))
    check(c.is_closed(), 'extended request without negotiation accepted')
    # Truncated header, then gone.
    c = Client(srv.sock)
    c.connect()
    c.send(struct.pack('>IHHQ', MAGIC_REQ, 0, CMD_READ, 1))
    c.close()
    # A write whose payload never arrives: nothing is written.
    c = Client(srv.sock)
    c.connect()
    before = file_bytes(img, 0, 65536)
    c.send(struct.pack('>IHHQQI', MAGIC_REQ, 0, CMD_WRITE, 1, 0, 65536) +
           b'\xab' * 1000)
    c.close()
    # Gone with reads in flight.
    c = Client(srv.sock)
    c.connect()
    for i in range(32):
        c.request(CMD_READ, 0, 1 << 20, cookie=i)
    c.close()
    c = Client(srv.sock)
    c.connect()
    r = c.cmd(CMD_READ, 0, 65536)
    check(r.error == 0 and r.data == before, 'half write landed')
    c.disconnect()


def read_only(img):
    with Server('-t', '-r', img) as srv:
        c = Client(srv.sock)
        c.connect(structured=True)
        check(c.flags & T_READ_ONLY and not c.flags & (T_FUA | T_TRIM |
                                                       T_WRITE_ZEROES),
              'read-only flags 0x%x' % c.flags)
        check(not c.flags & T_MULTI_CONN, '-e 1 offers multi-conn')
        before = file_bytes(img)
        for cmd, payload in ((CMD_WRITE, bytes(512)), (CMD_TRIM, b''),
                             (CMD_WRITE_ZEROES, b'')):
            r = c.cmd(cmd, 0, 512, payload=payload)
            check(r.error == EPERM, 'cmd %d on read-only: %r' % (cmd, r))
        r = c.cmd(CMD_READ, 0, 512, F_FUA)
        check(r.error == EINVAL, 'FUA without SEND_FUA %r' % r)
        r = c.cmd(CMD_FLUSH)
        check(r.error == 0, 'flush on read-only %r' % r)
        check(file_bytes(img) == before, 'read-only export written')
        c.disconnect()


def test():
    img = make_raw('t.img', SIZE, pattern=False)
    with Server('-t', '-e', '0', '-A', img) as srv:
        for mode in ('simple', 'structured', 'extended'):
            exercise(srv, img, mode)
        extended_only(srv, img)
        abusive(srv, img)
        exercise(srv, img, 'structured')
    read_only(img)
    big = path('big.img')
    with open(big, 'wb') as f:
        f.truncate(8 << 30)
    extended_big(big)


main(test)
