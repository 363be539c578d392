# SPDX-License-Identifier: MIT
"""QEMU 7.2 as a reader of the bitmaps prl writes: for images of several
cluster sizes and granularities, several bitmaps per image, L1 entries
of every form, `qemu-nbd -r -B UUID` + `nbdinfo --map=qemu:dirty-bitmap:`
shows the same extents as `prl-img map --bitmap`, and `qemu-img check`
finds no leak or corruption, also after --clear, --remove and in what
convert --bitmaps writes.  (QEMU refuses any feature with flags, so
images holding prl's attributes feature, written for disabled or
inconsistent bitmaps, are not shown to it.)"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bmtest import KIB, MIB, add, bitmap, changes, create, map_runs
import parext
from prltest import Failure, check, main, path, prl_img, requires, run

SIZE = 24 * MIB + 512


def qemu_runs(img, name):
    """Dirty ranges of bitmap |name| as qemu-nbd exports it."""
    sock = path('q.sock')
    if os.path.exists(sock):
        os.unlink(sock)
    log = open(path('qemu-nbd.log'), 'w+')
    p = subprocess.Popen(['qemu-nbd', '-r', '-f', 'parallels', '-B', name,
                          '-k', sock, img], stdout=log, stderr=log)
    try:
        for _ in range(100):
            if os.path.exists(sock) or p.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(sock):
            log.seek(0)
            raise Failure('qemu-nbd did not start: %s' % log.read())
        r = run(['nbdinfo', '--json', '--map=qemu:dirty-bitmap:' + name,
                 'nbd+unix:///?socket=' + sock])
    finally:
        # Without -t it leaves after its one client; give it a moment.
        for _ in range(50):
            if p.poll() is not None:
                break
            time.sleep(0.02)
        if p.poll() is None:
            p.kill()
        p.wait()
        log.close()
    runs, pos = [], 0
    for e in json.loads(r.out):
        check(e['offset'] == pos, 'nbdinfo extents not contiguous: %r' % e)
        if e['type'] & 1:
            if runs and runs[-1][0] + runs[-1][1] == e['offset']:
                runs[-1] = (runs[-1][0], runs[-1][1] + e['length'])
            else:
                runs.append((e['offset'], e['length']))
        pos += e['length']
    check(pos == SIZE, 'nbdinfo map covers %d of %d bytes' % (pos, SIZE))
    return runs


def qemu_check(img, what):
    r = run(['qemu-img', 'check', '-f', 'parallels', img], want=None)
    check(r.rc == 0 and 'No errors were found' in r.out and
          'leaked' not in r.out + r.err,
          '%s: qemu-img check: %r' % (what, r))


def same_as_qemu(img, names, what):
    for n in names:
        mine, _ = map_runs(img, n)
        theirs = qemu_runs(img, n)
        check(mine == theirs, '%s bitmap %s:\n prl  %s\n qemu %s'
              % (what, n, mine, theirs))
    qemu_check(img, what)


def test():
    requires('qemu-nbd', 'qemu-img', 'nbdinfo')
    for cs, legacy, grans in [(4 * KIB, False, [512, 64 * KIB]),
                              (32256, True, [512, MIB]),
                              (MIB, False, [4 * KIB, MIB])]:
        what = 'cluster %d%s:' % (cs, ' legacy' if legacy else '')
        img = create('peer.hdd', SIZE, cs, legacy)
        names = [add(img, granularity=g) for g in grans]
        changes(img, [('write', 1, 1000), ('write', 131000, 70000),
                      ('zero', 3 * MIB, 4096), ('trim', 5 * MIB + 3, 100),
                      ('write', SIZE - 10, 10),
                      ('zero', 8 * MIB, 16 * MIB - 4096)])
        # Stored as 0, 1 and cluster L1 entries with 512 B granules in
        # 4 KiB clusters; QEMU must read all three.
        same_as_qemu(img, names, what)
        names.append(add(img, 'AAAAAAAA-bbbb-4ccc-8ddd-eeeeeeeeeeee',
                         granularity=128 * KIB))
        changes(img, [('write', 7 * MIB, 4096)])
        # The name QEMU gives a bitmap is the UUID text, as prl's.
        check(set(parext.read_bitmaps(img)) == set(names),
              '%s stored names %s, want %s'
              % (what, sorted(parext.read_bitmaps(img)), sorted(names)))
        same_as_qemu(img, names, what + ' second session')
        # What convert --bitmaps writes, QEMU reads the same way.
        copy = img + '.copy'
        if os.path.exists(copy):
            os.unlink(copy)
        prl_img('convert', '--bitmaps', '-O', 'parallels', '-o',
                'cluster_size=64K', img, copy)
        same_as_qemu(copy, names, what + ' converted')
        os.unlink(copy)
        bitmap(img, '--clear', img, names[0])
        same_as_qemu(img, names, what + ' after --clear')
        bitmap(img, '--remove', img, names[1])
        same_as_qemu(img, [names[0]] + names[2:], what + ' after --remove')
        for n in [names[0]] + names[2:]:
            bitmap(img, '--remove', img, n)
        qemu_check(img, what + ' all removed')
        check(parext.read_ext(img)[1] is None,
              what + ' no bitmaps left but ext_off is set')


main(test)
