# SPDX-License-Identifier: MIT
"""-B/--bitmap: qemu:dirty-bitmap:UUID of a Parallels image over NBD.
Writes through prl-nbd mark a bitmap; served read-only with -B, its map
equals prl-img map --bitmap and qemu-nbd -B on the same file; the
qemu: and qemu:dirty-bitmap: queries list it; unknown and inconsistent
bitmaps are refused at start-up; copying only the dirty extents onto a
raw copy of the earlier state gives the image."""

import json
import os
import struct
import subprocess
import time

from nbdtest import *  # noqa: F401,F403
from prltest import prl_img

SIZE = 16 << 20
GRAN = 64 << 10
# Writes after the bitmap was added: (offset, length).
WRITES = [(1 << 20, 64 << 10), ((3 << 20) + 4096, 8192),
          (10 << 20, (1 << 20) + 5), (SIZE - 512, 512)]
BASE_WRITES = [(0, 256 << 10), (5 << 20, 128 << 10)]


def qemu_img(*args):
    return run(['qemu-img'] + list(args))


def write_through_nbd(img, writes, fill):
    import nbd
    with Server(img) as srv:
        h = nbd.NBD()
        h.connect_unix(srv.sock)
        for off, n in writes:
            h.pwrite(bytes([fill]) * n, off)
        h.flush()
        h.shutdown()


