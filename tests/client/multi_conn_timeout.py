# SPDX-License-Identifier: MIT
"""A server that says NBD_FLAG_CAN_MULTI_CONN but then leaves every
connection after the first unanswered (as qemu-nbd does at its -e
limit: the connection waits in the listen queue).  prl-img convert -m 4
tries a second connection, gives up on it after its handshake time
limit, and copies everything through the first; it never hangs."""

import socket
import struct
import subprocess
import threading

from nbdtest import (MAGIC_INIT, MAGIC_OPTS, MAGIC_REQ,
                     MAGIC_STRUCT, OPT_GO, OPT_STRUCTURED, REP_ACK,
                     REP_ERR_UNSUP, REP_INFO, INFO_EXPORT, CMD_READ,
                     CMD_DISC, R_DATA, R_NONE, REPLY_DONE, T_HAS_FLAGS,
                     T_READ_ONLY, T_MULTI_CONN, check, main, opt_reply,
                     path, recv_exact)
from prltest import PRL_IMG

SIZE = 32 << 20


def serve_one(c):
    c.sendall(struct.pack('>QQH', MAGIC_INIT, MAGIC_OPTS, 3))
    recv_exact(c, 4)
    while True:
        _, opt, ln = struct.unpack('>QII', recv_exact(c, 16))
        recv_exact(c, ln)
        if opt == OPT_STRUCTURED:
            opt_reply(c, opt, REP_ACK)
        elif opt == OPT_GO:
            opt_reply(c, opt, REP_INFO, struct.pack(
                '>HQH', INFO_EXPORT, SIZE,
                T_HAS_FLAGS | T_READ_ONLY | T_MULTI_CONN))
            opt_reply(c, opt, REP_ACK)
            break
        else:
            opt_reply(c, opt, REP_ERR_UNSUP)
    while True:
        magic, _, typ, cookie, off, ln = struct.unpack('>IHHQQI',
                                                       recv_exact(c, 28))
        check(magic == MAGIC_REQ, 'request magic %x' % magic)
        if typ == CMD_DISC:
            return
        if typ == CMD_READ:
            c.sendall(struct.pack('>IHHQI', MAGIC_STRUCT, REPLY_DONE, R_DATA,
                                  cookie, 8 + ln) +
                      struct.pack('>Q', off) + b'x' * ln)
        else:
            c.sendall(struct.pack('>IHHQI', MAGIC_STRUCT, REPLY_DONE, R_NONE,
                                  cookie, 0))


def server(sock, seen):
    first = True
    while True:
        try:
            c, _ = sock.accept()
        except OSError:
            return
        seen.append(c)
        if first:
            first = False
            threading.Thread(target=lambda: (serve_one(c), c.close()),
                             daemon=True).start()
        # Later connections: never a word, until the test ends.


def test():
    sp = path('multi.sock')
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sp)
    s.listen(8)
    seen = []
    threading.Thread(target=server, args=(s, seen), daemon=True).start()
    out = path('out.raw')
    r = subprocess.run([PRL_IMG, 'convert', '-m', '4', '-O', 'raw',
                        'nbd+unix:///?socket=' + sp, out],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, 'convert failed: %s' % r.stderr)
    with open(out, 'rb') as f:
        data = f.read()
    check(len(data) == SIZE and data.count(b'x') == SIZE,
          'copied %d bytes, %d of them right' % (len(data), data.count(b'x')))
    check(len(seen) >= 2, 'no second connection was tried (%d)' % len(seen))
    print('%d connections tried; the silent ones were given up' % len(seen))
    s.close()
    for c in seen:
        c.close()


main(test)
