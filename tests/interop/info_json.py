# SPDX-License-Identifier: MIT
"""prl-img info --output=json: the right format, virtual-size and
cluster-size for Parallels images made by QEMU and by prl (both magics,
many cluster sizes) and for raw files, agreeing with qemu-img info on the
virtual size; the Parallels details match the header; the dirty flag
follows in_use.

Legitimate differences with QEMU: QEMU 7.2 reports no cluster-size for
Parallels images (prl does, from tracks), and rounds a raw file's size up
to a whole sector (prl reports the file's size)."""

import json

import parimg
from prltest import DIRTY, check, main, path, prl_img, requires, run


def infos(img, fmt):
    q = json.loads(run(['qemu-img', 'info', '--output=json', '-f', fmt,
                        img]).out)
    p = json.loads(prl_img('info', '--output=json', '-f', fmt, img).out)
    for probe in ([], ['-f', fmt]):
        again = json.loads(prl_img('info', '--output=json', *probe,
                                   img).out)
        check(again['format'] == fmt, '%s: probed as %s' % (img, again))
    return q, p


def expect(p, q, fmt, size, cs, name):
    check(p['format'] == fmt, '%s: format %r' % (name, p.get('format')))
    check(p['virtual-size'] == size, '%s: virtual-size %r, want %d'
          % (name, p.get('virtual-size'), size))
    check(q['virtual-size'] == size, '%s: qemu says %r'
          % (name, q['virtual-size']))
    check(p['filename'] == q['filename'], '%s: filename %r'
          % (name, p.get('filename')))
    if cs is None:
        check('cluster-size' not in p or p['cluster-size'] in (0, None),
              '%s: raw has no clusters: %r' % (name, p))
    else:
        check(p.get('cluster-size') == cs, '%s: cluster-size %r, want %d'
              % (name, p.get('cluster-size'), cs))
    check(isinstance(p.get('actual-size'), int), '%s: actual-size' % name)


def test():
    requires('qemu-img')
    for cs in (512, 4096, 32256, 65536, 258048, 262144, 1 << 20, 2 << 20):
        size = 7 * cs + 1024
        img = path('q-%d.hdd' % cs)
        run(['qemu-img', 'create', '-f', 'parallels', '-o',
             'cluster_size=%d' % cs, img, str(size)])
        q, p = infos(img, 'parallels')
        expect(p, q, 'parallels', size, cs, 'qemu-made %d' % cs)
        d = p['format-specific']['data']
        check(d['subformat'] == 'WithouFreSpacExt', 'subformat %r' % d)
        check(d['tracks'] == cs // 512, 'tracks %r' % d)
        check(d['bat-entries'] == -(-size // cs), 'bat-entries %r' % d)
        check(d['allocated-clusters'] == 0, 'allocated %r' % d)
        for sub, magic in (('ext', 'WithouFreSpacExt'),
                           ('legacy', 'WithoutFreeSpace')):
            img = path('p-%d-%s.hdd' % (cs, sub))
            prl_img('create', '-f', 'parallels', '-o',
                    'cluster_size=%d,subformat=%s' % (cs, sub), img, size)
            q, p = infos(img, 'parallels')
            expect(p, q, 'parallels', size, cs, 'prl-made %d %s' % (cs, sub))
            d = p['format-specific']['data']
            h = parimg.parse(img)
            check(d['subformat'] == magic, 'subformat %r' % d)
            check(d['data-offset'] == h['data_offset'], 'data-offset %r' % d)
            check(d['in-use'] == parimg.IN_USE_CLEAN, 'in-use %r' % d)
            check(p['dirty-flag'] is False, 'dirty-flag %r' % p)

    # Raw: sector multiples agree exactly with QEMU.
    for size in (0, 512, 1 << 20, 5 * (1 << 30)):
        img = path('r-%d.raw' % size)
        with open(img, 'wb') as f:
            f.truncate(size)
        q, p = infos(img, 'raw')
        expect(p, q, 'raw', size, None, 'raw %d' % size)
    img = path('odd.raw')
    with open(img, 'wb') as f:
        f.truncate(1000)
    p = json.loads(prl_img('info', '--output=json', img).out)
    check(p['virtual-size'] == 1000, 'odd raw: %r' % p)

    # A legacy image with data_off = 0 reports the computed data offset.
    im = parimg.Image(100 * 32256, 32256, ext=False, data_off=0)
    im.allocate(5, b'x' * 10)
    img = path('legacy0.hdd')
    im.write(img)
    q, p = infos(img, 'parallels')
    expect(p, q, 'parallels', 100 * 32256, 32256, 'legacy data_off=0')
    d = p['format-specific']['data']
    check(d['data-offset'] == 512, 'legacy0 data-offset %r' % d)
    check(d['allocated-clusters'] == 1, 'legacy0 allocated %r' % d)

    # An image left "in use" is reported dirty (read-only info still
    # works), and info does not change it.
    parimg.set_field(img, 'in_use', DIRTY)
    p = json.loads(prl_img('info', '--output=json', img).out)
    check(p['dirty-flag'] is True, 'dirty image: %r' % p)
    check(p['format-specific']['data']['in-use'] == DIRTY, 'in-use %r' % p)
    check(parimg.parse(img)['in_use'] == DIRTY, 'info changed in_use')


main(test)
