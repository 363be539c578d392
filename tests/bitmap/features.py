# SPDX-License-Identifier: MIT
"""Format Extension features built byte by byte from parallels.rst
(parext), next to a bitmap also built from the spec: prl reads that
bitmap as encoded (L1 entries 0, 1 and a cluster); an unknown NECESSARY
feature allows read-only opens only, and a read-write open fails naming
its magic and leaves the file unchanged; an unknown TRANSIT feature
survives a read-write open, writes and a clean close byte for byte; one
with neither flag is dropped on rewrite; a bad extension magic or
checksum is ignored with a warning read-only, refused read-write, and
dropped by `prl-img check -r all`, which says so.  prl writes no flags
QEMU would refuse unless a bitmap is disabled or inconsistent."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bmtest import KIB, MIB, add, bitmap, changes, expect_runs, info, io
import parext
import parimg
from parext import NECESSARY, TRANSIT, Feature
from prltest import check, main, path, prl_img, read_image, sha256

CS = 4 * KIB
SIZE = 40 * MIB              # 512 B granules: 10 KiB of bitmap, 3 clusters
GRAN = 512
NAME = '5eed0000-0000-4000-8000-0000000000b1'
UNKNOWN = 0x1122334455667788
TRANSIT_DATA = bytes(range(1, 14))   # 13 bytes: padded to 16 on disk


def spec_image(name, extra, dirty=False):
    """An image with guest data in clusters 0 and 5, a bitmap whose L1
    table is [cluster, 1, 0] (granules 0..7 and 100 dirty in the first
    16 MiB; 16..32 MiB all dirty) and the features |extra| after it.
    Returns (path, the dirty ranges the bitmap holds)."""
    img = parimg.Image(SIZE, CS)
    img.allocate(0, b'\x11' * CS)
    img.allocate(5, b'\x55' * 100)
    bits = bytearray(CS)
    bits[0] = 0xff
    bits[100 // 8] |= 1 << (100 % 8)
    bm_off = parext.place_cluster(img, bits)
    l1 = [bm_off // 512, 1, 0]
    check(len(l1) == parext.l1_size(SIZE, GRAN, CS), 'l1 size')
    feats = [parext.bitmap_feature(SIZE // 512, NAME, GRAN // 512, l1)]
    parext.attach_ext(img, feats + extra)
    if dirty:
        img.in_use = parimg.IN_USE_DIRTY
    # Guest data last, as prl keeps it (and QEMU's check wants it).
    img.allocate(7, b'\x77' * 10)
    p = path(name)
    img.write(p)
    runs = [(0, 8 * GRAN), (100 * GRAN, GRAN), (16 * MIB, 16 * MIB)]
    return p, runs


def ext_features(p):
    h, c = parext.read_ext(p)
    check(c is not None, '%s has no Format Extension' % p)
    e = parext.parse_ext(c)
    check(e['magic'] == parext.EXT_MAGIC and e['checksum_ok'],
          '%s: extension magic or checksum wrong' % p)
    return e['features']


def test_spec_bitmap():
    p, runs = spec_image('plain.hdd', [])
    b = info(p)[NAME]
    check(b['granularity'] == GRAN and b['enabled'] and b['consistent'],
          'bitmap built from the spec: %r' % b)
    expect_runs(p, NAME, runs, 'spec-built bitmap:')
    # A read-write session rewrites it: the old bits and the new write.
    changes(p, [('write', 20 * MIB, 1), ('write', 33 * MIB + 5, 700)])
    want = parext.expected_runs(runs + [(20 * MIB, 1), (33 * MIB + 5, 700)],
                                GRAN, SIZE)
    expect_runs(p, NAME, want, 'spec-built bitmap rewritten:')
    # Enabled, consistent bitmaps only: no flags anywhere, for QEMU.
    for f in ext_features(p):
        check(f['flags'] == 0 and f['magic'] == parext.FEATURE_DIRTY_BITMAP,
              'unexpected feature %r' % f)
    bitmap(p, '--disable', p, NAME)
    attrs = [f for f in ext_features(p)
             if f['magic'] == parext.FEATURE_PRL_ATTRS]
    check(len(attrs) == 1 and attrs[0]['flags'] == TRANSIT,
          'a disabled bitmap needs the attributes feature with TRANSIT: %r'
          % ext_features(p))
    bitmap(p, '--enable', p, NAME)
    check(all(f['flags'] == 0 for f in ext_features(p)),
          'attributes feature kept after --enable')


def test_necessary():
    for flags in (NECESSARY, NECESSARY | TRANSIT):
        p, runs = spec_image('nec.hdd', [Feature(UNKNOWN, flags, b'xyz')])
        before = sha256(p)
        # Read-only: fine, the bitmap is there, data reads.
        check(NAME in info(p), 'bitmap missing next to a NECESSARY feature')
        check(read_image(p, CS)[:1] == b'\x11', 'data')
        expect_runs(p, NAME, runs, 'next to a NECESSARY feature:')
        # Read-write: refused, naming the magic; nothing changes.
        for r in (io(p, ['write -P 1 0 1'], want=1),
                  bitmap(p, '--add', p, 'auto', want=1),
                  bitmap(p, '--clear', p, NAME, want=1),
                  prl_img('resize', p, str(SIZE + MIB), want=1)):
            check('0x1122334455667788' in r.err and 'NECESSARY' in r.err,
                  'read-write open error does not name the feature: %r' % r)
        check(sha256(p) == before, 'a refused read-write open changed it')


def test_transit():
    extra = [Feature(UNKNOWN, TRANSIT, TRANSIT_DATA),
             Feature(UNKNOWN + 1, TRANSIT, b'')]
    p, runs = spec_image('transit.hdd', extra)
    want_raw = [f.encode() for f in extra]
    old_ext = parimg.parse(p)['ext_off']
    changes(p, [('write', 30 * MIB, 4096), ('zero', 0, 4096),
                ('trim', 35 * MIB, 512)])
    add(p, granularity=64 * KIB)
    changes(p, [('write', 1 * MIB, 10)])
    check(parimg.parse(p)['ext_off'] != old_ext, 'extension not rewritten')
    got = [f['raw'] for f in ext_features(p) if f['magic'] in
           (UNKNOWN, UNKNOWN + 1)]
    check(got == want_raw, 'TRANSIT features changed:\n got  %r\n want %r'
          % (got, want_raw))
    want = parext.expected_runs(runs + [(30 * MIB, 4096), (0, 4096),
                                        (35 * MIB, 512), (MIB, 10)],
                                GRAN, SIZE)
    expect_runs(p, NAME, want, 'next to TRANSIT features:')
    check(read_image(p, CS) == bytes(CS), 'zeroed cluster reads back')


def test_neither():
    p, runs = spec_image('neither.hdd', [Feature(UNKNOWN, 0, b'drop me'),
                                         Feature(UNKNOWN + 2, 4, b'me too')])
    # Read-only opens keep the file as it is.
    before = sha256(p)
    info(p)
    check(sha256(p) == before, 'read-only open changed the file')
    changes(p, [('write', 2 * MIB, 1)])
    magics = [f['magic'] for f in ext_features(p)]
    check(magics == [parext.FEATURE_DIRTY_BITMAP],
          'features with neither flag kept: %s' % [hex(m) for m in magics])
    expect_runs(p, NAME, parext.expected_runs(runs + [(2 * MIB, 1)], GRAN,
                                              SIZE), 'after dropping:')


def test_bad_ext():
    for what in ('magic', 'checksum', 'no-end'):
        if what == 'magic':
            p, _ = spec_image('bad.hdd', [], )
            h = parimg.parse(p)
            parimg.poke(p, h['ext_off'] * 512, b'\x88')
        elif what == 'checksum':
            p, _ = spec_image('bad.hdd', [])
            h = parimg.parse(p)
            # A byte of the End record's area: parses, MD5 differs.
            parimg.poke(p, h['ext_off'] * 512 + CS - 1, b'\x01')
        else:
            img = parimg.Image(SIZE, CS)
            img.allocate(0, b'\x11' * CS)
            # One feature filling the cluster: no room for the End record.
            big = Feature(UNKNOWN, TRANSIT, bytes(CS - 48))
            parext.attach_ext(img, [big], end=False)
            img.allocate(1, b'\x22')
            p = path('bad.hdd')
            img.write(p)
        before = sha256(p)
        r = prl_img('info', '--output=json', p)
        check('ignoring the invalid Format Extension' in r.err,
              '%s: read-only open does not warn: %r' % (what, r))
        data = json.loads(r.out)['format-specific']['data']
        check(not data.get('bitmaps'), '%s: bitmaps of an ignored '
              'extension listed' % what)
        check(read_image(p, 1) == b'\x11', what + ': data')
        r = io(p, ['write -P 1 0 1'], want=1)
        check('Format Extension' in r.err and 'check -r all' in r.err,
              '%s: read-write open error: %r' % (what, r))
        bitmap(p, '--add', p, 'auto', want=1)
        check(sha256(p) == before, what + ': refused opens changed it')
        r = prl_img('check', p, want=2)
        check('Format Extension' in r.out + r.err, what + ': check: %r' % r)
        r = prl_img('check', '-r', 'all', p)
        check('dropped the Format Extension' in r.out + r.err,
              '%s: check -r all does not say it dropped it: %r' % (what, r))
        check(parimg.parse(p)['ext_off'] == 0, what + ': ext_off kept')
        io(p, ['write -P 2 1 1'])
        check(read_image(p, 2) == b'\x11\x02', what + ': data after repair')
        prl_img('check', p)


def test():
    test_spec_bitmap()
    test_necessary()
    test_transit()
    test_neither()
    test_bad_ext()


main(test)
