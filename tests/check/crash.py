# SPDX-License-Identifier: MIT
"""Crash test: crash-writer (libprl, a random workload of writes, zeroes,
trims, FUA requests and flushes) is killed with SIGKILL at a random
moment, KILLS times over four image shapes.  After each kill:
prl-img check finds no corruption (leaks allowed: exit 0 or 3); every
request that was durable before the kill (acknowledged with FUA, or
followed by an acknowledged flush) reads back unless a later request
touched the same sectors; check -r all leaves an image that checks clean
(and that qemu-img check finds clean), without changing a guest byte.
The next round writes on the repaired image."""

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checklib as cl  # noqa: E402
import parimg  # noqa: E402
from prltest import (BUILD, check, main, path, prl_img,  # noqa: E402
                     prl_io, requires)

KILLS = int(os.environ.get('PRL_CRASH_KILLS', '56'))
WRITER = os.path.join(BUILD, 'tests', 'check', 'crash-writer')
SECTOR = 512
UNKNOWN = None
ZERO = 0

# (name, create options, virtual size, with a persistent bitmap).  The
# BATs fit in the first cluster: QEMU 7.2 counts a leak on images whose
# header and BAT take more, should the workload trim every cluster.
SHAPES = [
    ('ext-4k', 'cluster_size=4096', 3 << 20, False),
    ('ext-64k', 'cluster_size=65536', 16 << 20, False),
    ('legacy-4k', 'cluster_size=4096,subformat=legacy', 3 << 20, False),
    ('bitmap-4k', 'cluster_size=4096', 3 << 20, True),
]


