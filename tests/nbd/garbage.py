# SPDX-License-Identifier: MIT
"""Hostile bytes: clients that send valid handshakes and requests with
random fields mutated, truncated, or followed by noise.  The server must
answer or hang up, never crash or hang, keep serving a well-behaved
client, and stop cleanly (no sanitizer report) afterwards.  Seeded, so
a failure repeats."""

import random
import socket
import struct

from nbdtest import *  # noqa: F401,F403

ROUNDS = 300


def handshake_bytes(rng):
    """A plausible client side of the handshake, then some requests."""
    out = struct.pack('>I', rng.choice([3, 1, 0, 2, 0xffffffff]))
    for _ in range(rng.randrange(1, 6)):
        opt = rng.choice([1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12,
                          rng.randrange(1 << 32)])
        if opt in (6, 7):
            name = rng.choice([b'', b'a', b'zz', bytes(rng.randrange(50))])
            reqs = [rng.randrange(5) for _ in range(rng.randrange(4))]
            data = (struct.pack('>I', len(name)) + name +
                    struct.pack('>H', len(reqs)) +
                    b''.join(struct.pack('>H', r) for r in reqs))
        elif opt in (9, 10):
            qs = [rng.choice([b'base:allocation', b'qemu:', b'base:', b'x',
                              b'qemu:allocation-depth'])
                  for _ in range(rng.randrange(4))]
            data = struct.pack('>I', 0) + struct.pack('>I', len(qs))
            for q in qs:
                data += struct.pack('>I', len(q)) + q
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
        out += struct.pack('>QII', MAGIC_OPTS, opt, len(data)) + data
    ext = rng.random() < 0.3
    for _ in range(rng.randrange(8)):
        cmd = rng.choice([0, 0, 1, 2, 3, 4, 5, 6, 7, rng.randrange(1 << 16)])
        flags = rng.choice([0, 0, 1, 4, 8, 32, rng.randrange(1 << 16)])
        off = rng.choice([0, 4096, (1 << 20) - 100, 1 << 63,
                          rng.randrange(1 << 64)])
        length = rng.choice([0, 512, 65536, 1 << 31, rng.randrange(1 << 32)])
        if ext:
            out += struct.pack('>IHHQQQ', MAGIC_EXT_REQ, flags, cmd, 1, off,
                               length)
        else:
            out += struct.pack('>IHHQQI', MAGIC_REQ, flags, cmd, 1, off,
                               length)
        if cmd == 1 and length <= 65536:
            out += bytes(length)
    return out


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(4)):
        kind = rng.randrange(4)
        if kind == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1 and data:
            del data[rng.randrange(len(data)):]
        elif kind == 2:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        elif kind == 3 and len(data) > 8:
            i = rng.randrange(len(data) - 4)
            data[i:i + 4] = struct.pack('>I', rng.choice(
                [0, 0xffffffff, 0x7fffffff, 1 << 24]))
    return bytes(data)


def healthy(srv):
    c = Client(srv.sock)
    c.connect(structured=True, meta=(b'base:allocation',))
    r = c.cmd(CMD_READ, 0, 4096)
    check(r.error == 0 and len(r.data) == 4096, 'read %r' % r)
    r = c.cmd(CMD_BLOCK_STATUS, 0, 65536)
    check(r.error == 0, 'block status %r' % r)
    c.disconnect()


def test():
    rng = random.Random(20261125)
    img = make_raw('g.img', 1 << 20)
    with Server('-t', '-e', '0', '--handshake-limit', '2',
                '--export', 'a=' + img + ',ro', img) as srv:
        for i in range(ROUNDS):
            data = mutate(rng, handshake_bytes(rng))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1)
            s.connect(srv.sock)
            try:
                s.sendall(data)
                if rng.random() < 0.97:
                    s.shutdown(socket.SHUT_WR)
                # Read whatever comes back until the server is done.
                while s.recv(65536):
                    pass
            except socket.timeout:
                pass  # waiting for more input: fine, we hang up
            except (ConnectionResetError, BrokenPipeError):
                pass
            s.close()
            check(srv.alive(), 'server died at round %d' % i)
            if i % 50 == 0:
                healthy(srv)
        healthy(srv)


main(test)
