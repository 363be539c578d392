# SPDX-License-Identifier: MIT
"""NBD_CMD_CACHE reads the data of the range into the host's page cache
(posix_fadvise WILLNEED on the file ranges behind it, without copying it
through the server): on a Parallels image, the host clusters of the
guest range become resident and an allocated cluster outside it does
not; on a raw file, the range itself.  Residency is read with mincore(2)
after the file's pages were dropped (POSIX_FADV_DONTNEED), in a bounded
wait, as the reply may come before the read-ahead is done."""

import ctypes
import json
import mmap
import os
import time

from nbdtest import *  # noqa: F401,F403
from prltest import prl_img, prl_io

MiB = 1 << 20
PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident(p, off, length):
    """Fraction of the pages of [off, off+length) of file p in memory."""
    size = os.path.getsize(p)
    fd = os.open(p, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        check(addr not in (None, ctypes.c_void_p(-1).value),
              'mmap: errno %d' % ctypes.get_errno())
        n = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * n)()
        r = libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
        check(r == 0, 'mincore: errno %d' % ctypes.get_errno())
    finally:
        os.close(fd)
    first, last = off // PAGE, (off + length - 1) // PAGE
    return sum(vec[i] & 1 for i in range(first, last + 1)) / (last - first + 1)


def evict(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    left = resident(p, 0, os.path.getsize(p))
    check(left < 0.05, 'could not drop the pages of %s: %.0f%% still in '
          'memory' % (p, left * 100))


def wait_resident(p, off, length, what):
    for _ in range(100):
        got = resident(p, off, length)
        if got >= 0.9:
            return
        time.sleep(0.05)
    check(False, '%s: %.0f%% of the range is in memory after CACHE' %
          (what, got * 100))


def cache(srv, off, length):
    c = Client(srv.sock)
    c.connect(structured=True)
    r = c.cmd(CMD_CACHE, off, length)
    check(r.error == 0, 'cache %r' % r)
    c.disconnect()


def host_offset(hdd, guest):
    out = prl_img('map', '--output=json', hdd).out
    for e in json.loads(out):
        if e['start'] <= guest < e['start'] + e['length'] and e['data']:
            return e['offset'] + guest - e['start']
    check(False, 'guest offset %d is not allocated' % guest)


def test():
    hdd = path('c.hdd')
    prl_img('create', '-q', '-o', 'cluster_size=1M', hdd, '32M')
    prl_io(hdd, ['write -P 1 4M 4M', 'write -P 2 20M 2M'])
    h4, h20 = host_offset(hdd, 4 * MiB), host_offset(hdd, 20 * MiB)
    with Server('-t', '-r', hdd) as srv:
        evict(hdd)
        cache(srv, 4 * MiB, 4 * MiB)
        wait_resident(hdd, h4, 4 * MiB, 'parallels')
        other = resident(hdd, h20, 2 * MiB)
        check(other < 0.5, 'a cluster outside the range came in too '
              '(%.0f%%)' % (other * 100))
        # A range of holes needs nothing and succeeds.
        cache(srv, 24 * MiB, 8 * MiB)
    print('parallels: the 4 host clusters of the range came in, the '
          'cluster outside it stayed out (%.0f%%)' % (other * 100))

    img = path('c.raw')
    with open(img, 'wb') as f:
        f.write(os.urandom(16 * MiB))
    with Server('-t', img) as srv:
        evict(img)
        cache(srv, 8 * MiB, 2 * MiB)
        wait_resident(img, 8 * MiB, 2 * MiB, 'raw')
        check(resident(img, 0, 4 * MiB) < 0.5, 'raw: the start came in too')


main(test)
