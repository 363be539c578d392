# SPDX-License-Identifier: MIT
"""Clean shutdown under load: SIGTERM while fio writes and a libnbd
client makes FUA writes.  prl-nbd must exit 0, the Parallels image must
be closed cleanly and check clean, and every write that was acknowledged
must be in it.  SIGINT does the same for an idle server."""

import atexit
import os
import signal
import struct
import subprocess
import threading
import time

from nbdtest import *  # noqa: F401,F403

try:
    import nbd
except ImportError:
    skip('python module nbd (libnbd) is not installed')

CLEAN = 0x312e3276
DIRTY = 0x746F6E59


def in_use(p):
    return struct.unpack('<I', file_bytes(p, 44, 4))[0]


def test():
    requires('qemu-img', 'fio')
    hdd = path('s.hdd')
    run(['qemu-img', 'create', '-q', '-f', 'parallels', hdd, '64M'])
    srv = Server('-t', '-e', '0', hdd)
    fio = subprocess.Popen(
        ['fio', '--name=load', '--ioengine=nbd', '--uri=' + srv.uri,
         '--rw=randwrite', '--bs=64k', '--iodepth=16', '--size=32M',
         '--time_based', '--runtime=30', '--output=' + path('fio.out')],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(lambda: fio.poll() is None and fio.kill())
    acked = []
    failures = []

    def writer():
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        i = 0
        try:
            while True:
                off = (32 << 20) + (i % 256) * 65536
                data = bytes([i % 251 + 1]) * 65536
                h.pwrite(data, off, nbd.CMD_FLAG_FUA)
                acked.append((off, data))
                i += 1
        except nbd.Error as e:
            failures.append(str(e))

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    check(len(acked) > 0, 'no write was acknowledged')
    check(in_use(hdd) == DIRTY, 'in_use not set while writing: %x' %
          in_use(hdd))
    srv.stop(sig=signal.SIGTERM)
    t.join(30)
    check(not t.is_alive(), 'the client was not released')
    fio.wait(30)
    check(in_use(hdd) == CLEAN, 'in_use after SIGTERM: %x' % in_use(hdd))
    run(['qemu-img', 'check', '-q', '-f', 'parallels', hdd])
    raw = path('s.raw')
    run(['qemu-img', 'convert', '-f', 'parallels', '-O', 'raw', hdd, raw])
    last = {}
    for off, data in acked:
        last[off] = data
    for off, data in last.items():
        check(file_bytes(raw, off, 65536) == data,
              'acknowledged FUA write at %d lost' % off)

    # SIGINT on an idle server, and on one with a client in the middle of
    # the handshake (which hears NBD_REP_ERR_SHUTDOWN).
    srv = Server('-t', hdd)
    c = Client(srv.sock)
    c.greet()
    srv.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    t, msg = c.simple_opt(OPT_INFO, c.info_data(b''))
    check(t == REP_ERR_SHUTDOWN, 'option during shutdown: %x' % t)
    srv.stop(sig=signal.SIGINT)
    check(in_use(hdd) == CLEAN, 'in_use after SIGINT: %x' % in_use(hdd))


main(test)
