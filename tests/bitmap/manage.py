# SPDX-License-Identifier: MIT
"""prl-img bitmap, info and convert --bitmaps: auto and given names,
clear errors for bad names, granularities and unknown bitmaps (file
unchanged), --disable stops marking and survives close/reopen, --enable,
--merge within an image and from another (-b) of another granularity,
--remove, several actions in one call, info's human and JSON fields,
convert --bitmaps, and a bitmap that no longer fits in the Format
Extension cluster, which must not cost the others their consistency."""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bmtest import (KIB, MIB, add, bitmap, changes, create, expect_runs,
                    info, io, map_runs)
import parext
import parimg
from prltest import check, main, prl_img, read_image, sha256

SIZE = 8 * MIB + 512
UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}'
                     r'-[0-9a-f]{12}$')
A = '0a0a0a0a-0000-4000-8000-00000000000a'
B = '0b0b0b0b-0000-4000-8000-00000000000b'


def test_names():
    img = create('names.hdd', SIZE, 64 * KIB)
    n1, n2 = add(img), add(img)
    for n in (n1, n2):
        check(UUID_RE.match(n), 'auto made %r, not a random UUID' % n)
    check(n1 != n2, 'two auto names are the same')
    upper = 'ABCDEF01-2345-4789-ABCD-EF0123456789'
    check(add(img, upper) == upper.lower(), 'upper-case name')
    check(set(info(img)) == {n1, n2, upper.lower()}, 'info names')
    # Either case finds it.
    bitmap(img, '--clear', img, upper)
    bitmap(img, '--disable', img, upper.lower())
    before = sha256(img)
    for bad in ('foo', '', 'AUTO', A[:-1], A + '0', A.replace('-', 'x', 1),
                'g' + A[1:], ' ' + A[1:], A[:-1] + ' ', '{%s}' % A[:-2]):
        r = bitmap(img, '--add', img, bad, want=1)
        check("bitmap name '%s' is not a UUID" % bad in r.err,
              'bad name %r: %r' % (bad, r))
    r = bitmap(img, '--add', img, n1, want=1)
    check('already has a bitmap' in r.err and n1 in r.err, 'dup: %r' % r)
    for op in ('--remove', '--clear', '--enable', '--disable'):
        r = bitmap(img, op, img, A, want=1)
        check("has no bitmap '%s'" % A in r.err, '%s unknown: %r' % (op, r))
    r = bitmap(img, '--merge', A, img, n1, want=1)
    check("has no bitmap '%s'" % A in r.err, 'merge unknown source: %r' % r)
    r = bitmap(img, '--merge', n1, img, A, want=1)
    check("has no bitmap '%s'" % A in r.err, 'merge unknown dest: %r' % r)
    r, res = map_runs(img, A, want=1)
    check(r is None, 'map of an unknown bitmap')
    check(res.out == '' and "has no bitmap '%s'" % A in res.err,
          'map of an unknown bitmap printed more than its error: %r' % res)
    res = prl_img('map', '--bitmap=' + A, img, want=1)
    check(res.out == '', 'human map of an unknown bitmap: %r' % res)
    check(sha256(img) == before, 'failed commands changed the file')


def test_granularity():
    img = create('gran.hdd', SIZE, 64 * KIB)
    before = sha256(img)
    for g in ('1000', '256', '3K', '511', '4G', '2T', '8E'):
        r = bitmap(img, '--add', '-g', g, img, A, want=1)
        check('granularity' in r.err and 'power of two' in r.err,
              '-g %s: %r' % (g, r))
    for g in ('-1', 'abc', '1Q'):
        r = bitmap(img, '--add', '-g', g, img, A, want=1)
        check("invalid granularity '%s'" % g in r.err, '-g %s: %r' % (g, r))
    r = bitmap(img, '--clear', '-g', '1M', img, A, want=1)
    check('-g only applies to --add' in r.err, '-g without --add: %r' % r)
    r = bitmap(img, '--clear', '-b', img, img, A, want=1)
    check('-b only applies to --merge' in r.err, '-b without merge: %r' % r)
    check(sha256(img) == before, 'refused granularities changed the file')
    # The extremes that are valid, and the default.
    for g, name in ((512, A), (2 << 30, B)):
        add(img, name, g)
        check(info(img)[name]['granularity'] == g, 'granularity %d' % g)
    d = add(img, granularity=0)
    check(info(img)[d]['granularity'] == 64 * KIB, 'default granularity')
    changes(img, [('write', SIZE - 1, 1)])
    expect_runs(img, B, [(0, SIZE)], '2 GiB granules:')
    expect_runs(img, A, [(SIZE - 512, 512)], '512 B granules:')


