# SPDX-License-Identifier: MIT
"""prl-img map --output=json against qemu-img map --output=json on raw
files with holes and on Parallels images written by QEMU and by prl: the
same extents with the same fields (start, length, depth, present, zero,
data, offset), after merging neighbours that differ in nothing but their
split.

Legitimate differences: QEMU rounds a raw file's size up to a whole
sector and maps that tail as a hole past the end of the file ("start":
3000000, "length": 320 for a 3000000-byte file) where prl maps exactly the
file's bytes, so canonical() clips that tail; and QEMU ignores the Empty
flag, where prl follows the spec (test_empty_flag)."""

import json

import parimg
from prltest import (Failure, check, main, path, prl_img, prl_io, requires,
                     run)

KEYS = ('depth', 'present', 'zero', 'data')


def canonical(extents, size):
    """Clip to |size| bytes and merge neighbours with the same flags and
    contiguous offsets, so two tools that split runs differently (but
    agree on every byte) compare equal."""
    out = []
    for e in extents:
        start, length = e['start'], e['length']
        if start >= size:
            continue
        length = min(length, size - start)
        e = dict(e, length=length)
        if out:
            p = out[-1]
            same = all(p.get(k) == e.get(k) for k in KEYS)
            contiguous = (('offset' in p) == ('offset' in e) and
                          ('offset' not in e or
                           p['offset'] + p['length'] == e['offset']))
            if same and contiguous and p['start'] + p['length'] == start:
                p['length'] += length
                continue
        out.append(e)
    return out


def compare_maps(name, img, fmt, size):
    q = json.loads(run(['qemu-img', 'map', '--output=json', '-f', fmt,
                        img]).out)
    p = json.loads(prl_img('map', '--output=json', '-f', fmt, img).out)
    # prl's own map covers the image exactly, without gaps.
    pos = 0
    for e in p:
        check(e['start'] == pos and e['length'] > 0,
              '%s: prl map has a gap or overlap at %d: %r' % (name, pos, e))
        check(set(e) >= {'start', 'length', 'depth', 'present', 'zero',
                         'data'}, '%s: missing fields in %r' % (name, e))
        # A host offset exists for every byte of a raw file and for the
        # allocated clusters of an image.
        check(('offset' in e) == (fmt == 'raw' or e['data']),
              '%s: offset field in %r' % (name, e))
        pos += e['length']
    check(pos == size, '%s: prl map covers %d of %d bytes' % (name, pos,
                                                               size))
    cq, cp = canonical(q, size), canonical(p, size)
    if cq != cp:
        raise Failure('%s: maps differ\nqemu: %s\nprl:  %s'
                      % (name, json.dumps(cq), json.dumps(cp)))
    print('%s: %d extents agree' % (name, len(cp)))
    return cp


def raw_cases():
    # (name, size, [(offset, length)] written with data)
    return [
        ('raw-empty', 1 << 20, []),
        ('raw-full', 256 << 10, [(0, 256 << 10)]),
        ('raw-holes', 3000000, [(65536, 3), (2999999, 1)]),
        ('raw-many', 8 << 20, [(i * 655360 + 4096 * (i % 3), 12345)
                               for i in range(12)]),
        ('raw-odd-end', 5 * 4096 + 100, [(5 * 4096, 100)]),
    ]


def test_raw():
    for name, size, writes in raw_cases():
        p = path(name + '.raw')
        with open(p, 'wb') as f:
            f.truncate(size)
            for off, length in writes:
                f.seek(off)
                f.write(b'\xaa' * length)
        m = compare_maps(name, p, 'raw', size)
        check(all(e['depth'] == 0 and e['present'] for e in m),
              '%s: raw extents are all present at depth 0' % name)
        if writes and name != 'raw-full':
            check(any(e['zero'] for e in m), name + ': no hole found')


def test_qemu_parallels():
    for cs in (4096, 32256, 65536, 262144, 1 << 20):
        img = path('q-%d.hdd' % cs)
        size = 16 * cs
        run(['qemu-img', 'create', '-f', 'parallels', '-o',
             'cluster_size=%d' % cs, img, str(size)])
        run(['qemu-io', '-f', 'parallels',
             '-c', 'write -P 1 %d %d' % (cs * 5 + 3, 2 * cs),
             '-c', 'write -P 2 0 512',
             '-c', 'write -P 3 %d %d' % (cs * 15, cs),
             '-c', 'write -P 4 %d 1' % (cs * 9), img])
        m = compare_maps('qemu-made %d' % cs, img, 'parallels', size)
        check(sum(e['length'] for e in m if e['data']) == 6 * cs,
              'qemu-made %d: 6 clusters of data' % cs)


