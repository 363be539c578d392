# SPDX-License-Identifier: MIT
"""NBD_CMD_BLOCK_STATUS from a raw client written from the spec:
refused before any context is negotiated (the connection stays usable);
REQ_ONE on base:allocation, qemu:allocation-depth and a dirty bitmap;
ranges past the end refused; the BLOCK_STATUS_PAYLOAD filter choosing
subsets of the contexts (extended headers); huge requests (4 GiB - 1 in
compact descriptors, 2^40 in extended ones) on a 16 TiB Parallels image
with 40 000 extents answered in bounded replies: each chunk covers at
least one byte and never more than asked, holds no two adjacent extents
of the same status, and the walk adds up to the image's map."""

import struct

from nbdtest import *  # noqa: F401,F403
from prltest import prl_img, prl_io

MiB = 1 << 20
TiB = 1 << 40
CTXS = (b'base:allocation', b'qemu:allocation-depth')


def huge_image(p, n_alloc):
    """A 16 TiB WithouFreSpacExt image, 1 MiB clusters, written from
    parallels.rst: guest clusters 0, 2, 4, ... (n_alloc of them) and the
    last one allocated, each host cluster holding one byte."""
    cs, n_bat = MiB, 16 * TiB // MiB
    data_off = (64 + 4 * n_bat + cs - 1) // cs * cs
    guest = [2 * i for i in range(n_alloc)] + [n_bat - 1]
    hdr = struct.pack('<16sIIIIIQIIIQ', b'WithouFreSpacExt', 2, 16,
                      n_bat * cs // 512 // (16 * 32), cs // 512, n_bat,
                      n_bat * cs // 512, 0x312e3276, data_off // 512, 0, 0)
    with open(p, 'wb') as f:
        f.write(hdr)
        # The BAT is sparse: only the allocated entries are written.
        bat = bytearray(4 * (2 * n_alloc))
        for i, g in enumerate(guest[:-1]):
            struct.pack_into('<I', bat, 4 * g, data_off // cs + i)
        f.write(bat)
        f.seek(64 + 4 * (n_bat - 1))
        f.write(struct.pack('<I', data_off // cs + n_alloc))
        for i in range(len(guest)):
            f.seek(data_off + i * cs)
            f.write(b'\x01')
        f.truncate(data_off + len(guest) * cs)
    return guest


def expected(guest, size):
    """base:allocation of the huge image: [(offset, length, status)]."""
    out, pos = [], 0
    for g in guest:
        if g * MiB > pos:
            out.append((pos, g * MiB - pos, 3))
        out.append((g * MiB, MiB, 0))
        pos = (g + 1) * MiB
    if pos < size:
        out.append((pos, size - pos, 3))
    return out


def check_chunk(what, ext, asked):
    check(ext, '%s: empty chunk' % what)
    check(all(n > 0 for n, _ in ext), '%s: empty extent %r' % (what, ext))
    total = sum(n for n, _ in ext)
    check(total <= asked, '%s: %d bytes for %d asked' % (what, total, asked))
    check(len(ext) <= 1 << 20, '%s: %d extents' % (what, len(ext)))
    for a, b in zip(ext, ext[1:]):
        check(a[1] != b[1], '%s: adjacent extents of status %d' % (what,
                                                                   a[1]))
    return total


def walk(c, cid, size, step, what):
    """Map [0, size) with requests of |step| bytes; [(off, len, status)]
    merged, and the largest number of extents in one chunk."""
    out, pos, most = [], 0, 0
    while pos < size:
        n = min(step, size - pos)
        r = c.cmd(CMD_BLOCK_STATUS, pos, n)
        check(r.error == 0, '%s at %d: %r' % (what, pos, r))
        ext = r.status[cid]
        most = max(most, len(ext))
        got = check_chunk('%s at %d' % (what, pos), ext, n)
        for ln, st in ext:
            if out and out[-1][2] == st:
                out[-1] = (out[-1][0], out[-1][1] + ln, st)
            else:
                out.append((pos, ln, st))
            pos += ln
        check(got > 0, 'no progress')
    return out, most


def before_negotiation(img):
    with Server('-t', '-A', img) as srv:
        for mode in ('structured', 'extended'):
            c = Client(srv.sock)
            c.connect(structured=mode == 'structured',
                      extended=mode == 'extended')
            r = c.cmd(CMD_BLOCK_STATUS, 0, 4096)
            check(r.error == EINVAL, '%s: status without contexts %r' %
                  (mode, r))
            r = c.cmd(CMD_READ, 0, 4096)
            check(r.error == 0 and len(r.data) == 4096,
                  '%s: read after the refusal %r' % (mode, r))
            c.disconnect()
        # SET_META that selects nothing (unknown names only) is the same.
        c = Client(srv.sock)
        ids = c.connect(structured=True, meta=(b'x-nothing:here',))
        check(ids == {}, 'unknown context selected %r' % ids)
        r = c.cmd(CMD_BLOCK_STATUS, 0, 4096)
        check(r.error == EINVAL, 'status with nothing selected %r' % r)
        check(c.cmd(CMD_READ, 0, 512).error == 0, 'read after it')
        c.disconnect()


def three_contexts(img, uuid, size):
    bm = ('qemu:dirty-bitmap:' + uuid).encode()
    with Server('-r', '-t', '-A', '-B', uuid, img) as srv:
        for mode in ('structured', 'extended'):
            c = Client(srv.sock)
            ids = c.connect(structured=mode == 'structured',
                            extended=mode == 'extended',
                            meta=CTXS + (bm,))
            check(len(ids) == 3, 'ids %r' % ids)
            full = c.cmd(CMD_BLOCK_STATUS, 0, size)
            check(full.error == 0 and set(full.status) == set(ids.values()),
                  'full status %r' % full)
            # REQ_ONE, each context: one extent, within the request, the
            # start of the unrestricted answer.
            for off, n in ((0, size), (1000 * 512, 3 * MiB), (5 * MiB, 512),
                           (size - 4096, 4096), (65 * 512, 70000)):
                r = c.cmd(CMD_BLOCK_STATUS, off, n, F_REQ_ONE)
                ref = c.cmd(CMD_BLOCK_STATUS, off, n)
                check(r.error == 0 and ref.error == 0, 'REQ_ONE %r' % r)
                for name, cid in ids.items():
                    e = r.status[cid]
                    check(len(e) == 1 and 0 < e[0][0] <= n,
                          '%s REQ_ONE %s at %d+%d: %r' % (mode, name, off, n,
                                                          e))
                    first = ref.status[cid][0]
                    check(e[0] == (min(first[0], n), first[1]),
                          '%s REQ_ONE %s at %d: %r, unrestricted %r' %
                          (mode, name, off, e, first))
            # Past the end: refused, the connection goes on.
            for off, n in ((size - 512, 1024), (size, 512), (0, size + 1),
                           (size + 4096, 4096)):
                r = c.cmd(CMD_BLOCK_STATUS, off, n)
                check(r.error == EINVAL, '%s: status at %d+%d: %r' %
                      (mode, off, n, r))
            check(c.cmd(CMD_READ, 0, 512).error == 0, 'read after them')
            if mode == 'extended':
                payload_filter(c, ids, full, size)
            c.disconnect()


def payload_filter(c, ids, full, size):
    """BLOCK_STATUS_PAYLOAD: every subset of the three contexts, in
    either order, answers those and only those, as without a filter."""
    check(c.flags & T_BS_PAYLOAD, 'no BLOCK_STATUS_PAYLOAD flag')
    names = sorted(ids)
    subsets = [[a] for a in names] + [[a, b] for a in names for b in names
                                      if a != b] + [names[::-1]]
    for sub in subsets:
        want = [ids[n] for n in sub]
        pl = struct.pack('>Q', size) + b''.join(struct.pack('>I', i)
                                                for i in want)
        r = c.cmd(CMD_BLOCK_STATUS, 0, len(pl), F_PAYLOAD_LEN, pl)
        check(r.error == 0 and sorted(r.status) == sorted(want),
              'filter %r: %r' % (sub, r))
        for i in want:
            check(r.status[i] == full.status[i], 'filter %r: context %d '
                  'differs' % (sub, i))
        r = c.cmd(CMD_BLOCK_STATUS, 0, len(pl), F_PAYLOAD_LEN | F_REQ_ONE,
                  pl)
        check(r.error == 0 and sorted(r.status) == sorted(want) and
              all(len(v) == 1 for v in r.status.values()),
              'filter %r with REQ_ONE: %r' % (sub, r))
    for bad in (struct.pack('>QII', size, ids[names[0]], ids[names[0]]),
                struct.pack('>QI', size, 12345),
                struct.pack('>Q', size),
                struct.pack('>QI', size + 512, ids[names[0]])):
        r = c.cmd(CMD_BLOCK_STATUS, 0, len(bad), F_PAYLOAD_LEN, bad)
        check(r.error == EINVAL, 'bad filter %r: %r' % (bad, r))
    check(c.cmd(CMD_READ, 0, 512).error == 0, 'read after bad filters')


def huge(p):
    size = 16 * TiB
    guest = huge_image(p, 20000)
    want = expected(guest, size)
    with Server('-r', '-t', '-A', p) as srv:
        c = Client(srv.sock)
        ids = c.connect(structured=True, meta=CTXS)
        check(c.size == size, 'size %d' % c.size)
        alloc = ids['base:allocation']
        # 4 GiB - 1 at a time, over the first 64 GiB (all the small
        # extents) and then the last 4 GiB.
        got, most = walk(c, alloc, 64 << 30, (1 << 32) - 1, 'compact')
        check(got == [e for e in want if e[0] < 64 << 30][:-1] +
              [(want[-2][0], (64 << 30) - want[-2][0], 3)],
              'compact walk differs: %r' % got[-3:])
        check(most >= 4096, 'compact chunks cut short: %d extents' % most)
        r = c.cmd(CMD_BLOCK_STATUS, size - (1 << 32) + 1, (1 << 32) - 1)
        check(r.status[alloc] == [((1 << 32) - 1 - MiB, 3), (MiB, 0)],
              'last 4 GiB %r' % r)
        r = c.cmd(CMD_BLOCK_STATUS, 0, (1 << 32) - 1, F_REQ_ONE)
        check(r.status[alloc] == [(MiB, 0)], 'REQ_ONE %r' % r)
        c.disconnect()

        c = Client(srv.sock)
        ids = c.connect(extended=True, meta=CTXS)
        alloc, depth = ids['base:allocation'], ids['qemu:allocation-depth']
        # 2^40: one request would need 40 000 extents; replies stay
        # bounded and the walk still adds up.
        r = c.cmd(CMD_BLOCK_STATUS, 0, TiB)
        check(r.error == 0, '2^40 %r' % r)
        for cid in (alloc, depth):
            n = check_chunk('2^40', r.status[cid], TiB)
            check(len(r.status[cid]) < 40000 and n < 40000 * MiB,
                  'a 2^40 chunk of %d extents is not bounded' %
                  len(r.status[cid]))
        got, most = walk(c, alloc, size, TiB, 'extended')
        check(got == want, 'extended walk differs: %r' % got[-3:])
        r = c.cmd(CMD_BLOCK_STATUS, 64 << 30, TiB)
        check(r.status[alloc] == [(TiB, 3)] and r.status[depth] == [(TiB, 0)],
              'a hole of 2^40 in one extent: %r' % r)
        r = c.cmd(CMD_BLOCK_STATUS, size - TiB, TiB, F_REQ_ONE)
        check(r.status[alloc] == [(TiB - MiB, 3)], 'REQ_ONE 2^40 %r' % r)
        c.disconnect()


def test():
    img = make_raw('a.img', 4 * MiB)
    before_negotiation(img)

    # A Parallels image with odd 32256-byte clusters and a 512-byte
    # granule bitmap dirtied at odd places.
    size = 20000 * 512
    par = path('p.hdd')
    prl_img('create', '-q', '-f', 'parallels', '-o', 'cluster_size=32256',
            par, str(size))
    uuid = prl_img('bitmap', '--add', '-g', '512', par, 'auto').out.strip()
    prl_io(par, ['write -P 1 %d %d' % w for w in
                 ((1000 * 512 + 100, 70000), (5 * MiB, 1), (size - 600, 600),
                  (65 * 512, 512))], fmt='parallels')
    three_contexts(par, uuid, size)

    huge(path('huge.hdd'))


main(test)