def test_enable_disable():
    img = create('en.hdd', SIZE, 64 * KIB)
    add(img, A, 4 * KIB)
    add(img, B, 4 * KIB)
    # Two actions in one call run in order: B is disabled before writes.
    bitmap(img, '--clear', '--disable', img, B)
    b = info(img)
    check(b[A]['enabled'] and not b[B]['enabled'] and b[B]['consistent'],
          'after --disable: %r' % b)
    changes(img, [('write', 0, 100)])
    expect_runs(img, A, [(0, 4096)], 'enabled:')
    expect_runs(img, B, [], 'disabled:')
    check(not info(img)[B]['enabled'], 'disabled did not survive reopen')
    changes(img, [('zero', MIB, 8192), ('trim', 2 * MIB, 1)])
    expect_runs(img, B, [], 'disabled, second session:')
    r = prl_img('info', img)
    for line in ('name: ' + B, 'granularity: 4096', 'enabled: false',
                 'consistent: true', 'dirty bytes: 0'):
        check(line in r.out, 'human info lacks %r:\n%s' % (line, r.out))
    bitmap(img, '--enable', img, B)
    changes(img, [('write', 3 * MIB + 1, 1)])
    expect_runs(img, B, [(3 * MIB, 4096)], 'enabled again:')
    expect_runs(img, A, [(0, 4096), (MIB, 8192), (2 * MIB, 4096),
                         (3 * MIB, 4096)], 'always enabled:')
    # Disable and enable again in one call: enabled, no attributes left.
    bitmap(img, '--disable', '--enable', img, A)
    h, c = parext.read_ext(img)
    check(all(f['flags'] == 0 for f in parext.parse_ext(c)['features']),
          'features with flags left for enabled bitmaps')


def test_merge():
    img = create('m.hdd', SIZE, 64 * KIB)
    fine, coarse = add(img, A, 512), add(img, B, MIB)
    ca = add(img, granularity=4 * KIB)
    bitmap(img, '--disable', img, ca)
    w = [(1000, 10), (3 * MIB + 4096, 1)]
    changes(img, [('write', o, n) for o, n in w])
    expect_runs(img, fine, parext.expected_runs(w, 512, SIZE), 'fine:')
    # Fine into a cleared coarse one: its granules round out.
    bitmap(img, '--clear', '--merge', fine, img, coarse)
    expect_runs(img, coarse, parext.expected_runs(w, MIB, SIZE),
                'fine merged into coarse:')
    bitmap(img, '--merge', coarse, img, fine)
    expect_runs(img, fine, parext.expected_runs(w, MIB, SIZE),
                'coarse merged into fine:')
    bitmap(img, '--merge', fine, img, fine)        # into itself
    expect_runs(img, fine, parext.expected_runs(w, MIB, SIZE), 'self:')
    bitmap(img, '--clear', img, fine)
    changes(img, [('write', 7 * MIB + 3, 1)])
    bitmap(img, '--merge', fine, img, ca)          # into a disabled one
    expect_runs(img, ca, [(7 * MIB, 4096)], 'fine merged into 4K:')
    check(not info(img)[ca]['enabled'], 'merge enabled the target')

    # From another image (-b), another granularity; same image twice.
    other = create('o.hdd', SIZE, 4 * KIB, legacy=True)
    src = add(other, granularity=128 * KIB)
    changes(other, [('write', 5 * MIB + 1, 1), ('write', SIZE - 1, 1)])
    bitmap(img, '--clear', '--merge', src, '-b', other, '-F', 'parallels',
           img, ca)
    expect_runs(img, ca, [(5 * MIB, 128 * KIB), (8 * MIB, 512)],
                'merged from -b:')
    before = sha256(other)
    bitmap(img, '--merge', src, '-b', img, img, ca, want=1)
    check(sha256(other) == before, 'merge source changed')
    small = create('small.hdd', SIZE - 512, 64 * KIB)
    s2 = add(small)
    r = bitmap(img, '--merge', s2, '-b', small, img, ca, want=1)
    check('different disk sizes' in r.err, 'size mismatch: %r' % r)


