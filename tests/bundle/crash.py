# SPDX-License-Identifier: MIT
"""SIGKILL during snapshot create, delete and commit, 30 times each (15
under the sanitizers) at random points: afterwards the bundle opens
(read-only, then read-write, which finishes or rolls back the
operation), the guest contents are those of before (which these
operations never change), the chain is the old one or the new one, the
directory holds only what the descriptor names, and every .hds passes
qemu-img check."""

import os
import random
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bundlelib import hds_files, helper, popen_helper, qemu_check
from prltest import (check, first_difference, main, path, prl_img, prl_io,
                     read_image, requires, scaled)

KILLS = scaled(30)
# Small clusters make the copies long enough to be killed in the middle.
# QEMU 7.2's check reports a leak on any empty image whose header and BAT
# take more than one cluster (its own images too), so the BAT stays
# within one 4 KiB cluster: at most 1008 entries.
SIZE = 3 << 20
CS = 4096


def chain(d):
    out = []
    for line in helper('list', d).out.splitlines():
        g, p, dep, top, f = line.split(' ', 4)
        out.append((g, int(dep), f))
    return out


def make_template(rnd):
    """root (every cluster) <- mid (half) <- top (a quarter)."""
    d = path('template.hdd')
    prl_img('create', '-f', 'bundle', '-o', 'cluster_size=%d' % CS, d, SIZE)
    src = path('src.bin')
    with open(src, 'wb') as f:
        f.write(rnd.randbytes(SIZE))
    prl_io(d, ['write 0 %d %s:0' % (SIZE, src)])
    for frac in (2, 4):
        helper('snapshot', d)
        cmds = []
        for c in range(SIZE // CS):
            if rnd.randrange(frac) == 0:
                # Partial writes: the rest of each cluster is copied up.
                off = c * CS + rnd.randrange(0, CS - 512)
                cmds.append('write %d 512 %s:%d' % (off, src,
                                                    rnd.randrange(SIZE)
                                                    // 2))
        prl_io(d, cmds)
    return d


def fresh(template, n):
    d = path('b%d.hdd' % n)
    if os.path.exists(d):
        shutil.rmtree(d)
    shutil.copytree(template, d)
    return d


def op_args(op, d):
    if op == 'create':
        return ['snapshot', d]
    if op == 'delete':
        mid = [c for c in chain(d) if c[1] == 2][0]
        return ['delete', d, mid[0]]
    return ['commit', d]


def verify(d, want, before, op, i):
    after = chain(d)     # the descriptor parses, the chain opens
    got = read_image(d, SIZE)
    off = first_difference(got, want)
    check(off is None, '%s kill %d: contents differ at %r (read-only)' %
          (op, i, off))
    prl_io(d, ['flush'])  # read-write open: replay, repair, close
    got = read_image(d, SIZE)
    off = first_difference(got, want)
    check(off is None, '%s kill %d: contents differ at %r (after a '
          'read-write open)' % (op, i, off))
    after = chain(d)
    n = len(before)
    want_n = n + 1 if op == 'create' else n - 1
    check(len(after) in (n, want_n), '%s kill %d: %d images, want %d or %d'
          % (op, i, len(after), n, want_n))
    names = set(os.listdir(d))
    refs = {'DiskDescriptor.xml'} | {c[2] for c in after}
    check(names == refs, '%s kill %d: directory holds %s, want %s' %
          (op, i, sorted(names), sorted(refs)))
    for f in hds_files(d):
        qemu_check(f)
    return len(after) == want_n


def test():
    requires('qemu-img')
    rnd = random.Random(int(os.environ.get('PRL_RANDOM_SEED', '77')))
    template = make_template(rnd)
    want = read_image(template, SIZE)
    before = chain(template)
    for op in ('create', 'delete', 'commit'):
        # How long an uninterrupted run takes (the median of three), to
        # spread the kills over.
        durs = []
        for k in range(3):
            d = fresh(template, 0)
            t0 = time.monotonic()
            helper(*op_args(op, d))
            durs.append(time.monotonic() - t0)
            verify(d, want, before, op, -1)
        dur = sorted(durs)[1]
        killed = done = runs = 0
        # Until KILLS runs died in the middle; a run that ended before its
        # kill shortens the window a little.
        while killed < KILLS and runs < 3 * KILLS:
            runs += 1
            d = fresh(template, runs)
            p = popen_helper(*op_args(op, d))
            time.sleep(rnd.uniform(0, dur * 1.1))
            os.kill(p.pid, signal.SIGKILL)
            _, err = p.communicate()
            check(b'Sanitizer' not in err and b'runtime error' not in err,
                  '%s: %s' % (op, err.decode(errors='replace')))
            if p.returncode == -signal.SIGKILL:
                killed += 1
            else:
                dur *= 0.8
            done += verify(d, want, before, op, runs)
            shutil.rmtree(d)
        print('%s: %.1f ms per run, %d of %d runs killed, %d ended done' %
              (op, dur * 1000, killed, runs, done))
        check(killed == KILLS, '%s: only %d of %d runs were killed before '
              'they ended' % (op, killed, runs))


main(test)
