# SPDX-License-Identifier: MIT
"""Randomized I/O: over a thousand writes, zeroes and trims of random
sizes and offsets per image shape (half under the sanitizers), applied
through prl-io to a Parallels image and in python to a raw reference,
compared after every batch (prl reading itself, qemu-img compare,
prl-img compare) with qemu-img check and prl-img check staying clean."""

import os
import random

import parimg
from prltest import (CLEAN, Failure, check, first_difference, main, path,
                     prl_img, prl_io, read_image, requires, run, scaled)

BATCHES = scaled(10)
OPS_PER_BATCH = 110
SEED = int(os.environ.get('PRL_RANDOM_SEED', '20261125'))

# (name, cluster size, ext?, guest size): sizes end in a partial cluster.
SHAPES = [
    ('ext-1M', 1 << 20, True, 12 * (1 << 20) + 1536),
    ('legacy-1M', 1 << 20, False, 12 * (1 << 20) + 1536),
    ('ext-32256', 32256, True, 2 * (1 << 20) + 512),
    ('legacy-32256', 32256, False, 2 * (1 << 20) + 512),
    ('ext-256K', 256 << 10, True, 6 * (1 << 20) + 1024),
    ('legacy-256K', 256 << 10, False, 6 * (1 << 20) + 1024),
]


def make_image(img, cs, ext, size):
    if ext:
        # Ext images as the tool makes them.
        prl_img('create', '-f', 'parallels', '-o',
                'cluster_size=%d,subformat=ext' % cs, img, size)
    else:
        # Legacy images by hand, with data_off = 0 (computed: the BAT end
        # rounded up to a sector, so clusters are not cluster aligned).
        im = parimg.Image(size, cs, ext=False, data_off=0)
        im.write(img)
    d = parimg.parse(img)
    check(d['ext'] == ext and d['cluster_size'] == cs
          and d['nb_sectors'] * 512 == size, 'unexpected header %r' % d)
    if not ext:
        check(d['data_off'] == 0, 'legacy data_off should be 0')


def pick_length(rng, cs):
    r = rng.random()
    if r < 0.35:
        return rng.randint(1, 512)
    if r < 0.65:
        return rng.randint(513, cs)
    if r < 0.75:
        return cs
    if r < 0.92:
        return rng.randint(cs + 1, 2 * cs)
    return rng.randint(2 * cs + 1, 3 * cs)


def pick_offset(rng, cs, size, length):
    length = min(length, size)
    r = rng.random()
    if r < 0.3:
        # Around a cluster boundary, so requests straddle it.
        b = rng.randrange(0, size // cs + 1) * cs
        off = b + rng.randint(-1024, 1024)
    elif r < 0.5:
        off = rng.randrange(0, size // cs + 1) * cs
    elif r < 0.6:
        off = size - length - rng.randint(0, 512)
    else:
        off = rng.randrange(0, size)
    return max(0, min(off, size - length)), length


def gen_batch(rng, cs, size, src, srclen, ref):
    """A batch of prl-io commands, applying each to |ref|."""
    cmds = []
    for i in range(OPS_PER_BATCH):
        off, length = pick_offset(rng, cs, size, pick_length(rng, cs))
        r = rng.random()
        if r < 0.55:
            so = rng.randrange(0, srclen - length + 1)
            fua = '-F ' if rng.random() < 0.05 else ''
            cmds.append('write %s%d %d %s:%d' % (fua, off, length, src, so))
            with open(src, 'rb') as f:
                f.seek(so)
                ref[off:off + length] = f.read(length)
        elif r < 0.62:
            byte = rng.randrange(0, 256)
            cmds.append('write -P %d %d %d' % (byte, off, length))
            ref[off:off + length] = bytes([byte]) * length
        elif r < 0.80:
            flags = rng.choice(['', '-u ', '-F ', '-u -F '])
            cmds.append('zero %s%d %d' % (flags, off, length))
            ref[off:off + length] = bytes(length)
        else:
            cmds.append('trim %d %d' % (off, length))
            ref[off:off + length] = bytes(length)
        if rng.random() < 0.02:
            cmds.append('flush')
        if rng.random() < 0.01:
            cmds.append('reopen')
    return cmds


def verify(img, refpath, ref, size, what):
    got = read_image(img, size)
    if got != ref:
        i = first_difference(got, ref)
        raise Failure('%s: guest byte %d is 0x%02x, want 0x%02x'
                      % (what, i, got[i], ref[i]))
    d = parimg.parse(img)
    check(d['in_use'] == CLEAN, '%s: in_use 0x%08x after close'
          % (what, d['in_use']))
    r = run(['qemu-img', 'compare', '-f', 'parallels', '-F', 'raw', img,
             refpath], want=None)
    check(r.rc == 0, '%s: qemu-img compare: %r' % (what, r))
    r = run(['qemu-img', 'check', '-f', 'parallels', img], want=None)
    check(r.rc == 0, '%s: qemu-img check: %r' % (what, r))
    r = prl_img('compare', '-f', 'parallels', '-F', 'raw', img, refpath,
                want=None)
    check(r.rc == 0, '%s: prl-img compare: %r' % (what, r))
    r = prl_img('check', '-f', 'parallels', img, want=None)
    check(r.rc == 0, '%s: prl-img check: %r' % (what, r))


def run_shape(name, cs, ext, size, src, srclen):
    rng = random.Random('%d-%s' % (SEED, name))
    img = path(name + '.hdd')
    refpath = path(name + '.raw')
    make_image(img, cs, ext, size)
    ref = bytearray(size)
    for b in range(BATCHES):
        cmds = gen_batch(rng, cs, size, src, srclen, ref)
        cmdfile = path('%s-batch%d.txt' % (name, b))
        with open(cmdfile, 'w') as f:
            f.write('\n'.join(cmds) + '\n')
        try:
            prl_io(img, cmds)
        except Failure as e:
            raise Failure('%s batch %d (commands in %s): %s'
                          % (name, b, cmdfile, e))
        with open(refpath, 'wb') as f:
            f.write(ref)
        verify(img, refpath, bytes(ref), size, '%s batch %d' % (name, b))
    # A final read-only pass changes nothing.
    before = open(img, 'rb').read()
    prl_io(img, ['read -P 0 0 0'], readonly=True)
    check(open(img, 'rb').read() == before, name + ': read-only open '
          'changed the file')
    return BATCHES * OPS_PER_BATCH


def test():
    requires('qemu-img')
    src = path('source.bin')
    srclen = 4 * (1 << 20)
    with open(src, 'wb') as f:
        f.write(random.Random(SEED).randbytes(srclen))
    failures = []
    for shape in SHAPES:
        try:
            n = run_shape(*shape, src=src, srclen=srclen)
            print('%s: %d operations, all checks passed' % (shape[0], n))
        except Failure as e:
            failures.append(str(e))
            print('%s: FAILED: %s' % (shape[0], e))
    if failures:
        raise Failure('%d of %d shapes failed (seed %d)'
                      % (len(failures), len(SHAPES), SEED))


main(test)