def test_remove():
    img = create('rm.hdd', SIZE, 4 * KIB)
    names = [add(img, granularity=512) for _ in range(3)]
    changes(img, [('write', 0, 3 * MIB)])
    check(len(parext.read_bitmaps(img)) == 3, 'three stored')
    bitmap(img, '--remove', img, names[1])
    check(set(info(img)) == {names[0], names[2]}, 'info after --remove')
    check(set(parext.read_bitmaps(img)) == {names[0], names[2]},
          'stored after --remove')
    r, _ = map_runs(img, names[1], want=1)
    bitmap(img, '--remove', img, names[1], want=1)
    # Add, then remove in one call: nothing stored.
    bitmap(img, '--add', '--remove', img, A)
    check(set(info(img)) == {names[0], names[2]}, 'add + remove')
    bitmap(img, '--remove', img, names[0])
    bitmap(img, '--remove', img, names[2])
    check(parimg.parse(img)['ext_off'] == 0, 'ext_off after the last remove')
    check(read_image(img, 3 * MIB) == b'\x30' * 3 * MIB, 'data kept')
    # The freed bitmap clusters hold nothing any more.
    r = prl_img('check', img)
    check('leak' not in (r.out + r.err).lower(), 'leaks: %r' % r)


def test_convert():
    src = create('cs.hdd', SIZE, 4 * KIB)
    a, b = add(src, A, 512), add(src, B, 64 * KIB)
    changes(src, [('write', 70000, 5000), ('zero', 6 * MIB, 4096)])
    bitmap(src, '--disable', src, b)
    want = {n: map_runs(src, n)[0] for n in (a, b)}
    for opts in ('cluster_size=1M', 'cluster_size=32256,subformat=legacy'):
        dst = create('cd.hdd', 1, 4 * KIB)
        os.unlink(dst)
        prl_img('convert', '--bitmaps', '-O', 'parallels', '-o', opts, src,
                dst)
        bi = info(dst)
        check(set(bi) == {a, b}, 'converted names %s' % sorted(bi))
        check(bi[a]['granularity'] == 512 and bi[a]['enabled'] and
              bi[b]['granularity'] == 64 * KIB and not bi[b]['enabled'],
              'converted attributes: %r' % bi)
        for n in (a, b):
            expect_runs(dst, n, want[n], 'converted %s:' % opts)
        check(read_image(dst, SIZE) == read_image(src, SIZE), 'data')
        os.unlink(dst)
        prl_img('convert', '-O', 'parallels', '-o', opts, src, dst)
        check(info(dst) == {}, 'convert without --bitmaps copied them')
        os.unlink(dst)
    raw = src + '.raw'
    r = prl_img('convert', '--bitmaps', '-O', 'raw', src, raw, want=1)
    check('cannot store dirty bitmaps' in r.err, 'to raw: %r' % r)


def test_full_extension():
    """512-byte clusters hold a few bitmaps: the one too many is refused
    and the image stays clean with the others consistent."""
    img = create('full.hdd', MIB, 512)
    names = []
    for _ in range(20):
        r = bitmap(img, '--add', img, 'auto', want=None)
        if r.rc != 0:
            break
        names.append(r.out.strip())
    check(0 < len(names) < 20, 'every add fitted: %d' % len(names))
    check('does not fit' in r.err, 'overflowing add: %r' % r)
    check(r.out == '', 'a refused add printed a name: %r' % r.out)
    check(parimg.parse(img)['in_use'] == parimg.IN_USE_CLEAN,
          'a refused add left the image unclean')
    bi = info(img)
    check(set(bi) == set(names), 'bitmaps after the refused add: %s'
          % sorted(bi))
    check(all(b['consistent'] for b in bi.values()),
          'a refused add made bitmaps inconsistent: %r' % bi)
    prl_img('check', img)
    io(img, ['write -P 1 0 512'])
    for n in names:
        expect_runs(img, n, [(0, 64 * KIB)], 'full extension:')


def test():
    test_names()
    test_granularity()
    test_enable_disable()
    test_merge()
    test_remove()
    test_convert()
    test_full_extension()


main(test)
