# SPDX-License-Identifier: MIT
"""--discard: with unmap, NBD_CMD_TRIM frees space in the image (and
write-zeroes without NO_HOLE may: whether it does is the driver's
choice); with ignore (the default), and with NO_HOLE, nothing is freed.
Data reads back as it must either way.

st_blocks also counts the file system's own blocks (ext4's extent tree
grows when a hole splits an extent and shrinks when extents merge), so
the space checks allow SLACK bytes of that; what they tell apart is 2 MiB
of data freed or kept."""

import os

from nbdtest import *  # noqa: F401,F403

SIZE = 8 << 20
SLACK = 64 << 10


def allocated(p):
    return os.stat(p).st_blocks * 512


def fill(p):
    with open(p, 'wb') as f:
        f.write(b'\x5a' * SIZE)
        f.flush()
        os.fsync(f.fileno())


def test():
    img = path('d.img')
    fill(img)
    with Server('-t', '--discard=unmap', img) as srv:
        c = Client(srv.sock)
        c.connect(structured=True)
        before = allocated(img)
        r = c.cmd(CMD_TRIM, 0, 2 << 20)
        check(r.error == 0, 'trim %r' % r)
        after_trim = allocated(img)
        check(after_trim <= before - (2 << 20) + SLACK,
              'trim with unmap freed %d bytes' % (before - after_trim))
        r = c.cmd(CMD_WRITE_ZEROES, 2 << 20, 2 << 20)
        check(r.error == 0, 'zero %r' % r)
        after_zero = allocated(img)
        r = c.cmd(CMD_WRITE_ZEROES, 4 << 20, 2 << 20, F_NO_HOLE)
        check(r.error == 0, 'zero no-hole %r' % r)
        check(allocated(img) >= after_zero - SLACK,
              'NO_HOLE freed space')
        r = c.cmd(CMD_READ, 2 << 20, 4 << 20)
        check(r.data == bytes(4 << 20), 'zeroed range does not read zero')
        r = c.cmd(CMD_READ, 6 << 20, 4096)
        check(r.data == b'\x5a' * 4096, 'data beyond the zeroes changed')
        c.disconnect()

    fill(img)
    with Server('-t', img) as srv:
        c = Client(srv.sock)
        c.connect()
        before = allocated(img)
        r = c.cmd(CMD_TRIM, 0, 4 << 20, F_FUA)
        check(r.error == 0, 'ignored trim %r' % r)
        r = c.cmd(CMD_WRITE_ZEROES, 4 << 20, 2 << 20)
        check(r.error == 0, 'zero %r' % r)
        check(allocated(img) >= before - SLACK,
              'space freed with --discard=ignore')
        r = c.cmd(CMD_READ, 4 << 20, 2 << 20)
        check(r.data == bytes(2 << 20), 'zeroes do not read back')
        c.disconnect()


main(test)
