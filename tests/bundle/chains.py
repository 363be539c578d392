# SPDX-License-Identifier: MIT
"""Chains of 1, 2 and 5 layers (and a Plain root): every .hds written by
qemu-io with known patterns, the descriptor by the test; prl's flattened
read, the library's depths (prl-io status) and prl-img map's depths
match the composition computed here, opened by directory and by
DiskDescriptor.xml."""

import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lib'))

from bundlelib import (TOP, Layer, compose, descriptor, guid, qemu_create,
                       qemu_write, status, write_file)
from prltest import (check, first_difference, main, path, prl_img,
                     read_image, requires)

SIZE = 4 * (1 << 20) + 3 * 512   # ends in a partial cluster
CS = 64 << 10


def build(name, n, plain_root, use_top_guid, rnd):
    d = path(name)
    os.mkdir(d)
    layers, images, shots = [], [], []
    for i in range(n):              # i = 0 is the root
        g = TOP if (i == n - 1 and not use_top_guid) else guid(i)
        f = '%s.%d.%s.hds' % (name, i, g)
        p = os.path.join(d, f)
        l = Layer(SIZE, CS)
        writes = []
        for _ in range(rnd.randint(3, 12)):
            ln = rnd.choice([512, 4096, 65536, 100000, 3 * 65536 + 1024])
            off = rnd.randrange(0, SIZE - ln) // 512 * 512
            pat = 0x10 * (i + 1) + len(writes) % 16
            writes.append((pat, off, ln))
        if i == 0 and plain_root:
            l.clusters = None       # a raw root provides everything
            raw = bytearray(SIZE)
            for pat, off, ln in writes:
                raw[off:off + ln] = bytes([pat]) * ln
            l.data = raw
            write_file(p, bytes(raw))
            images.append((g, 'Plain', f))
        else:
            qemu_create(p, SIZE, CS)
            qemu_write(p, writes)
            for w in writes:
                l.write(*w)
            images.append((g, 'Compressed', f))
        shots.append((g, images[i - 1][0] if i else
                      '{00000000-0000-0000-0000-000000000000}'))
        layers.append(l)
    top = images[-1][0]
    # Shots in a shuffled order: the chain comes from the links alone.
    order = list(range(n))
    rnd.shuffle(order)
    write_file(os.path.join(d, 'DiskDescriptor.xml'),
               descriptor(SIZE, CS // 512, [images[k] for k in order],
                          [shots[k] for k in order],
                          top_guid=top if use_top_guid else None))
    layers.reverse()                # top first
    return d, layers


def verify(d, layers):
    want, depths = compose(layers)
    for target in (d, os.path.join(d, 'DiskDescriptor.xml')):
        got = read_image(target, SIZE)
        off = first_difference(got, want)
        check(off is None, '%s: flattened read differs at %r' % (target, off))
    # Library depths (1 = top ... 0 = nowhere), per cluster.
    for off, ln, dep in status(d, SIZE):
        for c in range(off // CS, (off + ln - 1) // CS + 1):
            check(depths[c] == dep, '%s: cluster %d has depth %d, want %d'
                  % (d, c, dep, depths[c]))
    # prl-img map counts like qemu-img: 0 = top, and present says whether
    # any layer holds the range.
    m = json.loads(prl_img('map', '--output=json', d).out)
    for e in m:
        for c in range(e['start'] // CS, (e['start'] + e['length'] - 1)
                       // CS + 1):
            want_d = depths[c]
            check(e['present'] == (want_d > 0),
                  'map: cluster %d present=%r, depth %d' %
                  (c, e['present'], want_d))
            if want_d:
                check(e['depth'] == want_d - 1,
                      'map: cluster %d depth %d, want %d' %
                      (c, e['depth'], want_d - 1))
    out = path('flat.raw')
    prl_img('convert', '-O', 'raw', d, out)
    with open(out, 'rb') as f:
        check(f.read() == want, '%s: convert -O raw differs' % d)
    os.unlink(out)


def test():
    requires('qemu-img', 'qemu-io')
    rnd = random.Random(int(os.environ.get('PRL_RANDOM_SEED', '5')))
    cases = [('one', 1, False, False), ('two', 2, False, True),
             ('five', 5, False, False), ('five-topguid', 5, False, True),
             ('plain-root', 3, True, True)]
    for name, n, plain, tg in cases:
        d, layers = build(name, n, plain, tg, rnd)
        verify(d, layers)
        info = prl_img('info', d).out
        check('bundle' in info, 'info does not say bundle: %s' % info)


main(test)