def expected_dirty():
    bits = set()
    for off, n in WRITES:
        for b in range(off // GRAN, (off + n - 1) // GRAN + 1):
            bits.add(b)
    return merge([(b * GRAN, GRAN, True) for b in sorted(bits)])


def merge(ranges):
    """Ranges (offset, length, dirty) covering the disk, merged, with
    clean gaps filled in."""
    out, pos = [], 0
    for off, n, d in sorted(ranges):
        if off > pos:
            out.append([pos, off - pos, False])
        if out and out[-1][2] == d and out[-1][0] + out[-1][1] == off:
            out[-1][1] += n
        else:
            out.append([off, n, d])
        pos = off + n
    if pos < SIZE:
        if out and not out[-1][2]:
            out[-1][1] += SIZE - pos
        else:
            out.append([pos, SIZE - pos, False])
    return [tuple(r) for r in out]


def nbdinfo_map(uri, ctx):
    r = run(['timeout', '30', 'nbdinfo', '--json', '--map=' + ctx, uri])
    return merge([(e['offset'], e['length'], bool(e['type'] & 1))
                  for e in json.loads(r.out)])


def list_meta(sock, query):
    import nbd
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(sock)
    got = []
    h.clear_meta_contexts()
    if query is not None:
        h.add_meta_context(query)
    h.opt_list_meta_context(lambda name: got.append(name) or 0)
    h.opt_abort()
    return sorted(got)


def start_qemu_nbd(sock, uuid, img):
    p = subprocess.Popen(['qemu-nbd', '-r', '-f', 'parallels', '-B', uuid,
                          '-t', '-k', sock, img],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        if os.path.exists(sock):
            return p
        if p.poll() is not None:
            raise Failure('qemu-nbd exited %d: %s' %
                          (p.returncode, p.stderr.read().decode()))
        time.sleep(0.05)
    p.kill()
    p.wait()
    raise Failure('qemu-nbd did not create ' + sock)


def stop_pid(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def refused(*args):
    """prl-nbd |args| must exit 1 at start-up; its stderr."""
    srv = Server(*args, wait=False)
    try:
        srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    return srv.stop(want=1)


def test():
    requires('qemu-img', 'qemu-nbd', 'nbdinfo')
    try:
        import nbd  # noqa: F401
    except ImportError:
        skip('python nbd is not installed')
    img = path('b.hdd')
    base = path('base.raw')
    qemu_img('create', '-q', '-f', 'parallels', '-o', 'cluster_size=65536',
             img, str(SIZE))
    write_through_nbd(img, BASE_WRITES, 0x11)
    qemu_img('convert', '-f', 'parallels', '-O', 'raw', img, base)
    uuid = prl_img('bitmap', '--add', img, 'auto').out.strip()
    other = prl_img('bitmap', '--add', img, 'auto').out.strip()
    check(len(uuid) == 36 and len(other) == 36, 'uuids %r %r' % (uuid, other))
    write_through_nbd(img, WRITES, 0x77)

    want = expected_dirty()
    ctx = 'qemu:dirty-bitmap:' + uuid
    octx = 'qemu:dirty-bitmap:' + other
    mine = merge([(e['start'], e['length'], e['dirty']) for e in
                  json.loads(prl_img('map', '--bitmap=' + uuid,
                                     '--output=json', img).out)])
    check(mine == want, 'prl-img map --bitmap %r, want %r' % (mine, want))

    with Server('-r', '-t', '-e', '0', '-A', '-B', uuid, '--bitmap',
                other.upper(), img) as srv:
        got = nbdinfo_map(srv.uri, ctx)
        check(got == want, 'nbdinfo --map %r, want %r' % (got, want))
        got = nbdinfo_map(srv.uri, octx)
        check(got == want, 'second bitmap %r' % got)

        qsock = path('q.sock')
        q = start_qemu_nbd(qsock, uuid, img)
        try:
            theirs = nbdinfo_map('nbd+unix:///?socket=' + qsock, ctx)
        finally:
            stop_pid(q)
        check(theirs == want,
              'qemu-nbd map %r, prl-nbd %r' % (theirs, want))

        # Queries: qemu: is every qemu context, qemu:dirty-bitmap: the
        # bitmaps, the empty list everything, a name itself.
        bms = sorted([ctx, octx])
        got = list_meta(srv.sock, 'qemu:')
        check(got == sorted(['qemu:allocation-depth'] + bms),
              'qemu: lists %r' % got)
        got = list_meta(srv.sock, 'qemu:dirty-bitmap:')
        check(got == bms, 'qemu:dirty-bitmap: lists %r' % got)
        got = list_meta(srv.sock, None)
        check(got == sorted(['base:allocation', 'qemu:allocation-depth'] +
                            bms), 'empty query lists %r' % got)
        got = list_meta(srv.sock, ctx)
        check(got == [ctx], '%s lists %r' % (ctx, got))
        got = list_meta(srv.sock, 'qemu:dirty-bitmap:nope')
        check(got == [], 'unknown bitmap lists %r' % got)
        r = run(['timeout', '30', 'nbdinfo', '--list', '--json', srv.uri])
        ctxs = json.loads(r.out)['exports'][0]['contexts']
        check(ctx in ctxs and octx in ctxs, 'nbdinfo --list %r' % ctxs)

        # Extended headers: one 64-bit chunk per selected context,
        # REQ_ONE, and the payload filter choosing the bitmap alone.
        c = Client(srv.sock)
        ids = c.connect(extended=True,
                        meta=[b'base:allocation', ctx.encode()])
        check(set(ids) == {'base:allocation', ctx}, 'ids %r' % ids)
        r = c.cmd(CMD_BLOCK_STATUS, 0, SIZE)
        check(r.error == 0 and R_BS_EXT in r.types(), 'ext status %r' % r)
        pos, ranges = 0, []
        for n, st in r.status[ids[ctx]]:
            ranges.append((pos, n, bool(st & 1)))
            pos += n
        check(pos == SIZE and merge(ranges) == want,
              'extended bitmap extents %r' % ranges)
        r = c.cmd(CMD_BLOCK_STATUS, 1 << 20, 8 << 20, F_REQ_ONE)
        check(r.status[ids[ctx]] == [(64 << 10, 1)], 'REQ_ONE %r' % r)
        r = c.cmd(CMD_BLOCK_STATUS, 0, 12, payload=struct.pack(
            '>QI', 2 << 20, ids[ctx]))
        check(list(r.status) == [ids[ctx]] and
              r.status[ids[ctx]] == [(1 << 20, 0), (64 << 10, 1),
                                     ((1 << 20) - (64 << 10), 0)],
              'payload filter %r' % r)
        c.disconnect()

        # Incremental backup: the dirty extents onto the earlier state.
        import nbd
        h = nbd.NBD()
        h.add_meta_context(ctx)
        h.connect_unix(srv.sock)
        check(h.can_meta_context(ctx), 'context not negotiated')
        dirty = []

        def cb(meta, off, entries, err):
            if meta != ctx:
                return 0
            pos = off
            for i in range(0, len(entries), 2):
                if entries[i + 1] & 1:
                    dirty.append((pos, entries[i]))
                pos += entries[i]
            cb.end = pos
            return 0

        pos = 0
        while pos < SIZE:
            cb.end = pos
            h.block_status(min(SIZE - pos, 1 << 30), pos, cb)
            check(cb.end > pos, 'block status made no progress at %d' % pos)
            pos = cb.end
        check(merge([(o, n, True) for o, n in dirty]) == want,
              'block_status dirty %r' % dirty)
        with open(base, 'r+b') as f:
            for off, n in dirty:
                f.seek(off)
                f.write(h.pread(n, off))
        h.shutdown()

    full = path('full.raw')
    qemu_img('convert', '-f', 'parallels', '-O', 'raw', img, full)
    run(['cmp', base, full])

    # Refused at start-up: an unknown bitmap, and an inconsistent one.
    err = refused('-r', '-B', '00000000-0000-0000-0000-000000000001', img)
    check('no bitmap' in err, 'unknown bitmap: %r' % err)
    srv = Server('-B', uuid, img)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    h.pwrite(b'\x55' * 4096, 0)
    h.flush()
    srv.stop(want=-9, sig=9)
    err = refused('-r', '-B', uuid, img)
    check('inconsistent' in err, 'inconsistent bitmap: %r' % err)
    err = refused('--export', 'e=%s,ro,bitmap=%s' % (img, other))
    check('inconsistent' in err, 'inconsistent via --export: %r' % err)


main(test)
