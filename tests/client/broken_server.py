# SPDX-License-Identifier: MIT
"""A server that breaks the protocol, written from the spec here, one
way per case (a cookie nobody asked for, data outside the read, a wrong
magic, a read not fully covered, overlapping chunks, a hole of length
0, a hang-up instead of a reply; status for an unknown context, a
descriptor of length 0, a data chunk in reply to block status, a
context missing).  prl-img must fail with exit status 1 and a message
naming the field and value, never crash or hang; and a server error
chunk reaches the user with the server's own message."""

import os
import socket
import struct
import threading

from nbdtest import (MAGIC_INIT, MAGIC_OPTS, MAGIC_REQ,
                     MAGIC_STRUCT, OPT_GO, OPT_SET_META, OPT_STRUCTURED,
                     REP_ACK, REP_ERR_UNSUP, REP_INFO, REP_META, INFO_EXPORT,
                     CMD_READ, CMD_BLOCK_STATUS, CMD_DISC, R_DATA, R_HOLE,
                     R_NONE, R_BS, R_ERROR, REPLY_DONE, T_HAS_FLAGS,
                     T_READ_ONLY, check, main, opt_reply, recv_exact, path)
from prltest import prl_img

SIZE = 1 << 20


def chunk(c, flags, typ, cookie, payload):
    c.sendall(struct.pack('>IHHQI', MAGIC_STRUCT, flags, typ, cookie,
                          len(payload)) + payload)


def handshake(c):
    c.sendall(struct.pack('>QQH', MAGIC_INIT, MAGIC_OPTS, 3))
    recv_exact(c, 4)
    while True:
        _, opt, ln = struct.unpack('>QII', recv_exact(c, 16))
        recv_exact(c, ln)  # the option data: not needed here
        if opt == OPT_STRUCTURED:
            opt_reply(c, opt, REP_ACK)
        elif opt == OPT_SET_META:
            name = b'base:allocation'
            opt_reply(c, opt, REP_META, struct.pack('>I', 7) + name)
            opt_reply(c, opt, REP_ACK)
        elif opt == OPT_GO:
            opt_reply(c, opt, REP_INFO, struct.pack(
                '>HQH', INFO_EXPORT, SIZE, T_HAS_FLAGS | T_READ_ONLY))
            opt_reply(c, opt, REP_ACK)
            return
        else:
            opt_reply(c, opt, REP_ERR_UNSUP)


def good(c, typ, cookie, off, ln):
    """A correct reply: all data, reading as 'x'."""
    if typ == CMD_BLOCK_STATUS:
        chunk(c, REPLY_DONE, R_BS, cookie, struct.pack('>III', 7, ln, 0))
    elif typ == CMD_READ:
        chunk(c, REPLY_DONE, R_DATA, cookie,
              struct.pack('>Q', off) + b'x' * ln)
    else:
        chunk(c, REPLY_DONE, R_NONE, cookie, b'')


def serve(sock, answer, target):
    """Accept one client, negotiate, and answer its requests of type
    |target| with answer(conn, type, cookie, offset, length), the others
    correctly, until the client leaves or answer returns True."""
    c, _ = sock.accept()
    try:
        handshake(c)
        while True:
            magic, flags, typ, cookie, off, ln = struct.unpack(
                '>IHHQQI', recv_exact(c, 28))
            check(magic == MAGIC_REQ, 'request magic %x' % magic)
            if typ == CMD_DISC:
                break
            if typ != target:
                good(c, typ, cookie, off, ln)
            elif answer(c, typ, cookie, off, ln):
                break
    except (EOFError, ConnectionError):
        pass
    finally:
        c.close()


def case(name, answer, cmd, *want, target=CMD_READ):
    sp = path('broken-%s.sock' % name)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sp)
    s.listen(1)
    t = threading.Thread(target=serve, args=(s, answer, target),
                         daemon=True)
    t.start()
    uri = 'nbd+unix:///?socket=' + sp
    args = [a.replace('URI', uri) for a in cmd]
    r = prl_img(*args, want=1)
    for w in want:
        check(w in r.err, '%s: stderr lacks %r: %s' % (name, w, r.err))
    t.join(10)
    check(not t.is_alive(), '%s: the server thread is stuck' % name)
    s.close()
    os.unlink(sp)
    print('%s: %s' % (name, r.err.strip()))


def read_cmd():
    return ['convert', '-O', 'raw', 'URI', path('out.raw')]


def test():
    # READ answers
    case('cookie',
         lambda c, t, k, o, n: chunk(c, REPLY_DONE, R_NONE, k + 100, b''),
         read_cmd(), 'protocol error', 'names no request in flight')
    case('outside',
         lambda c, t, k, o, n: chunk(c, REPLY_DONE, R_DATA, k,
                                     struct.pack('>Q', o + n) + b'x' * 16),
         read_cmd(), 'data chunk at offset', 'lies outside the read')
    case('magic',
         lambda c, t, k, o, n: c.sendall(b'\xde\xad\xbe\xef' + b'\0' * 16),
         read_cmd(), 'reply magic 0xdeadbeef is not valid')
    case('short',
         lambda c, t, k, o, n: chunk(c, REPLY_DONE, R_DATA, k,
                                     struct.pack('>Q', o) + b'x' * 512),
         read_cmd(), 'read reply covered 512 of')
    case('hole0',
         lambda c, t, k, o, n: chunk(c, REPLY_DONE, R_HOLE, k,
                                     struct.pack('>QI', o, 0)),
         read_cmd(), 'hole chunk of length 0')
    case('overlap',
         lambda c, t, k, o, n: (
             chunk(c, 0, R_HOLE, k, struct.pack('>QI', o, 4096)),
             chunk(c, REPLY_DONE, R_HOLE, k, struct.pack('>QI', o + 512,
                                                         n - 512))),
         read_cmd(), 'overlaps an earlier chunk')
    case('hangup', lambda c, t, k, o, n: True,
         read_cmd(), 'closed the connection unexpectedly')
    # A server error: its message reaches the user.
    msg = b'the disk caught fire'
    case('error',
         lambda c, t, k, o, n: chunk(c, REPLY_DONE, R_ERROR, k,
                                     struct.pack('>IH', 5, len(msg)) + msg),
         read_cmd(), 'failed: error 5 (Input/output error): the disk caught '
         'fire')

    # BLOCK_STATUS answers
    def status(bad):
        def answer(c, t, k, o, n):
            bad(c, k, o, n)
        return answer
    case('context',
         status(lambda c, k, o, n: chunk(c, REPLY_DONE, R_BS, k,
                                         struct.pack('>III', 99, n, 0))),
         ['map', 'URI'], 'block status for unknown context id 99',
         target=CMD_BLOCK_STATUS)
    case('desc0',
         status(lambda c, k, o, n: chunk(c, REPLY_DONE, R_BS, k,
                                         struct.pack('>III', 7, 0, 0))),
         ['map', 'URI'], 'block status descriptor 0 has length 0',
         target=CMD_BLOCK_STATUS)
    case('data-in-status',
         status(lambda c, k, o, n: chunk(c, REPLY_DONE, R_DATA, k,
                                         struct.pack('>Q', o) + b'x')),
         ['map', 'URI'], 'data chunk in reply to a block status',
         target=CMD_BLOCK_STATUS)
    case('missing-context',
         status(lambda c, k, o, n: chunk(c, REPLY_DONE, R_NONE, k, b'')),
         ['map', 'URI'], 'block status reply lacks a context',
         target=CMD_BLOCK_STATUS)


main(test)
