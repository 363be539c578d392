# SPDX-License-Identifier: MIT
"""Option haggling from a raw client: every option, its error replies,
the limits on option length and count, the handshake time limit, and
clients without fixed newstyle.  After each misbehaving client the
server still serves a well-behaved one."""

import struct
import time

from nbdtest import *  # noqa: F401,F403


def healthy(srv):
    c = Client(srv.sock)
    c.connect()
    r = c.cmd(CMD_READ, 0, 512)
    check(r.error == 0 and len(r.data) == 512, 'read failed: %r' % r)
    c.disconnect()


def test():
    img = make_raw('a.img', 4 << 20)
    other = make_raw('b.img', 1 << 20, pattern=False)
    with Server('-t', '-e', '0', '-x', 'first', '-D', 'the first one', '-A',
                '--export', 'second=%s,ro,description=two,,ish' % other,
                '--handshake-limit', '2', img) as srv:
        # Greeting and an unknown client flag: hang up.
        c = Client(srv.sock)
        c.greet(cflags=1 << 5)
        check(c.is_closed(), 'unknown client flag accepted')
        healthy(srv)

        # Bad option magic: hang up.
        c = Client(srv.sock)
        c.greet()
        c.send(struct.pack('>QII', 0x1122334455667788, OPT_LIST, 0))
        check(c.is_closed(), 'bad option magic accepted')

        c = Client(srv.sock)
        c.greet()
        # LIST: names and descriptions; with data it is invalid.
        c.opt(OPT_LIST)
        out = c.replies(OPT_LIST)
        check(out[-1][0] == REP_ACK, 'LIST: %r' % out)
        names = {}
        for t, d in out[:-1]:
            check(t == REP_SERVER, 'LIST reply type %x' % t)
            (n,) = struct.unpack('>I', d[:4])
            names[d[4:4 + n]] = d[4 + n:]
        check(names == {b'first': b'the first one', b'second': b'two,ish'},
              'LIST gave %r' % names)
        t, msg = c.simple_opt(OPT_LIST, b'x')
        check(t == REP_ERR_INVALID and msg, 'LIST with data: %x' % t)
        # STARTTLS: no TLS configured.
        t, msg = c.simple_opt(OPT_STARTTLS)
        check(t == REP_ERR_POLICY and b'TLS' in msg, 'STARTTLS: %x %r' %
              (t, msg))
        t, _ = c.simple_opt(OPT_STARTTLS, b'zz')
        check(t == REP_ERR_INVALID, 'STARTTLS with data: %x' % t)
        # Unknown options, and the withdrawn PEEK_EXPORT.
        for o in (OPT_PEEK, 12, 0x7fffffff):
            t, msg = c.simple_opt(o, b'abc')
            check(t == REP_ERR_UNSUP and msg, 'option %d: %x' % (o, t))
        # INFO: unknown export, malformed data, every info item.
        t, msg = c.simple_opt(OPT_INFO, c.info_data(b'nope'))
        check(t == REP_ERR_UNKNOWN and b'nope' in msg, 'INFO nope: %x' % t)
        t, _ = c.simple_opt(OPT_INFO, b'\0\0\0\xff\0\0')
        check(t == REP_ERR_INVALID, 'INFO name overrun: %x' % t)
        t, _ = c.simple_opt(OPT_INFO, c.info_data(b'first', (1,)) + b'x')
        check(t == REP_ERR_INVALID, 'INFO odd request list: %x' % t)
        t, _ = c.simple_opt(OPT_INFO, b'\0\0')
        check(t == REP_ERR_INVALID, 'INFO too short: %x' % t)
        c.opt(OPT_INFO, c.info_data(b'second', (INFO_NAME, INFO_DESCRIPTION,
                                                INFO_BLOCK_SIZE, 77)))
        out = c.replies(OPT_INFO)
        check(out[-1][0] == REP_ACK, 'INFO second: %r' % out)
        info = {struct.unpack('>H', d[:2])[0]: d[2:] for t, d in out[:-1]}
        size, flags = struct.unpack('>QH', info[INFO_EXPORT])
        check(size == 1 << 20, 'size %d' % size)
        check(flags & T_READ_ONLY and not flags & T_WRITE_ZEROES and
              not flags & T_DF and flags & T_MULTI_CONN,
              'flags of read-only export 0x%x' % flags)
        check(info[INFO_NAME] == b'second', 'name %r' % info[INFO_NAME])
        check(info[INFO_DESCRIPTION] == b'two,ish', 'description')
        mn, pref, mx = struct.unpack('>III', info[INFO_BLOCK_SIZE])
        check((mn, pref, mx) == (1, 4096, 32 << 20), 'block sizes %r' %
              ((mn, pref, mx),))
        # The empty name is the first export.
        c.opt(OPT_INFO, c.info_data(b'', (INFO_NAME,)))
        out = c.replies(OPT_INFO)
        info = {struct.unpack('>H', d[:2])[0]: d[2:] for t, d in out[:-1]}
        check(info.get(INFO_NAME) == b'first', 'default export %r' % info)
        # Meta contexts need structured replies first.
        t, _ = c.simple_opt(OPT_LIST_META, c.meta_data(b'first', []))
        check(t == REP_ERR_INVALID, 'LIST_META unstructured: %x' % t)
        t, _ = c.simple_opt(OPT_SET_META,
                            c.meta_data(b'first', [b'base:allocation']))
        check(t == REP_ERR_INVALID, 'SET_META unstructured: %x' % t)
        check(c.simple_opt(OPT_STRUCTURED)[0] == REP_ACK, 'structured')
        t, _ = c.simple_opt(OPT_STRUCTURED, b'1')
        check(t == REP_ERR_INVALID, 'STRUCTURED with data: %x' % t)
        # LIST_META: everything, wildcards, exact names, unknown ones.
        for queries, want in (
                ([], {'base:allocation', 'qemu:allocation-depth'}),
                ([b'base:'], {'base:allocation'}),
                ([b'qemu:'], {'qemu:allocation-depth'}),
                ([b'qemu:allocation-depth', b'x-foo:bar', b'base:nothing'],
                 {'qemu:allocation-depth'}),
                ([b'qemu:dirty-bitmap:'], set())):
            c.opt(OPT_LIST_META, c.meta_data(b'first', queries))
            out = c.replies(OPT_LIST_META)
            check(out[-1][0] == REP_ACK, 'LIST_META %r: %r' % (queries, out))
            got = set()
            for t, d in out[:-1]:
                check(t == REP_META and d[:4] == b'\0\0\0\0',
                      'LIST_META reply %x %r' % (t, d))
                got.add(d[4:].decode())
            check(got == want, 'LIST_META %r gave %r' % (queries, got))
        # Without -A the export neither lists nor selects the depth.
        for queries in ([], [b'qemu:'], [b'qemu:allocation-depth']):
            c.opt(OPT_LIST_META, c.meta_data(b'second', queries))
            out = c.replies(OPT_LIST_META)
            got = {d[4:].decode() for t, d in out[:-1]}
            want = {'base:allocation'} if not queries else set()
            check(out[-1][0] == REP_ACK and got == want,
                  'LIST_META %r of an export without -A: %r' % (queries, out))
        ids = c.set_meta([b'base:allocation', b'qemu:allocation-depth'],
                         b'second')
        check(list(ids) == ['base:allocation'],
              'SET_META of an export without -A gave %r' % ids)
        t, _ = c.simple_opt(OPT_LIST_META, c.meta_data(b'first', [b'nocolon']))
        check(t == REP_ERR_INVALID, 'query without namespace: %x' % t)
        t, _ = c.simple_opt(OPT_LIST_META, c.meta_data(b'zz', []))
        check(t == REP_ERR_UNKNOWN, 'LIST_META unknown export: %x' % t)
        bad = c.meta_data(b'first', [b'base:allocation'])[:-3]
        t, _ = c.simple_opt(OPT_SET_META, bad)
        check(t == REP_ERR_INVALID, 'SET_META truncated query: %x' % t)
        # SET_META: wildcards select nothing; ids are unique.
        ids = c.set_meta([b'base:', b'qemu:'], b'first')
        check(ids == {}, 'SET_META wildcards selected %r' % ids)
        ids = c.set_meta([b'base:allocation', b'qemu:allocation-depth',
                          b'base:allocation'], b'first')
        check(sorted(ids) == ['base:allocation', 'qemu:allocation-depth']
              and len(set(ids.values())) == 2, 'SET_META gave %r' % ids)
        # Extended headers, then structured replies cannot come back.
        check(c.simple_opt(OPT_EXTENDED)[0] == REP_ACK, 'extended')
        t, msg = c.simple_opt(OPT_STRUCTURED)
        check(t == REP_ERR_EXT_HEADER_REQD and msg, 'STRUCTURED after '
              'EXTENDED: %x' % t)
        t, _ = c.simple_opt(OPT_EXTENDED, b'1')
        check(t == REP_ERR_INVALID, 'EXTENDED with data: %x' % t)
        # Oversized option: drained, refused, the session goes on.
        c.opt(77, bytes(100000))
        t, msg = c.reply(77)
        check(t == REP_ERR_TOO_BIG and msg, 'oversized option: %x' % t)
        # GO with contexts set for this export: payload flag offered.
        info = c.go(b'first')
        check(c.flags & T_BS_PAYLOAD and c.flags & T_DF and
              c.flags & T_FAST_ZERO and c.flags & T_MULTI_CONN and
              not c.flags & T_READ_ONLY, 'GO flags 0x%x' % c.flags)
        c.extended = True
        r = c.cmd(CMD_BLOCK_STATUS, 0, 4096)
        check(r.error == 0 and len(r.status) == 2, 'block status %r' % r)
        c.disconnect()

        # EXPORT_NAME after extended headers: hang up.
        c = Client(srv.sock)
        c.greet()
        c.simple_opt(OPT_EXTENDED)
        c.opt(OPT_EXPORT_NAME, b'first')
        check(c.is_closed(), 'EXPORT_NAME after EXTENDED accepted')
        # EXPORT_NAME of an unknown export: hang up.
        c = Client(srv.sock)
        c.greet()
        c.opt(OPT_EXPORT_NAME, b'nope')
        check(c.is_closed(), 'EXPORT_NAME nope accepted')
        # EXPORT_NAME with and without zeroes.
        for cflags, tail in ((3, 0), (1, 124)):
            c = Client(srv.sock)
            c.greet(cflags)
            c.opt(OPT_EXPORT_NAME, b'second')
            size, flags = struct.unpack('>QH', c.recv(10))
            check(size == 1 << 20 and flags & T_READ_ONLY, 'EXPORT_NAME')
            if tail:
                check(c.recv(tail) == bytes(tail), 'zero padding')
            r = c.cmd(CMD_READ, 0, 100)
            check(r.simple and r.error == 0 and r.data == bytes(100),
                  'read after EXPORT_NAME %r' % r)
            c.disconnect()
        # No fixed newstyle: only EXPORT_NAME is understood.
        c = Client(srv.sock)
        c.greet(cflags=0)
        c.opt(OPT_LIST)
        check(c.is_closed(), 'LIST without fixed newstyle accepted')
        c = Client(srv.sock)
        c.greet(cflags=0)
        c.opt(OPT_EXPORT_NAME, b'')
        c.recv(134)
        c.disconnect()
        # ABORT is acknowledged, then the server hangs up.
        c = Client(srv.sock)
        c.greet()
        t, _ = c.simple_opt(OPT_ABORT)
        check(t == REP_ACK, 'ABORT: %x' % t)
        check(c.is_closed(), 'still open after ABORT')
        # An option longer than we drain: hang up.
        c = Client(srv.sock)
        c.greet()
        c.opt(OPT_INFO, b'', length=0x7ffffff0)
        check(c.is_closed(), 'huge option accepted')
        # Option data cut short by the client leaving.
        c = Client(srv.sock)
        c.greet()
        c.opt(OPT_INFO, b'\0\0', length=100)
        c.close()
        # Too many options on one connection.
        c = Client(srv.sock)
        c.greet()
        closed = False
        for i in range(600):
            try:
                c.opt(OPT_LIST)
                c.replies(OPT_LIST)
            except (Closed, BrokenPipeError, ConnectionResetError):
                closed = True
                break
        check(closed and 500 <= i <= 520, 'option cap not enforced (%d)' %
              i)
        # A client that stalls past --handshake-limit is dropped.
        c = Client(srv.sock)
        c.greet()
        t0 = time.monotonic()
        check(c.is_closed(timeout=8), 'stalled handshake not dropped')
        check(time.monotonic() - t0 < 7, 'handshake limit not applied')
        # Block size required when the client will not hear about it.
        healthy(srv)
    with Server('-t', '--min-block-size', '512', img) as srv:
        c = Client(srv.sock)
        c.greet()
        c.opt(OPT_GO, c.info_data(b''))
        out = c.replies(OPT_GO)
        check(out[-1][0] == REP_ERR_BLOCK_SIZE_REQD, 'GO without block '
              'size: %r' % out)
        check(any(t == REP_INFO and d[:2] == b'\0\3' for t, d in out[:-1]),
              'no NBD_INFO_BLOCK_SIZE before BLOCK_SIZE_REQD')
        c.go(b'', (INFO_BLOCK_SIZE,))
        r = c.cmd(CMD_READ, 100, 512)
        check(r.error == EINVAL, 'misaligned read %r' % r)
        r = c.cmd(CMD_READ, 512, 1024)
        check(r.error == 0 and len(r.data) == 1024, 'aligned read %r' % r)
        c.disconnect()
    # Block status in whole minimum blocks: a 64 KiB block that is part
    # data, part hole is reported as data (and not known to be zero).
    sparse = make_raw('c.img', 1 << 20, pattern=False)
    with open(sparse, 'r+b') as f:
        f.seek(4096)
        f.write(b'\x01' * 4096)
    with Server('-t', '--min-block-size', '65536', '-A', sparse) as srv:
        c = Client(srv.sock)
        ids = c.connect(structured=True, meta=(b'base:allocation',
                                               b'qemu:allocation-depth'))
        r = c.cmd(CMD_BLOCK_STATUS, 0, 1 << 20)
        ext = r.status[ids['base:allocation']]
        check(ext == [(65536, 0), ((1 << 20) - 65536, 3)],
              'aligned extents %r' % ext)
        r = c.cmd(CMD_BLOCK_STATUS, 0, 65536, F_REQ_ONE)
        check(r.status[ids['base:allocation']] == [(65536, 0)],
              'aligned REQ_ONE %r' % r)
        r = c.cmd(CMD_BLOCK_STATUS, 4096, 65536)
        check(r.error == EINVAL, 'misaligned block status %r' % r)
        c.disconnect()


main(test)
