# SPDX-License-Identifier: MIT
"""Round trip of persistent dirty bitmaps: on images of several cluster
sizes (512 B, 4 KiB, 32256-byte legacy, 1 MiB) a bitmap of several
granularities (512 B .. 1 MiB) is added, writes, zeroes and trims go
through prl-io in two sessions, and after each clean close the dirty
extents of `prl-img map --bitmap` (JSON and human) and of the bitmap
decoded from the file by the spec (parext) are exactly the changed
ranges rounded out to the granularity; L1 entries take all three forms
(0, 1, a cluster); --clear leaves none and frees the bitmap clusters."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bmtest import (KIB, MIB, add, bitmap, changes, create, disk_size,
                    expect_runs, human_runs, info, map_runs)
import parext
import parimg
from prltest import check, main, read_image

# Not a multiple of any granularity: the last granule is partial.
SIZE = 56 * MIB + 3 * 512


def ops_for(size, cs, g):
    """Two sessions of changes touching granule and cluster edges."""
    s1 = [
        ('write', 1, 1000),                 # unaligned, inside one granule
        ('write', 131000, 70000),           # across granules and clusters
        ('zero', 5 * MIB, 4096),            # zero, unmapping
        ('trim', 7 * MIB + 3, 100),         # trim marks too
        ('write', size - 10, 10),           # the partial last granule
    ]
    s2 = [
        ('zero-u', 9 * MIB - 512, 1024),    # zero without unmap
        ('write', 2 * g + 1, 1),            # a single byte
        ('write', 131000, 10),              # again: no change
        # 16 MiB by zeroing: with 512-byte granules and 4 KiB clusters
        # that is one whole bitmap cluster, stored as L1 entry 1.
        ('zero', 16 * MIB, 16 * MIB),
    ]
    return s1, s2


def check_l1_forms(img, name, cs, g):
    """With 512 B granules in 4 KiB clusters the stored L1 table holds
    0 (clean cluster), 1 (all-dirty cluster) and cluster offsets."""
    b = parext.read_bitmaps(img)[name]
    l1 = b['l1']
    check(len(l1) == parext.l1_size(disk_size(img), g, cs),
          'l1_size %d for %d-byte granules in %d-byte clusters'
          % (len(l1), g, cs))
    if cs == 4 * KIB and g == 512:
        check(0 in l1 and 1 in l1 and any(e > 1 for e in l1),
              'L1 table %s lacks one of the forms 0, 1, offset' % l1)
    h = parimg.parse(img)
    used = {e * (cs if h['ext'] else 512) for e in h['bat'] if e}
    for e in l1:
        if e > 1:
            off = e * 512
            check((off - h['data_offset']) % cs == 0,
                  'L1 entry %d is not on the cluster grid' % e)
            check(off not in used, 'L1 entry %d is a BAT cluster' % e)
            check(off + cs <= os.path.getsize(img),
                  'L1 entry %d is past the end of the file' % e)


def one(cs, legacy, g):
    what = 'cluster %d%s granularity %d:' % (cs, ' legacy' if legacy else '',
                                              g)
    img = create('rt.hdd', SIZE, cs, legacy)
    name = add(img, granularity=g)
    b = info(img)[name]
    check(b['granularity'] == g and b['enabled'] and b['consistent'] and
          b['dirty-bytes'] == 0, '%s new bitmap: %r' % (what, b))
    check(map_runs(img, name)[0] == [], what + ' new bitmap is not clean')

    s1, s2 = ops_for(SIZE, cs, g)
    done = changes(img, s1)
    want = parext.expected_runs(done, g, SIZE)
    expect_runs(img, name, want, what + ' session 1')
    done += changes(img, s2)
    want = parext.expected_runs(done, g, SIZE)
    expect_runs(img, name, want, what + ' session 2')
    check(human_runs(img, name) == want, what + ' human map differs')
    check_l1_forms(img, name, cs, g)
    check(parimg.parse(img)['in_use'] == parimg.IN_USE_CLEAN,
          what + ' not closed cleanly')

    # A read-only open changes nothing.
    before = os.path.getsize(img)
    read_image(img, 4096)
    expect_runs(img, name, want, what + ' after a read-only open')
    check(os.path.getsize(img) == before, what + ' read-only open grew it')

    # --clear: nothing dirty, nothing stored but L1 zeroes.
    bitmap(img, '--clear', img, name)
    expect_runs(img, name, [], what + ' after --clear')
    l1 = parext.read_bitmaps(img)[name]['l1']
    check(all(e == 0 for e in l1), '%s cleared L1 table %s' % (what, l1))


def test():
    for cs, legacy, grans in [
        (4 * KIB, False, [512, 64 * KIB, MIB]),
        (32256, True, [512, 4 * KIB, MIB]),
        (MIB, False, [512, 64 * KIB, MIB]),
        (512, False, [4 * KIB]),
    ]:
        for g in grans:
            one(cs, legacy, g)


main(test)
