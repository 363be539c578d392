# SPDX-License-Identifier: MIT
"""libnbd's python binding (the library behind nbdsh, nbdinfo, nbdcopy)
against prl-nbd: every command and flag with structured replies on and
off, asynchronous requests in flight, errors it reports, block status of
raw and Parallels exports, over a Unix socket and TCP."""

import errno
import os

from nbdtest import *  # noqa: F401,F403

try:
    import nbd
except ImportError:
    skip('python module nbd (libnbd) is not installed')

SIZE = 32 << 20


def handle(uri, structured=True, meta=True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    if meta:
        h.add_meta_context('base:allocation')
        h.add_meta_context('qemu:allocation-depth')
    h.connect_uri(uri)
    return h


def expect_error(fn, errno_want, what):
    try:
        fn()
    except nbd.Error as e:
        check(e.errno == errno.errorcode[errno_want],
              '%s: errno %r, want %s (%s)' %
              (what, e.errno, errno.errorcode[errno_want], e))
        return
    raise Failure('%s succeeded' % what)


def extents(h, ctx, off, n, flags=0):
    got = []

    def cb(metacontext, offset, entries, err):
        if metacontext == ctx:
            got.extend(zip(entries[0::2], entries[1::2]))
    h.block_status(n, off, cb, flags)
    return got


def exercise(uri, img, structured, off):
    h = handle(uri, structured)
    check(h.get_structured_replies_negotiated() == structured,
          'structured replies negotiated: %r' %
          h.get_structured_replies_negotiated())
    check(h.get_size() == SIZE, 'size')
    for fn in ('can_flush', 'can_fua', 'can_trim', 'can_zero',
               'can_fast_zero', 'can_cache', 'can_multi_conn'):
        check(getattr(h, fn)(), fn)
    check(h.can_df() == structured, 'can_df %r' % h.can_df())
    check(not h.is_read_only() and not h.is_rotational(), 'ro/rotational')
    check(h.can_meta_context('base:allocation') == structured,
          'base:allocation negotiated')
    data = os.urandom(1 << 20)
    h.pwrite(data, off)
    h.pwrite(data[:4096], off + (1 << 20), nbd.CMD_FLAG_FUA)
    check(h.pread(1 << 20, off) == data, 'read back')
    check(h.pread(4096, off + (1 << 20)) == data[:4096], 'FUA write')
    if structured:
        chunks = []

        def chunk(sub, offset, status, err):
            chunks.append((offset, status, bytes(sub)))
        buf = h.pread_structured(65536, off, chunk, nbd.CMD_FLAG_DF)
        check(buf == data[:65536] and len(chunks) == 1 and
              chunks[0][1] == nbd.READ_DATA, 'DF read %r' %
              [(o, s) for o, s, _ in chunks])
        chunks.clear()
        buf = h.pread_structured(3 << 20, off, chunk)
        check(buf == data + data[:4096] + bytes((2 << 20) - 4096) and
              any(s == nbd.READ_HOLE for _, s, _ in chunks),
              'sparse structured read %r' % [(o, s) for o, s, _ in chunks])
        check(h.pread(4096, off + (3 << 20)) == bytes(4096), 'hole read')
    h.flush()
    h.cache(1 << 20, off)
    h.trim(65536, off)
    h.trim(65536, off + 65536, nbd.CMD_FLAG_FUA)
    h.zero(65536, off + 131072)
    h.zero(65536, off + 196608, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    check(h.pread(65536, off + 131072) == bytes(65536), 'zeroed')
    check(h.pread(65536, off + 196608) == bytes(65536), 'zeroed no hole')
    try:
        h.zero(1 << 20, off + (2 << 20), nbd.CMD_FLAG_FAST_ZERO)
    except nbd.Error as e:
        check(e.errno == 'ENOTSUP', 'fast zero failed %s' % e)
    # Errors libnbd lets through (strict mode off): the server's answer.
    h.set_strict_mode(0)
    expect_error(lambda: h.pread(4096, SIZE - 2048), errno.EINVAL,
                 'read past the end')
    expect_error(lambda: h.pwrite(bytes(4096), SIZE - 2048), errno.ENOSPC,
                 'write past the end')
    expect_error(lambda: h.trim(4096, SIZE - 2048), errno.EINVAL,
                 'trim past the end')
    expect_error(lambda: h.pread(512, 0, nbd.CMD_FLAG_NO_HOLE),
                 errno.EINVAL, 'read with NO_HOLE')
    h.set_strict_mode(nbd.STRICT_MASK if hasattr(nbd, 'STRICT_MASK')
                      else 0x1f)
    check(h.pread(4096, off + (1 << 20)) == data[:4096], 'still usable')
    # Block status.
    if structured:
        ext = extents(h, 'base:allocation', off + (4 << 20), 1 << 20)
        check(ext and ext[0][1] == 3, 'hole extent %r' % ext)
        ext = extents(h, 'qemu:allocation-depth', 0, 1 << 20)
        check(ext and ext[0][1] == 1, 'raw depth %r' % ext)
        ext = extents(h, 'base:allocation', off + (1 << 20), 1 << 20,
                      nbd.CMD_FLAG_REQ_ONE)
        check(len(ext) == 1 and ext[0][0] <= 1 << 20, 'REQ_ONE %r' % ext)
    else:
        h.set_strict_mode(0)
        expect_error(lambda: extents(h, 'base:allocation', 0, 4096),
                     errno.EINVAL, 'block status without contexts')
    # Many requests in flight, answered in any order.
    bufs = [nbd.Buffer(65536) for _ in range(64)]
    cookies = [h.aio_pread(bufs[i], off + i * 65536 % (1 << 20))
               for i in range(64)]
    check(h.aio_in_flight() > 0, 'nothing in flight')
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for i, c in enumerate(cookies):
        check(h.aio_command_completed(c), 'request %d not completed' % i)
        want = data[i * 65536 % (1 << 20):][:65536]
        if i * 65536 % (1 << 20) < 65536 * 4:
            continue  # trimmed or zeroed above
        check(bufs[i].to_bytearray() == want, 'aio read %d' % i)
    h.shutdown()
    got = file_bytes(img, off + (1 << 20), 4096)
    check(got == data[:4096], 'FUA data not in the file')


def parallels(srv_uri, hdd):
    h = handle(srv_uri)
    data = os.urandom(256 << 10)
    h.pwrite(data, 3 << 20)
    h.flush()
    check(h.pread(256 << 10, 3 << 20) == data, 'parallels read back')
    ext = extents(h, 'base:allocation', 0, 8 << 20)
    check(ext[0] == (3 << 20, 3), 'unallocated start %r' % ext[:3])
    check((256 << 10, 0) in ext or ext[1][1] == 0, 'data extent %r' % ext)
    dep = extents(h, 'qemu:allocation-depth', 0, 8 << 20)
    check(dep[0] == (3 << 20, 0) and dep[1][1] == 1, 'depth %r' % dep)
    h.zero(1 << 20, 3 << 20)
    check(h.pread(4096, 3 << 20) == bytes(4096), 'parallels zero')
    h.shutdown()



def test():
    requires('qemu-img')
    img = make_raw('l.img', SIZE, pattern=False)
    hdd = path('l.hdd')
    run(['qemu-img', 'create', '-q', '-f', 'parallels', hdd, '8M'])
    port = free_port()
    with Server('-t', '-e', '0', '-b', '127.0.0.1', '-p', port, '-A', img,
                '--export', 'p=%s,allocation-depth' % hdd) as srv:
        exercise(srv.uri, img, True, 0)
        exercise(srv.uri, img, False, 8 << 20)
        exercise('nbd://127.0.0.1:%d/' % port, img, True, 16 << 20)
        parallels(srv.uri_for('p'), hdd)
    run(['qemu-img', 'check', '-q', '-f', 'parallels', hdd])


main(test)
