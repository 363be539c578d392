# SPDX-License-Identifier: MIT
"""Randomized resizing: 20 rounds (10 under the sanitizers) of random
writes, zeroes and trims, each followed by a grow (often far enough that
the BAT outgrows the space before the data area and clusters move) or a
shrink (with shrink, so data is dropped), applied through prl-io and to
a raw reference; after every round the image reads like the reference,
qemu-img check and prl-img check stay clean and qemu-img compare
agrees."""

import os
import random

import parimg
from prltest import (CLEAN, Failure, check, first_difference, main, path,
                     prl_img, prl_io, read_image, requires, run, scaled)

ROUNDS = scaled(20)
SEED = int(os.environ.get('PRL_RANDOM_SEED', '20261125'))

# (name, cluster size, ext?, how the image is made, first size, whether
# growth within 16 MiB must move the data area)
SHAPES = [
    ('ext-512', 512, True, 'create', 96 * 1024, True),
    ('ext-4K', 4096, True, 'create', 3584 * 1024, True),
    ('legacy-4K', 4096, False, 'create', 512 * 1024, True),
    ('legacy0-32256', 32256, False, 'parimg', 100 * 32256, True),
    ('ext-64K', 65536, True, 'create', 2 * (1 << 20) + 512, False),
]


def round_up(x, m):
    return (x + m - 1) // m * m


def ops(rng, cs, size, ref):
    cmds = []
    for _ in range(rng.randint(5, 25)):
        length = min(size, rng.choice([rng.randint(1, 600),
                                       rng.randint(1, 3 * cs)]))
        off = rng.randrange(0, size - length + 1)
        r = rng.random()
        if r < 0.7:
            byte = rng.randrange(1, 256)
            cmds.append('write -P %d %d %d' % (byte, off, length))
            ref[off:off + length] = bytes([byte]) * length
        elif r < 0.85:
            cmds.append('zero %d %d' % (off, length))
            ref[off:off + length] = bytes(length)
        else:
            cmds.append('trim %d %d' % (off, length))
            ref[off:off + length] = bytes(length)
    return cmds


def run_shape(name, cs, ext, how, size, must_move):
    rng = random.Random('%d-%s' % (SEED, name))
    img = path(name + '.hdd')
    refpath = path(name + '.raw')
    if how == 'create':
        prl_img('create', '-f', 'parallels', '-o', 'cluster_size=%d,'
                'subformat=%s' % (cs, 'ext' if ext else 'legacy'), img, size)
    else:
        parimg.Image(size, cs, ext=ext, data_off=0).write(img)
    ref = bytearray(size)
    moved = 0
    for rnd in range(ROUNDS):
        what = '%s round %d' % (name, rnd)
        cmds = ops(rng, cs, len(ref), ref)
        r = rng.random()
        if r < 0.5 or len(ref) <= 4 * cs:
            new = int(len(ref) * rng.uniform(1.2, 3)) + 1
        elif r < 0.85:
            new = int(len(ref) * rng.uniform(0.3, 0.99)) + 1
        else:
            # Within or just past the last cluster.
            new = len(ref) + rng.randint(-cs, 2 * cs)
        new = min(new, 16 << 20)
        if must_move and moved == 0 and rnd == ROUNDS // 2:
            # Make sure of one grow past what the BAT's space can hold.
            d = parimg.parse(img)
            room = (d['data_offset'] - 64) // 4
            new = max(new, (room + 1) * cs + rng.randint(1, cs))
        cmds.append('resize %d shrink' % new)
        new = round_up(new, 512)
        if new < len(ref):
            del ref[new:]
        else:
            ref.extend(bytes(new - len(ref)))
        cmds += ops(rng, cs, len(ref), ref)
        before = parimg.parse(img)['data_offset']
        try:
            prl_io(img, cmds)
        except Failure as e:
            raise Failure('%s: %s\ncommands:\n%s' % (what, e,
                                                     '\n'.join(cmds)))
        d = parimg.parse(img)
        moved += d['data_offset'] > before
        check(d['in_use'] == CLEAN, what + ': not clean')
        check(d['nb_sectors'] * 512 == len(ref), '%s: nb_sectors %d, want '
              '%d' % (what, d['nb_sectors'], len(ref) // 512))
        with open(refpath, 'wb') as f:
            f.write(ref)
        got = read_image(img, len(ref))
        if got != ref:
            i = first_difference(got, ref)
            raise Failure('%s: guest byte %d is 0x%02x, want 0x%02x\n'
                          'commands:\n%s' % (what, i, got[i], ref[i],
                                             '\n'.join(cmds)))
        r = run(['qemu-img', 'check', '-f', 'parallels', img], want=None)
        check(r.rc == 0, '%s: qemu-img check: %r' % (what, r))
        r = prl_img('check', img, want=None)
        check(r.rc == 0, '%s: prl-img check: %r' % (what, r))
        r = run(['qemu-img', 'compare', '-f', 'parallels', '-F', 'raw', img,
                 refpath], want=None)
        check(r.rc == 0, '%s: qemu-img compare: %r' % (what, r))
    print('%s: %d rounds, the data area moved %d times' % (name, ROUNDS,
                                                             moved))
    check(moved > 0 or not must_move, name + ': no resize moved the data '
          'area')


def test():
    requires('qemu-img')
    failures = []
    for shape in SHAPES:
        try:
            run_shape(*shape)
        except Failure as e:
            failures.append(shape[0])
            print('%s: FAILED: %s' % (shape[0], e))
    if failures:
        raise Failure('failed shapes: %s (seed %d)' % (', '.join(failures),
                                                       SEED))


main(test)
