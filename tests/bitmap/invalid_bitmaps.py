# SPDX-License-Identifier: MIT
"""Invalid dirty-bitmap features built from parallels.rst next to a
valid one: size other than the disk's sectors, granularity 0 or not a
power of two, data_size too small, l1_size wrong or past data_size, and
L1 entries misaligned, inside the header/BAT, past the end of the file,
on a BAT cluster, on the extension cluster, on another bitmap's cluster
or twice the same, and a second bitmap with the first's id.  Each is
reported by field and value and dropped: read-only opens list only the
valid bitmap and change nothing; a read-write session stores the valid
one (old bits and new) without the invalid one.  Marked NECESSARY, the
invalid one makes the image read-only: a read-write open fails and the
file is unchanged."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bmtest import KIB, MIB, expect_runs, info, io
import parext
import parimg
from parext import NECESSARY, Feature
from prltest import check, main, path, prl_img, read_image, sha256

CS = 4 * KIB
SIZE = 40 * MIB
GRAN = 512
SECTORS = SIZE // 512
GOOD = '600d0000-0000-4000-8000-000000000001'
BAD = 'bad00000-0000-4000-8000-000000000002'
L1N = parext.l1_size(SIZE, GRAN, CS)        # 3


def build(name, bad_feature_fn, flags=0):
    """Guest clusters 0 and 9 hold data; GOOD has granule 3 dirty (L1
    [cluster, 0, 0]); the bad bitmap comes from bad_feature_fn(layout),
    where layout names host offsets: 'good' (GOOD's cluster), 'spare'
    (an unused cluster, dirty bits in it), 'ext', 'bat0' (guest cluster
    0's), 'end' (the file's end)."""
    img = parimg.Image(SIZE, CS)
    img.allocate(0, b'\x11' * CS)
    bits = bytearray(CS)
    bits[0] = 1 << 3
    lay = {'good': parext.place_cluster(img, bits)}
    spare = bytearray(CS)
    spare[1] = 0xff
    lay['spare'] = parext.place_cluster(img, spare)
    lay['ext'] = img.host_offset(img.next_index)
    img.next_index += 1
    img.allocate(9, b'\x99' * 10)
    lay['bat0'] = img.host_offset(0)
    lay['end'] = img.host_offset(img.next_index)
    lay['data_off'] = img.data_offset()
    good = parext.bitmap_feature(SECTORS, GOOD, GRAN // 512,
                                 [lay['good'] // 512, 0, 0])
    bad = bad_feature_fn(lay)
    bad.flags |= flags
    parext.attach_ext(img, [good, bad], index=(lay['ext'] -
                                               img.data_offset()) // CS)
    p = path(name)
    img.write(p)
    check(os.path.getsize(p) == lay['end'], 'layout')
    return p


def bm(l1=None, size=SECTORS, gran=GRAN // 512, l1_size=None):
    return parext.bitmap_feature(size, BAD, gran,
                                 [0] * L1N if l1 is None else l1,
                                 l1_size=l1_size)


def at(key, delta=0, pos=0):
    """A bad bitmap whose L1 entry |pos| points at layout[key] + delta
    bytes (in sectors)."""
    def fn(lay):
        l1 = [0] * L1N
        l1[pos] = (lay[key] + delta) // 512
        return bm(l1)
    return fn


CASES = [
    # (what, feature builder, text the report must hold)
    ('size', lambda lay: bm(size=SECTORS - 1),
     'size = %d sectors, but the disk has %d' % (SECTORS - 1, SECTORS)),
    ('size-zero', lambda lay: bm(size=0), 'size = 0 sectors'),
    ('granularity-3', lambda lay: bm(gran=3), 'granularity = 3 sectors'),
    ('granularity-0', lambda lay: bm(gran=0), 'granularity = 0 sectors'),
    ('granularity-huge', lambda lay: bm(gran=1 << 23),
     'granularity = 8388608 sectors'),
    ('l1_size-small', lambda lay: bm(l1=[0] * (L1N - 1)),
     'l1_size = %d' % (L1N - 1)),
    ('l1_size-big', lambda lay: bm(l1=[0] * (L1N + 1)),
     'l1_size = %d' % (L1N + 1)),
    ('l1_size-past-data', lambda lay: bm(l1=[0] * L1N, l1_size=L1N + 5),
     'l1_size = %d' % (L1N + 5)),
    ('data_size-small', lambda lay: Feature(parext.FEATURE_DIRTY_BITMAP, 0,
                                            bytes(16)),
     'data_size = 16'),
    ('l1-misaligned', at('spare', 512), 'L1 entry 0 = %d'),
    ('l1-in-bat', lambda lay: bm([1, 2, 0]), 'L1 entry 1 = 2'),
    ('l1-past-eof', at('end'), 'L1 entry 0 = %d'),
    ('l1-past-eof-2', at('end', 7 * CS, pos=2), 'L1 entry 2 = %d'),
    ('l1-bat-cluster', at('bat0'), 'L1 entry 0 = %d'),
    ('l1-ext-cluster', at('ext', pos=1), 'L1 entry 1 = %d'),
    ('l1-other-bitmap', at('good'), 'L1 entry 0 = %d'),
    ('same-id', lambda lay: parext.bitmap_feature(
        SECTORS, GOOD, 2, [0] * parext.l1_size(SIZE, 1024, CS)),
     'id = %s is the id of an earlier bitmap' % GOOD),
    ('l1-twice', lambda lay: bm([lay['spare'] // 512, lay['spare'] // 512,
                                 0]),
     'L1 entry 1 = %d'),
]


def reported(err, what, text, p):
    check('dropping an invalid dirty bitmap' in err,
          '%s: no warning that it is dropped: %r' % (what, err))
    if '%d' in text:
        # The L1 value: read it back from the file.
        _, c = parext.read_ext(p)
        feats = parext.parse_ext(c)['features']
        b = parext.decode_bitmap(feats[1]['data'])
        n = int(text.split()[2])
        text = text % b['l1'][n]
    check(text in err, '%s: report does not hold %r: %r' % (what, text, err))


def one(what, fn, text):
    p = build('bad.hdd', fn)
    before = sha256(p)
    r = prl_img('info', p)
    reported(r.err, what, text, p)
    bi = info(p)
    check(list(bi) == [GOOD], '%s: bitmaps listed: %s' % (what, list(bi)))
    expect_runs(p, GOOD, [(3 * GRAN, GRAN)], what + ' read-only:')
    check(read_image(p, 2) == b'\x11\x11', what + ': data')
    check(sha256(p) == before, what + ': read-only opens changed it')

    # Read-write: dropped, the valid one stored with the new write.
    r = io(p, ['write -P 7 %d 1' % (20 * MIB)])
    check('dropping an invalid dirty bitmap' in r.err,
          '%s: read-write open does not warn: %r' % (what, r))
    stored = parext.read_bitmaps(p)
    check(list(stored) == [GOOD], '%s: stored after rewrite: %s'
          % (what, list(stored)))
    expect_runs(p, GOOD, [(3 * GRAN, GRAN), (20 * MIB, GRAN)],
                what + ' rewritten:')
    check(read_image(p, 2) == b'\x11\x11', what + ': data after rewrite')
    r = prl_img('info', p)
    check('dropping' not in r.err, what + ': still warns after rewrite')
    # What the extension referenced is either still valid or given back.
    prl_img('check', p)

    # NECESSARY: read-only opens as before; read-write refused.
    p = build('bad-nec.hdd', fn, NECESSARY)
    before = sha256(p)
    r = prl_img('info', p)
    reported(r.err, what + ' (NECESSARY)', text, p)
    r = io(p, ['write -P 7 0 1'], want=1)
    check('NECESSARY' in r.err and 'read-only' in r.err,
          '%s: NECESSARY read-write open: %r' % (what, r))
    reported(r.err.replace('cannot be loaded', 'dropping an invalid dirty '
                           'bitmap'), what + ' (NECESSARY rw)', text, p)
    check(sha256(p) == before, what + ': refused open changed it')


def test():
    for what, fn, text in CASES:
        one(what, fn, text)


main(test)
