# SPDX-License-Identifier: MIT
"""Zero-copy reads (sendfile from the image file to the socket): reads
of 128 KiB and more on raw, Parallels and bundle exports, read-only and
writable, over a Unix socket and TCP, in simple, structured and extended
mode, with and without DF, across data/hole/data and at the end of the
export, all equal to the file's guest data; all-zero granules of data
still come as holes.  Under strace, the server answers with sendfile(2)
for each of them on a Unix socket, and copies on TCP loopback.  Reads
racing writes see every byte old or new; reads of a cluster racing
writes and trims of other clusters (whose freed space new clusters
reuse) never see their bytes, on a Parallels image and on a bundle's
top layer; reads after a trim read zeroes; the server survives and the
image checks clean."""

import random
import threading

from nbdtest import *  # noqa: F401,F403
from prltest import prl_img, prl_io

MiB = 1 << 20
SIZE = 8 * MiB
MODES = ('simple', 'structured', 'extended')


def connect(srv, mode, port=None):
    return mode_client(srv.sock, mode, port)


def make_layout(name):
    """Data 0..1M, hole 1M..2M, data 2M..3M, allocated zeroes
    3M..3.5M, hole, data in the last 384 KiB."""
    p = path(name)
    rnd = random.Random(7)
    with open(p, 'wb') as f:
        f.truncate(SIZE)
        for off, n in ((0, MiB), (2 * MiB, MiB), (SIZE - 384 * 1024,
                                                  384 * 1024)):
            f.seek(off)
            f.write(bytes(rnd.randrange(1, 256) for _ in range(n)))
        f.seek(3 * MiB)
        f.write(bytes(MiB // 2))
    return p


# Reads (offset, length) every export is checked with.
READS = ((0, 128 * 1024), (512 * 1024, 2 * MiB), (MiB, MiB),
         (3 * MiB, MiB // 2), (SIZE - 384 * 1024, 384 * 1024),
         (SIZE - 128 * 1024, 128 * 1024), (4096, 4096), (0, SIZE),
         (MiB - 4096, MiB + 8192))


def check_reads(srv, want, what, port=None):
    """Every READ in every mode (DF too) equals |want| (guest bytes)."""
    for mode in MODES:
        c = connect(srv, mode, port)
        for off, n in READS:
            r = c.cmd(CMD_READ, off, n)
            check(r.error == 0 and r.data == want[off:off + n],
                  '%s %s: read %d+%d: %r' % (what, mode, off, n, r))
            if mode == 'simple':
                continue
            r = c.cmd(CMD_READ, off, n, F_DF)
            check(r.error == 0 and r.types() == [R_DATA] and
                  r.data == want[off:off + n],
                  '%s %s: DF read %d+%d: %r' % (what, mode, off, n, r))
        if mode != 'simple':
            # Data, hole, data: the hole is a hole chunk.
            r = c.cmd(CMD_READ, 512 * 1024, 2 * MiB)
            check(r.types().count(R_HOLE) == 1 and R_DATA in r.types(),
                  '%s %s: data/hole/data chunks %r' % (what, mode, r))
            # Allocated zeroes: a hole as well.
            r = c.cmd(CMD_READ, 3 * MiB, MiB // 2)
            check(r.types() == [R_HOLE] and r.data == bytes(MiB // 2),
                  '%s %s: allocated zeroes %r' % (what, mode, r))
        # Several in flight, answered whole.
        for i, (off, n) in enumerate(READS):
            c.request(CMD_READ, off, n, cookie=100 + i)
        lens = {100 + i: n for i, (_, n) in enumerate(READS)}
        got = {}
        for _ in READS:
            if mode == 'simple':
                r = c.result(lens)
            else:
                r = c.result()
            got[r.cookie] = r
        for i, (off, n) in enumerate(READS):
            r = got[100 + i]
            check(r.error == 0 and r.data == want[off:off + n],
                  '%s %s: in flight %d+%d' % (what, mode, off, n))
        c.disconnect()


def traced(args, want, port=None):
    """Read 2 MiB from prl-nbd |args| under strace: right data, sent
    with sendfile over the Unix socket; over TCP loopback (|port|),
    copied, which is faster there."""
    extra = ('-b', '127.0.0.1', '-p', port) if port else ()
    t = Traced('-t', *(extra + args))
    try:
        c = tcp_client(port) if port else Client(t.sock)
        c.connect(structured=True)
        r = c.cmd(CMD_READ, 0, 2 * MiB)
        check(r.data == want[:2 * MiB], '%r: traced read' % (args,))
        c.disconnect()
    finally:
        # sendfile calls that moved data
        n = sum(1 for line in t.stop() if 'sendfile(' in line and
                not line.rstrip().endswith('= 0'))
    if port:
        check(n == 0, '%r: sendfile on TCP loopback (%d calls)' % (args, n))
    else:
        check(n > 0, '%r: no sendfile call moved data' % (args,))


def raw_exports():
    img = make_layout('zc.raw')
    want = file_bytes(img)
    port = free_port()
    with Server('-t', '-e', '0', '-p', port, '-b', '127.0.0.1', img) as srv:
        check_reads(srv, want, 'raw unix')
        check_reads(srv, want, 'raw tcp', port)
    with Server('-t', '-r', img) as srv:
        check_reads(srv, want, 'raw read-only')
    traced((img,), want)
    traced((img,), want, free_port())


def parallels_exports():
    hdd = path('zc.hdd')
    run(['qemu-img', 'create', '-q', '-f', 'parallels', hdd, str(SIZE)])
    prl_io(hdd, ['write -P 5 0 1M', 'write -P 6 2M 1M',
                 'write -P 0 3M 512K', 'write -P 7 %d 384K' %
                 (SIZE - 384 * 1024), 'write -P 8 100000 5000'])
    out = path('zc-hdd.raw')
    run(['qemu-img', 'convert', '-f', 'parallels', '-O', 'raw', hdd, out])
    want = file_bytes(out)
    with Server('-t', '-r', hdd) as srv:
        check_reads(srv, want, 'parallels read-only')
    # Writable: sent from the file too.
    with Server('-t', hdd) as srv:
        check_reads(srv, want, 'parallels writable')
    traced(('-r', hdd), want)
    traced((hdd,), want)
    run(['qemu-img', 'check', '-q', '-f', 'parallels', hdd])


def bundle_export():
    b = path('zc-bundle.hdd')
    prl_img('create', '-q', '-f', 'bundle', '-o', 'cluster_size=64K', b,
            str(SIZE))
    prl_io(b, ['write -P 1 0 3M', 'write -P 1 7M 100000'])
    prl_img('snapshot', '-c', b)
    prl_io(b, ['write -P 2 1M 64K', 'write -P 2 5M 1M', 'write -P 0 3M 512K'])
    prl_img('snapshot', '-c', b)
    prl_io(b, ['write -P 3 2M 70000', 'write -P 3 5M 4096',
               'write -P 3 %d 4096' % (SIZE - 4096)])
    out = path('zc-bundle.raw')
    prl_img('convert', '-O', 'raw', b, out)
    want = file_bytes(out)
    check(len(want) == SIZE, 'bundle converted to %d bytes' % len(want))
    for args in (('-r', b), (b,)):
        check_bundle(args, want)
    traced((b,), want)


def check_bundle(args, want):
    with Server('-t', *args) as srv:
        for mode in MODES:
            c = connect(srv, mode)
            for off, n in READS + ((MiB + 4096, 2 * MiB),):
                r = c.cmd(CMD_READ, off, n)
                check(r.error == 0 and r.data == want[off:off + n],
                      'bundle %s: read %d+%d: %r' % (mode, off, n, r))
                if mode != 'simple':
                    r = c.cmd(CMD_READ, off, n, F_DF)
                    check(r.error == 0 and r.data == want[off:off + n],
                          'bundle %s: DF read %d+%d' % (mode, off, n))
            c.disconnect()


def race(srv, mode, region, cluster, allowed, writer_ops, seconds=2.0):
    """Readers of |region| (bytes in |allowed| only) against writers
    running |writer_ops| (functions of a client) until time is up."""
    stop = threading.Event()
    errors = []

    def reader(m):
        try:
            c = connect(srv, m)
            n = 0
            while not stop.is_set() or n < 20:
                off = region[0] + (n % 4) * (cluster // 4)
                r = c.cmd(CMD_READ, off, cluster // 2 + 4096 * (n % 3))
                if r.error != 0 or not set(r.data) <= allowed:
                    errors.append('%s read %r: bytes %r' %
                                  (m, r, sorted(set(r.data or b''))[:8]))
                    break
                n += 1
            c.disconnect()
        except Exception as e:  # noqa: BLE001
            errors.append('%s reader: %r' % (m, e))

    def writer(op):
        try:
            c = connect(srv, 'structured')
            i = 0
            while not stop.is_set():
                op(c, i)
                i += 1
            c.disconnect()
        except Exception as e:  # noqa: BLE001
            errors.append('writer: %r' % (e,))

    threads = [threading.Thread(target=reader, args=(m,)) for m in MODES]
    threads += [threading.Thread(target=writer, args=(op,))
                for op in writer_ops]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    check(not errors, '%s race: %s' % (mode, '; '.join(errors[:3])))
    check(srv.alive(), 'server died in the race:\n' + srv.stderr())


def expect_ok(r, what):
    check(r.error == 0, '%s: %r' % (what, r))


def raw_races():
    img = make_layout('race.raw')
    region = (4 * MiB, 4 * MiB + MiB)
    vals = (0x11, 0x22, 0x33)
    with Server('-t', '-e', '0', img) as srv:
        def write(c, i):
            expect_ok(c.cmd(CMD_WRITE, region[0], MiB,
                            payload=bytes([vals[i % 3]]) * MiB), 'write')

        def trim(c, i):
            expect_ok(c.cmd(CMD_TRIM, region[0] + (i % 4) * 256 * 1024,
                            256 * 1024), 'trim')
        race(srv, 'raw', region, MiB, set(vals) | {0}, (write, trim))
        c = connect(srv, 'structured')
        expect_ok(c.cmd(CMD_WRITE, region[0], MiB,
                        payload=bytes([0x44]) * MiB), 'last write')
        r = c.cmd(CMD_READ, region[0], MiB)
        check(r.data == bytes([0x44]) * MiB, 'raw: last write not read back')
        c.disconnect()


def parallels_races():
    """Trim of cluster 2 while it is read, and writes to fresh clusters
    that may take its host cluster: a read of cluster 2 never shows
    their bytes (0x99)."""
    hdd = path('race.hdd')
    run(['qemu-img', 'create', '-q', '-f', 'parallels', '-o',
         'cluster_size=1M', hdd, str(32 * MiB)])
    prl_io(hdd, ['write -P 1 0 2M', 'write -P 2 2M 2M'])
    cluster_races(hdd, 'parallels')
    run(['qemu-img', 'check', '-q', '-f', 'parallels', hdd])
    # Read-only (zero copy) after the race: the refilled cluster.
    with Server('-t', '-r', hdd) as srv:
        c = connect(srv, 'structured')
        r = c.cmd(CMD_READ, 2 * MiB, MiB)
        check(r.data == bytes([2]) * MiB, 'cluster 2 after the race %r' % r)
        c.disconnect()


def bundle_races():
    """The same race on the top layer of a bundle with a snapshot."""
    b = path('race-bundle.hdd')
    prl_img('create', '-q', '-f', 'bundle', '-o', 'cluster_size=1M', b,
            str(32 * MiB))
    prl_io(b, ['write -P 1 0 2M'])
    prl_img('snapshot', '-c', b)
    prl_io(b, ['write -P 2 2M 2M'])
    cluster_races(b, 'bundle')
    prl_img('check', '-q', b)


def cluster_races(img, what):
    """Readers of cluster 2 while it is rewritten (2 or 5) and while
    other clusters are written (0x99) and trimmed, freeing space that new
    clusters reuse: a read of cluster 2 shows only 2 and 5.  Then trims
    of cluster 2 that race reads and refills (a racing read may show any
    bytes of the disk: NBD leaves trimmed contents unspecified), and
    reads sent after a trim was answered read zeroes."""
    with Server('-t', '-e', '0', '--discard=unmap', img) as srv:
        def rewrite(c, i):
            expect_ok(c.cmd(CMD_WRITE, 2 * MiB, MiB,
                            payload=bytes([(2, 5)[i % 2]]) * MiB), 'rewrite')

        def others(c, i):
            off = (4 + i % 28) * MiB
            expect_ok(c.cmd(CMD_WRITE, off, MiB,
                            payload=bytes([0x99]) * MiB), 'other write')
            expect_ok(c.cmd(CMD_TRIM, off, MiB), 'other trim')
        race(srv, what, (2 * MiB, 3 * MiB), MiB, {2, 5}, (rewrite, others))

        def trim_refill(c, i):
            expect_ok(c.cmd(CMD_TRIM, 2 * MiB, MiB), 'trim')
            expect_ok(c.cmd(CMD_WRITE, 2 * MiB, MiB,
                            payload=bytes([2]) * MiB), 'refill')
        race(srv, what, (2 * MiB, 3 * MiB), MiB, set(range(256)),
             (trim_refill, others), seconds=1.0)
        c = connect(srv, 'structured')
        for i in range(20):
            expect_ok(c.cmd(CMD_TRIM, 2 * MiB, MiB), 'trim')
            r = c.cmd(CMD_READ, 2 * MiB, MiB, F_DF)
            check(r.error == 0 and r.data == bytes(MiB),
                  '%s: read after trim %r' % (what, r))
            expect_ok(c.cmd(CMD_WRITE, 2 * MiB, MiB,
                            payload=bytes([2]) * MiB), 'refill')
            r = c.cmd(CMD_READ, 2 * MiB, MiB)
            check(r.error == 0 and r.data == bytes([2]) * MiB,
                  '%s: read after refill %r' % (what, r))
        c.disconnect()


def test():
    requires('qemu-img', 'strace')
    raw_exports()
    parallels_exports()
    bundle_export()
    raw_races()
    parallels_races()
    bundle_races()


main(test)
