# SPDX-License-Identifier: MIT
"""prl-nbd's block status equals qemu-nbd's, range by range, on the same
files: nbdinfo --map of base:allocation, qemu:allocation-depth (both
servers with -A) and qemu:dirty-bitmap:UUID (both with -B; QEMU loads
Parallels bitmaps read-only) for a raw file and Parallels images of both
magics with odd cluster sizes (63 sectors = 32256 bytes, 252 KiB) and
bitmaps of granularities that do not divide or are not divided by the
cluster; each map also equals prl-img map (and map --bitmap) of the
file.  Bundles of three layers, which QEMU does not open: the depth map
equals prl-img map's, whose depth counts from 0 at the top where NBD
counts from 1."""

import json

from nbdtest import *  # noqa: F401,F403
from prltest import prl_img, prl_io

MiB = 1 << 20

# (offset, length) writes at odd places: inside a cluster, across
# cluster boundaries, a single byte, the very end of the disk.
def writes(size):
    return [(100000, 70000), (3000001, 1), (5 * MiB, 300000),
            (7 * MiB + 33, 96768), (size - 1000, 1000)]


def img_map(img, *args):
    return json.loads(prl_img('map', '--output=json', *args, img).out)


def merged(ranges):
    out = []
    for off, n, t in ranges:
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + n, t)
        else:
            out.append((off, n, t))
    return out


def alloc_of(m):
    """base:allocation types from prl-img map --output=json."""
    return merged([(e['start'], e['length'],
                    (0 if e['data'] else 1) | (2 if e['zero'] else 0))
                   for e in m])


def depth_of(m):
    """qemu:allocation-depth from prl-img map: its depth 0 is the top
    layer, NBD's 1; absent ranges are NBD's 0."""
    return merged([(e['start'], e['length'],
                    e['depth'] + 1 if e['present'] else 0) for e in m])


def bitmap_of(img, uuid):
    return merged([(e['start'], e['length'], 1 if e['dirty'] else 0)
                   for e in img_map(img, '--bitmap=' + uuid)])


def compare(what, prl_uri, qemu_uri, ctx, want):
    mine = nbdinfo_map(prl_uri, ctx)
    check(mine == want, '%s %s: prl-nbd %r\nprl-img map %r' %
          (what, ctx, mine, want))
    if qemu_uri:
        theirs = nbdinfo_map(qemu_uri, ctx)
        check(mine == theirs, '%s %s: prl-nbd %r\nqemu-nbd %r' %
              (what, ctx, mine, theirs))


def single(what, img, fmt, size, grans):
    """Serve |img| from both servers, with a bitmap per granularity in
    |grans| added before the writes; every map the same."""
    uuids = [prl_img('bitmap', '--add', '-g', str(g), img, 'auto').out.strip()
             for g in grans]
    if fmt == 'raw':
        with open(img, 'r+b') as f:
            for off, n in writes(size):
                f.seek(off // 4096 * 4096)
                f.write(b'\x5a' * ((off + n + 4095) // 4096 * 4096 -
                                   off // 4096 * 4096))
    else:
        prl_io(img, ['write -P %d %d %d' % (i + 1, off, n)
                     for i, (off, n) in enumerate(writes(size))], fmt=fmt)
    bargs = []
    for u in uuids:
        bargs += ['-B', u]
    m = img_map(img)
    with Server('-r', '-t', '-e', '0', '-A', '-f', fmt, *bargs, img) as srv:
        with QemuNbd(img, '-r', '-e', '2', '-A', '-f', fmt, *bargs) as q:
            compare(what, srv.uri, q.uri, 'base:allocation', alloc_of(m))
            compare(what, srv.uri, q.uri, 'qemu:allocation-depth',
                    depth_of(m))
            for u in uuids:
                compare(what, srv.uri, q.uri, 'qemu:dirty-bitmap:' + u,
                        bitmap_of(img, u))
                check(any(t for _, _, t in bitmap_of(img, u)),
                      '%s: bitmap %s not dirty' % (what, u))


def bundle():
    """Three layers: data in the base, the snapshot and the top, some of
    it overwritten above; depth 1, 2, 3 and 0 all occur."""
    b = path('disk.hdd')
    size = 12 * MiB
    prl_img('create', '-q', '-f', 'bundle', '-o', 'cluster_size=64K', b,
            str(size))
    prl_io(b, ['write -P 1 0 3M', 'write -P 1 8M 100000'])
    prl_img('snapshot', '-c', b)
    prl_io(b, ['write -P 2 1M 64K', 'write -P 2 5M 1M', 'write -P 2 9M 1'])
    prl_img('snapshot', '-c', b)
    prl_io(b, ['write -P 3 2M 70000', 'write -P 3 5M 4096',
               'write -P 3 11M 4096'])
    m = img_map(b)
    depths = {t for _, _, t in depth_of(m)}
    check(depths == {0, 1, 2, 3}, 'bundle depths %r' % depths)
    with Server('-r', '-t', '-A', b) as srv:
        compare('bundle', srv.uri, None, 'base:allocation', alloc_of(m))
        compare('bundle', srv.uri, None, 'qemu:allocation-depth',
                depth_of(m))


def test():
    requires('qemu-nbd', 'nbdinfo', 'qemu-img')
    size = 24 * MiB
    raw = make_raw('r.raw', size, pattern=False)
    single('raw', raw, 'raw', size, [])

    # 63-sector clusters, the legacy magic, 10000 KiB (not a whole
    # number of clusters); bitmaps of 512 bytes and 2 MiB granules.
    size = 20000 * 512
    leg = path('legacy.hdd')
    prl_img('create', '-q', '-f', 'parallels', '-o',
            'cluster_size=32256,subformat=legacy', leg, str(size))
    single('legacy/32256', leg, 'parallels', size, [512, 2 * MiB])

    # 252 KiB clusters, the ext magic; 128 KiB granules.
    size = 30 * MiB + 512
    ext = path('ext.hdd')
    prl_img('create', '-q', '-f', 'parallels', '-o', 'cluster_size=252K',
            ext, str(size))
    single('ext/252K', ext, 'parallels', size, [128 << 10])

    bundle()


main(test)