def sector_value(key, op_id, sector):
    v = ((op_id << 32) | sector) ^ key
    return struct.pack('<Q', v & 0xffffffffffffffff) * (SECTOR // 8)


def parse_log(p):
    """Requests begun, in order: (id, op, off, len, fua), and the set of
    acknowledged ids."""
    begun, acked = [], set()
    with open(p) as f:
        for line in f:
            if not line.endswith('\n'):
                break  # cut short by the kill
            w = line.split()
            if w[0] == 'B':
                begun.append((int(w[1]), w[2], int(w[3]), int(w[4]),
                              w[5] == '1'))
            elif w[0] == 'E':
                acked.add(int(w[1]))
    return begun, acked


def expected(begun, acked, nsectors):
    """Per sector: UNKNOWN, ZERO, 'base' (as before the round) or the id of
    the write whose data it must hold."""
    last_flush = max([i for i, op, _, _, _ in begun
                      if op == 'f' and i in acked], default=0)
    model = ['base'] * nsectors
    for i, op, off, ln, fua in begun:
        if op == 'f':
            continue
        durable = i in acked and (fua or i < last_flush)
        s0, n = off // SECTOR, ln // SECTOR
        if not durable or op == 't':
            val = UNKNOWN
        elif op == 'w':
            val = i
        else:
            val = ZERO
        model[s0:s0 + n] = [val] * n
    return model


def verify(what, data, base, model, key):
    checked = 0
    zero = bytes(SECTOR)
    for s, m in enumerate(model):
        if m is UNKNOWN:
            continue
        got = data[s * SECTOR:(s + 1) * SECTOR]
        if m == 'base':
            want = base[s * SECTOR:(s + 1) * SECTOR]
        elif m == ZERO:
            want = zero
        else:
            want = sector_value(key, m, s)
        if got != want:
            tag = struct.unpack_from('<Q', got)[0] ^ key
            raise cl.Failure('%s: sector %d (guest byte %d) should hold %s, '
                             'holds %s' % (what, s, s * SECTOR,
                                           'write %s' % m if m not in (
                                               'base', ZERO) else m,
                                           'write %d sector %d' % (
                                               tag >> 32, tag & 0xffffffff)
                                           if tag >> 32 < 1 << 20 else
                                           got[:16].hex()))
        checked += 1
    return checked


def round_(shape, img, base, rnd, n):
    name = shape[0]
    seed = rnd.randrange(1 << 30)
    key = (seed * 0x9E3779B97F4A7C15) & 0xffffffffffffffff
    log = path('writer.log')
    if os.path.exists(log):
        os.unlink(log)
    writer = subprocess.Popen([WRITER, img, log, str(seed)],
                              stderr=subprocess.PIPE)
    try:
        # Wait until the writer has opened the image, then let it run for
        # a random while: short kills land in the first allocations.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            if os.path.exists(log) and os.path.getsize(log) > 0:
                break
            if writer.poll() is not None:
                break
            time.sleep(0.002)
        time.sleep(rnd.choice([0, 0.003, 0.01, 0.03, 0.1, 0.2, 0.4]) *
                   rnd.random())
    finally:
        if writer.poll() is None:
            writer.send_signal(signal.SIGKILL)
        writer.wait()
    err = writer.stderr.read().decode(errors='replace')
    check(writer.returncode == -signal.SIGKILL,
          '%s: writer exited %d before the kill: %s'
          % (name, writer.returncode, err))
    begun, acked = parse_log(log)
    what = '%s round %d (seed %d, %d requests, killed in %s)' % (
        name, n, seed, len(begun), begun[-1][:2] if begun else 'open')
    print(what)

    rc, j = cl.prl_check(img)
    check(rc in (0, 3) and j['corruptions'] == 0,
          '%s: check after the kill: exit %d %s' % (what, rc, j))
    print('  check: exit %d, %s' % (rc, ' '.join(cl.kinds(j))))
    # The open marks the image in use only before its first write.
    dirty = 'unclean-close' in cl.kinds(j)
    data = cl.guest(img)
    check(len(data) == len(base), what + ': size changed')
    model = expected(begun, acked, len(base) // SECTOR)
    n_checked = verify(what, data, base, model, key)

    # check -r all (on a copy) and the repair of a read-write open (every
    # other round, on the image itself) must both leave a clean image
    # with the guest as it was.
    fixed = img + '.fixed'
    shutil.copyfile(img, fixed)
    rc, j = cl.prl_check(fixed, '-r', 'all')
    check(rc == 0, '%s: check -r all exited %d: %s' % (what, rc, j))
    clean(what + ', check -r all', fixed, shape, data)
    if n % 2:
        r = prl_io(img, ['flush'])
        check(('not closed cleanly' in r.err) == dirty,
              '%s: repair on open (image in use: %s): %r' % (what, dirty, r))
        clean(what + ', read-write open', img, shape, data)
        os.unlink(fixed)
    else:
        os.replace(fixed, img)
    return data, n_checked


def clean(what, img, shape, data):
    rc, j = cl.prl_check(img)
    check(rc == 0 and not [f for f in j['findings'] if f['class'] != 'note'],
          '%s: not clean: %s' % (what, j))
    check(parimg.parse(img)['in_use'] == parimg.IN_USE_CLEAN,
          what + ': not marked clean')
    if not shape[3]:
        # QEMU 7.2 refuses the prl feature that marks bitmaps inconsistent.
        rc, _, r = cl.qemu_check(img)
        check(rc == 0, '%s: qemu-img check: %r' % (what, r))
    check(cl.guest(img) == data, what + ': guest data changed')


def run_test():
    requires('qemu-img')
    check(os.access(WRITER, os.X_OK), 'not built: ' + WRITER)
    rnd = random.Random(int(os.environ.get('PRL_RANDOM_SEED', '3')))
    per_shape = -(-KILLS // len(SHAPES))
    total = 0
    for shape in SHAPES:
        name, opts, size, bitmap = shape
        img = path(name + '.hdd')
        prl_img('create', '-q', '-f', 'parallels', '-o', opts, img, size)
        if bitmap:
            prl_img('bitmap', '--add', '-g', '4096', img, 'auto')
        base = bytes(size)
        checked = 0
        for n in range(per_shape):
            base, c = round_(shape, img, base, rnd, n)
            checked += c
            total += 1
        if bitmap:
            r = prl_img('info', '--output=json', img)
            check('"bitmaps"' in r.out, name + ': the bitmap is gone')
        print('%s: %d kills, %d durable sectors verified' % (name, per_shape,
                                                            checked))
    check(total >= 50, 'only %d kills' % total)


if __name__ == '__main__':
    main(run_test)