def test_prl_parallels():
    shapes = [(4096, 'ext'), (32256, 'ext'), (32256, 'legacy'),
              (262144, 'legacy'), (1 << 20, 'ext')]
    for cs, sub in shapes:
        img = path('p-%d-%s.hdd' % (cs, sub))
        size = 16 * cs - 512
        prl_img('create', '-f', 'parallels', '-o',
                'cluster_size=%d,subformat=%s' % (cs, sub), img, size)
        # Host order differs from guest order; a trimmed cluster is a hole
        # again; a NO_UNMAP zero keeps its cluster allocated.
        prl_io(img, ['write -P 1 %d 100' % (cs * 12),
                     'write -P 2 %d %d' % (cs * 2 - 1, cs + 2),
                     'write -P 3 %d 1' % (size - 1),
                     'write -P 4 %d %d' % (cs * 7, cs),
                     'trim %d %d' % (cs * 7, cs),
                     'write -P 5 %d 10' % (cs * 8),
                     'zero -u %d %d' % (cs * 8, cs)])
        m = compare_maps('prl-made %d %s' % (cs, sub), img, 'parallels',
                         size)
        data = sum(e['length'] for e in m if e['data'])
        check(data == 6 * cs - 512, 'prl-made %d: %d bytes of data'
              % (cs, data))
    # A legacy image with data_off = 0 (clusters 512 bytes into the file).
    im = parimg.Image(10 * 32256, 32256, ext=False, data_off=0)
    im.allocate(3, b'\x07' * 100)
    im.allocate(0, b'\x08' * 32256)
    img = path('legacy0.hdd')
    im.write(img)
    m = compare_maps('legacy data_off=0', img, 'parallels', im.size)
    offsets = [e['offset'] for e in m if e['data']]
    check(offsets == [512 + 32256, 512], 'legacy0 offsets %r' % offsets)


def test_ranges():
    """--start-offset and --max-length, inside, at and past the end: the
    output is exactly qemu-img's."""
    img = path('ranges.hdd')
    cs = 256 << 10
    prl_img('create', '-f', 'parallels', '-o', 'cluster_size=%d' % cs, img,
            16 * cs)
    prl_io(img, ['write -P 1 %d %d' % (cs - 5, cs), 'write -P 2 %d 1'
                 % (9 * cs)])
    size = 16 * cs
    for start, length in [(300000, 1000000), (cs, None), (0, 5),
                          (size - 1, None), (size, None), (size + 7, None),
                          (cs + 1, cs - 2), (9 * cs + 100, 10 * cs)]:
        opts = ['--start-offset=%d' % start]
        if length is not None:
            opts.append('--max-length=%d' % length)
        q = run(['qemu-img', 'map', '--output=json', '-f', 'parallels'] +
                opts + [img])
        p = prl_img('map', '--output=json', '-f', 'parallels', *opts, img)
        check(json.loads(p.out) == json.loads(q.out),
              'map %s: qemu %s, prl %s' % (' '.join(opts), q.out, p.out))


def test_empty_flag():
    """The spec's Empty flag (header flags bit 0): the image reads as
    zeroes whatever the BAT holds.  QEMU 7.2 ignores the flag and maps
    (and reads) the stale clusters; prl follows the spec, so here the two
    maps differ on purpose."""
    im = parimg.Image(8 * 65536, 65536)
    im.allocate(2, b'\x09' * 65536)
    im.flags = parimg.FLAG_EMPTY
    img = path('empty-flag.hdd')
    im.write(img)
    p = json.loads(prl_img('map', '--output=json', img).out)
    check(p == [{'start': 0, 'length': im.size, 'depth': 0,
                 'present': False, 'zero': True, 'data': False}],
          'Empty flag: prl map %r' % p)
    q = json.loads(run(['qemu-img', 'map', '--output=json', '-f',
                        'parallels', img]).out)
    check(any(e['data'] for e in q), 'QEMU now honours the Empty flag: %r'
          % q)
    zero = path('zero.raw')
    with open(zero, 'wb') as f:
        f.truncate(im.size)
    prl_img('compare', img, zero)
    print('Empty flag: prl maps no data; QEMU maps the stale cluster')


def test():
    requires('qemu-img', 'qemu-io')
    test_raw()
    test_qemu_parallels()
    test_prl_parallels()
    test_ranges()
    test_empty_flag()


main(test)
