# SPDX-License-Identifier: MIT
"""SIGKILL of a writer (prl-io) holding an image with bitmaps open
read-write, in the middle of a stream of writes: the image reopens
read-only with every bitmap reported inconsistent (info) and refused by
map --bitmap, merge and convert --bitmaps; data flushed before the kill
reads back; after `prl-img check -r all` or a read-write open (which
repairs) the bitmaps stay inconsistent, disabled ones stay disabled and
an unknown TRANSIT feature stays, until --clear or --remove; a cleared
bitmap tracks again and QEMU finds the image clean."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bmtest import (KIB, MIB, add, bitmap, changes, create, expect_runs,
                    info, io, map_runs)
import parext
import parimg
from prltest import (PRL_IO, Failure, check, main, prl_img, read_image,
                     run, sha256)

SIZE = 16 * MIB
CS = 4 * KIB
UNKNOWN = 0x0123456789abcdef


def with_transit(img):
    """Rebuild |img|'s extension with an unknown TRANSIT feature added
    (a fresh extension cluster at the end, the header switched to it)."""
    h, c = parext.read_ext(img)
    feats = [parext.Feature(f['magic'], f['flags'], f['data'])
             for f in parext.parse_ext(c)['features']]
    feats.append(parext.Feature(UNKNOWN, parext.TRANSIT, b'keep me'))
    size = os.path.getsize(img)
    check((size - h['data_offset']) % CS == 0, 'file not on the grid')
    parimg.poke(img, size, parext.ext_cluster(feats, CS))
    parimg.set_field(img, 'ext_off', size // 512)


def killed_writer(img, rnd):
    """Write, flush, then die by SIGKILL amid more writes.  Returns the
    flushed [(offset, byte, length)]."""
    durable = []
    for i in range(40):
        off = rnd.randrange(0, SIZE // 2 - 8192)
        n = rnd.randrange(1, 8192)
        durable.append((off, 0x40 + i, n))
    t = None
    p = subprocess.Popen([PRL_IO, '-w', img], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for off, b, n in durable:
            p.stdin.write(b'write -P %d %d %d\n' % (b, off, n))
        p.stdin.write(b'flush\nsize\n')
        p.stdin.flush()
        line = p.stdout.readline()
        if line.strip() != str(SIZE).encode():
            p.stdin.close()
            raise Failure('prl-io did not answer: %r %r'
                          % (line, p.stderr.read()))
        # Later writes, to the other half, fed until the kill cuts them
        # short (bounded: at most 100000).
        offs = [rnd.randrange(SIZE // 2, SIZE - 4096) for _ in range(997)]

        def feed():
            try:
                for i in range(100000):
                    p.stdin.write(b'write -P 1 %d 4096\n' % offs[i % 997])
                    if i % 64 == 0:
                        p.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass
        t = threading.Thread(target=feed)
        t.start()
        time.sleep(0.2)
        if p.poll() is not None:
            raise Failure('the writer stopped early: %r' % p.stderr.read())
    finally:
        p.kill()
        p.wait()
        if t is not None:
            t.join()
    check(p.returncode == -signal.SIGKILL, 'writer exit %r' % p.returncode)
    # The writes reached what the newest one left behind, in order.
    final = bytearray(SIZE // 2)
    for off, b, n in durable:
        final[off:off + n] = bytes([b]) * n
    return bytes(final)


def inconsistent_everywhere(img, names, disabled, what):
    bi = info(img)
    check(set(bi) == set(names), '%s: bitmaps %s' % (what, sorted(bi)))
    for n in names:
        check(not bi[n]['consistent'], '%s: %s consistent' % (what, n))
        check(bi[n]['enabled'] == (n not in disabled),
              '%s: %s enabled=%s' % (what, n, bi[n]['enabled']))
        _, r = map_runs(img, n, want=1)
        check('inconsistent' in r.err, '%s: map --bitmap: %r' % (what, r))
    r = prl_img('info', img)
    check('consistent: false' in r.out, what + ': human info')


def test():
    rnd = random.Random(int(os.environ.get('PRL_RANDOM_SEED', '4')))
    for how in ('check', 'rw-open'):
        img = create('k.hdd', SIZE, CS)
        a, b = add(img, granularity=512), add(img, granularity=64 * KIB)
        bitmap(img, '--disable', img, b)
        changes(img, [('write', SIZE - 1, 1)])
        with_transit(img)
        names = [a, b]

        final = killed_writer(img, rnd)
        check(parimg.parse(img)['in_use'] == parimg.IN_USE_DIRTY,
              'the killed writer left in_use clean')
        before = sha256(img)
        inconsistent_everywhere(img, names, [b], how + ' after the kill')
        check(read_image(img, SIZE // 2) == final, 'flushed data lost')
        r = prl_img('convert', '--bitmaps', '-O', 'parallels', img,
                    img + '.copy', want=1)
        check('inconsistent' in r.err, 'convert --bitmaps: %r' % r)
        check(sha256(img) == before, 'read-only opens changed it')

        if how == 'check':
            r = prl_img('check', '-r', 'all', img)
            check('inconsistent' in r.out + r.err,
                  'check -r all does not mention the bitmaps: %r' % r)
            inconsistent_everywhere(img, names, [b], 'after check -r all')
            r = io(img, ['write -P 9 0 1'])
        else:
            r = io(img, ['write -P 9 0 1'])
            check('not closed cleanly' in r.err, 'no repair notice: %r' % r)
        final = b'\x09' + final[1:]
        inconsistent_everywhere(img, names, [b], how + ', then written')
        check(parimg.parse(img)['in_use'] == parimg.IN_USE_CLEAN,
              how + ': not clean')
        r = prl_img('bitmap', '--merge', b, img, a, want=1)
        check('inconsistent' in r.err, how + ': merge: %r' % r)
        # Again, to be sure it is stored so, not only loaded so.
        io(img, ['write -P 9 1 1'])
        final = b'\x09\x09' + final[2:]
        inconsistent_everywhere(img, names, [b], how + ', written twice')
        feats = parext.parse_ext(parext.read_ext(img)[1])['features']
        kept = [f['raw'] for f in feats if f['magic'] == UNKNOWN]
        check(kept == [parext.Feature(UNKNOWN, parext.TRANSIT,
                                      b'keep me').encode()],
              how + ': TRANSIT feature lost: %r' % feats)
        check(read_image(img, SIZE // 2) == final, how + ': data lost')

        # --clear makes one usable again, --remove drops the other.
        bitmap(img, '--clear', img, a)
        bi = info(img)
        check(bi[a]['consistent'] and not bi[b]['consistent'],
              how + ': after --clear: %r' % bi)
        expect_runs(img, a, [], how + ' cleared:')
        changes(img, [('write', 3 * MIB, 1)])
        expect_runs(img, a, [(3 * MIB, 512)], how + ' tracking again:')
        bitmap(img, '--remove', img, b)
        check(list(info(img)) == [a], how + ': after --remove')
        r = run(['qemu-img', 'check', '-f', 'parallels', img], want=None)
        if r.rc != 127:
            # The TRANSIT feature has flags: QEMU refuses to open it.
            check('Flags' in r.err or r.rc == 0, 'qemu-img check: %r' % r)
        prl_img('check', img)


main(test)
