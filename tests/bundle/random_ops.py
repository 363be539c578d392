# SPDX-License-Identifier: MIT
"""Randomized snapshot create, write, zero, trim, delete and commit
sequences (over 200 steps per shape; half under the sanitizers) against a raw reference model: the
guest contents equal the model after every step, the directory holds only
the descriptor and the images it names, and every .hds passes
qemu-img check -f parallels."""

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bundlelib import hds_files, helper, qemu_check
from prltest import (check, first_difference, main, path, prl_img, prl_io,
                     read_image, requires, scaled)

SEED = int(os.environ.get('PRL_RANDOM_SEED', '20261125'))
# (name, cluster size, guest size, steps)
SHAPES = [
    ('c32k', 32 << 10, 3 * (1 << 20) + 1536, scaled(220)),
    ('c4k', 4 << 10, 1 << 20, scaled(60)),
]


def chain(d):
    """[(guid, parent, depth, top, file)] from bundle-helper list."""
    out = []
    for line in helper('list', d).out.splitlines():
        g, p, dep, top, f = line.split(' ', 4)
        out.append((g, p, int(dep), top == '1', f))
    return out


def check_dir(d):
    names = set(os.listdir(d))
    want = {'DiskDescriptor.xml'} | {c[4] for c in chain(d)}
    check(names == want, '%s holds %s, want %s' % (d, sorted(names),
                                                   sorted(want)))


def run_shape(name, cs, size, steps, rnd):
    d = path(name + '.hdd')
    prl_img('create', '-f', 'bundle', '-o', 'cluster_size=%d' % cs, d, size)
    src = path('src.bin')
    with open(src, 'wb') as f:
        f.write(rnd.randbytes(1 << 20))
    with open(src, 'rb') as f:
        srcdata = f.read()
    model = bytearray(size)
    counts = {}
    for step in range(steps):
        layers = chain(d)
        n_chain = sum(1 for c in layers if c[2] > 0)
        ops = ['io'] * 5 + ['snapshot'] * 2 + ['delete'] * 2 + ['commit']
        if n_chain >= 7:
            ops += ['delete'] * 4 + ['commit'] * 2
        op = rnd.choice(ops)
        if op in ('delete', 'commit') and n_chain == 1:
            op = 'snapshot'
        counts[op] = counts.get(op, 0) + 1
        if op == 'io':
            cmds = []
            for _ in range(rnd.randint(1, 4)):
                kind = rnd.choice(['write'] * 5 + ['zero', 'zero -u',
                                                   'trim'])
                ln = rnd.choice([1, 511, 512, 4096, cs - 512, cs, cs + 512,
                                 3 * cs, 5000, 100000])
                ln = min(ln, size)
                off = rnd.randrange(0, size - ln + 1)
                if rnd.random() < 0.5:
                    off -= off % 512
                fua = ' -F' if rnd.random() < 0.1 else ''
                if kind == 'write':
                    so = rnd.randrange(0, len(srcdata) - ln + 1)
                    cmds.append('write%s %d %d %s:%d' % (fua, off, ln, src,
                                                         so))
                    model[off:off + ln] = srcdata[so:so + ln]
                else:
                    parts = kind.split()
                    cmds.append('%s%s %s %d %d' % (
                        parts[0], fua, ' '.join(parts[1:]), off, ln))
                    model[off:off + ln] = bytes(ln)
            prl_io(d, cmds)
        elif op == 'snapshot':
            g = helper('snapshot', d).out.strip()
            top = [c for c in chain(d) if c[3]]
            check(top and top[0][0] == g, 'new snapshot %s is not the top'
                  % g)
        elif op == 'delete':
            cands = [c for c in layers if not c[3] and c[2] > 0]
            victim = rnd.choice(cands)
            helper('delete', d, victim[0])
            check(all(c[0] != victim[0] for c in chain(d)),
                  'deleted %s is still listed' % victim[0])
        else:
            helper('commit', d)
        got = read_image(d, size)
        off = first_difference(got, bytes(model))
        check(off is None, '%s step %d (%s): contents differ from the model '
              'at %r' % (name, step, op, off))
        if step % 40 == 39 or step == steps - 1:
            check_dir(d)
            for f in hds_files(d):
                qemu_check(f)
    for op in ('io', 'snapshot', 'delete', 'commit'):
        check(counts.get(op, 0) >= steps // 20,
              '%s: only %d %s steps' % (name, counts.get(op, 0), op))


def test():
    requires('qemu-img')
    rnd = random.Random(SEED)
    for shape in SHAPES:
        run_shape(*shape, rnd)


main(test)
