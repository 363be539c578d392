# SPDX-License-Identifier: MIT
"""base:allocation of a raw export (answered from FIEMAP windows) equals
the SEEK_DATA/SEEK_HOLE walk of the file, for data synced to disk, data
still in the page cache (delayed allocation), fallocated (unwritten)
ranges with and without data written into them, and after every write,
trim and zero through the server (which must drop the window); also on
a file with more extents than one window holds."""

import os

from nbdtest import *  # noqa: F401,F403

try:
    import nbd
except ImportError:
    skip('python module nbd (libnbd) is not installed')

MiB = 1 << 20


def seek_map(p):
    """[(offset, length, is_data)] from lseek, merged."""
    fd = os.open(p, os.O_RDONLY)
    size = os.fstat(fd).st_size
    out, pos = [], 0
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            d = size
        if d > pos:
            out.append((pos, d - pos, False))
            pos = d
            continue
        end = os.lseek(fd, pos, os.SEEK_HOLE)
        out.append((pos, end - pos, True))
        pos = end
    os.close(fd)
    return out


def nbd_map(h, size, step=1 << 31):
    out, pos = [], 0

    def cb(meta, off, ents, err):
        nonlocal pos
        check(off == pos, 'reply for %d, asked %d' % (off, pos))
        for i in range(0, len(ents), 2):
            n, data = ents[i], not ents[i + 1] & 1
            check(n > 0, 'empty extent')
            if out and out[-1][2] == data:
                out[-1] = (out[-1][0], out[-1][1] + n, data)
            else:
                out.append((pos, n, data))
            pos += n
        return 0
    while pos < size:
        h.block_status(min(size - pos, step), pos, cb)
    return out


def same(h, img, size, what):
    got, want = nbd_map(h, size), seek_map(img)
    check(got == want, '%s: prl-nbd %r\nlseek %r' % (what, got[:20],
                                                     want[:20]))


def test():
    img = path('r.raw')
    size = 256 * MiB
    with open(img, 'wb') as f:
        f.truncate(size)
    fd = os.open(img, os.O_RDWR)
    try:
        os.pwrite(fd, b'a' * 8192, 1 * MiB)
        os.fsync(fd)
        os.posix_fallocate(fd, 10 * MiB, 4 * MiB)     # unwritten
        os.pwrite(fd, b'b' * 4096, 11 * MiB)         # into unwritten
        os.pwrite(fd, b'c' * 65536, 20 * MiB)        # delayed allocation
        os.pwrite(fd, b'd' * 4096, 30 * MiB)
        os.fsync(fd)
        os.pwrite(fd, b'e' * 4096, 40 * MiB)
    finally:
        os.close(fd)
    with Server('-t', '-f', 'raw', img) as srv:
        h = nbd.NBD()
        h.add_meta_context('base:allocation')
        h.connect_unix(srv.sock)
        same(h, img, size, 'initial')
        # Changes through the server are seen by the next request.
        h.pwrite(b'x' * 4096, 100 * MiB)
        same(h, img, size, 'after a write into a hole')
        h.trim(8192, 1 * MiB)
        same(h, img, size, 'after a trim')
        h.zero(4096, 30 * MiB)
        same(h, img, size, 'after a zero')
        h.pwrite(b'y' * 4096, 12 * MiB)
        same(h, img, size, 'after a write into fallocated space')
        h.shutdown()

    # More data extents than one FIEMAP window (512): 2000 of them, and
    # short requests that each end inside one.
    many = path('m.raw')
    with open(many, 'wb') as f:
        f.truncate(size)
        for i in range(2000):
            f.seek(i * 128 * 1024)
            f.write(b'\x01' * 4096)
    with Server('-t', '-r', '-f', 'raw', many) as srv:
        h = nbd.NBD()
        h.add_meta_context('base:allocation')
        h.connect_unix(srv.sock)
        want = seek_map(many)
        check(len(want) == 4000, '%d extents in the file' % len(want))
        check(nbd_map(h, size) == want, 'many extents differ')
        check(nbd_map(h, size, step=100000) == want,
              'many extents in short requests differ')
        h.shutdown()


main(test)
