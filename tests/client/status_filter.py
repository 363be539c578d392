# SPDX-License-Identifier: MIT
"""Block status with a list of contexts (NBD_FLAG_BLOCK_STATUS_PAYLOAD,
extended headers), against a server written here from the spec that
offers base:allocation, qemu:allocation-depth and two dirty bitmaps and
records what each request asks for.

- With the flag, `prl-img map --bitmap=b1` lists only b1's context in
  its requests (the client negotiated all four), and the extents it
  prints come from b1.
- Without the flag, no request carries a payload and every context is
  answered, with the same output.
- A server that answers a context the list left out (allocation, or
  another bitmap), answers one twice, or leaves out one it named, makes
  prl-img fail with a message naming the context id."""

import json
import os
import socket
import struct
import threading

from nbdtest import (MAGIC_INIT, MAGIC_OPTS, MAGIC_EXT,
                     MAGIC_EXT_REQ, OPT_GO, OPT_SET_META, OPT_LIST_META,
                     OPT_EXTENDED, REP_ACK, REP_ERR_UNSUP, REP_INFO,
                     REP_META, INFO_EXPORT, CMD_BLOCK_STATUS, CMD_DISC,
                     CMD_FLUSH, F_PAYLOAD_LEN, R_NONE, R_BS_EXT, REPLY_DONE,
                     T_HAS_FLAGS, T_READ_ONLY, T_BS_PAYLOAD, check, main,
                     opt_reply, path, recv_exact)
from prltest import prl_img

SIZE = 1 << 20
K = 1024
# name -> (id, [(start, end, status)]) over the whole export.
CONTEXTS = {
    'base:allocation': (7, [(0, SIZE, 0)]),
    'qemu:allocation-depth': (8, [(0, SIZE, 1)]),
    'qemu:dirty-bitmap:b0': (9, [(0, 512 * K, 0), (512 * K, SIZE, 1)]),
    'qemu:dirty-bitmap:b1': (10, [(0, 256 * K, 1), (256 * K, SIZE, 0)]),
}
BY_ID = {v[0]: k for k, v in CONTEXTS.items()}


def queries(data):
    """The context queries of a LIST/SET_META_CONTEXT option."""
    nl = struct.unpack('>I', data[:4])[0]
    p = 4 + nl
    n = struct.unpack('>I', data[p:p + 4])[0]
    p += 4
    out = []
    for _ in range(n):
        ln = struct.unpack('>I', data[p:p + 4])[0]
        out.append(data[p + 4:p + 4 + ln].decode())
        p += 4 + ln
    return out


def handshake(c, tflags):
    c.sendall(struct.pack('>QQH', MAGIC_INIT, MAGIC_OPTS, 3))
    recv_exact(c, 4)
    while True:
        _, opt, ln = struct.unpack('>QII', recv_exact(c, 16))
        data = recv_exact(c, ln)
        if opt == OPT_EXTENDED:
            opt_reply(c, opt, REP_ACK)
        elif opt in (OPT_LIST_META, OPT_SET_META):
            for q in queries(data):
                for name, (cid, _) in CONTEXTS.items():
                    if name == q or (opt == OPT_LIST_META and q.endswith(':')
                                     and name.startswith(q)):
                        opt_reply(c, opt, REP_META,
                                  struct.pack('>I', cid if opt == OPT_SET_META
                                              else 0) + name.encode())
            opt_reply(c, opt, REP_ACK)
        elif opt == OPT_GO:
            opt_reply(c, opt, REP_INFO, struct.pack(
                '>HQH', INFO_EXPORT, SIZE, T_HAS_FLAGS | T_READ_ONLY | tflags))
            opt_reply(c, opt, REP_ACK)
            return
        else:
            opt_reply(c, opt, REP_ERR_UNSUP)


def chunk(c, flags, typ, cookie, off, payload):
    c.sendall(struct.pack('>IHHQQQ', MAGIC_EXT, flags, typ, cookie, off,
                          len(payload)) + payload)


def status_payload(cid, off, ln):
    descs = []
    for start, end, st in CONTEXTS[BY_ID[cid]][1]:
        s, e = max(start, off), min(end, off + ln)
        if s < e:
            descs.append(struct.pack('>QQ', e - s, st))
    return struct.pack('>II', cid, len(descs)) + b''.join(descs)


def serve(sock, tflags, answer_ids, log):
    """One client: negotiate, then answer each block status request for
    the ids answer_ids(asked) gives; log what each request asked for
    (None: no list)."""
    c, _ = sock.accept()
    try:
        handshake(c, tflags)
        while True:
            magic, flags, typ, cookie, off, ln = struct.unpack(
                '>IHHQQQ', recv_exact(c, 32))
            check(magic == MAGIC_EXT_REQ, 'request magic %x' % magic)
            if typ == CMD_DISC:
                break
            asked = None
            if flags & F_PAYLOAD_LEN:
                payload = recv_exact(c, ln)
                check(typ == CMD_BLOCK_STATUS and len(payload) >= 12 and
                      (len(payload) - 8) % 4 == 0,
                      'payload of %d bytes on command %d' % (ln, typ))
                ln = struct.unpack('>Q', payload[:8])[0]
                n = (len(payload) - 8) // 4
                asked = sorted(struct.unpack('>%dI' % n, payload[8:]))
            if typ == CMD_BLOCK_STATUS:
                log.append(asked)
                ids = answer_ids(asked)
                for i, cid in enumerate(ids):
                    chunk(c, REPLY_DONE if i == len(ids) - 1 else 0,
                          R_BS_EXT, cookie, off, status_payload(cid, off, ln))
                if not ids:
                    chunk(c, REPLY_DONE, R_NONE, cookie, off, b'')
            else:
                check(typ == CMD_FLUSH, 'unexpected command %d' % typ)
                chunk(c, REPLY_DONE, R_NONE, cookie, off, b'')
    except (EOFError, ConnectionError):
        pass
    finally:
        c.close()


ALL = sorted(v[0] for v in CONTEXTS.values())


def run(name, tflags, answer_ids, args, want=0):
    sp = path('filter-%s.sock' % name)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sp)
    s.listen(1)
    log = []
    t = threading.Thread(target=serve, args=(s, tflags, answer_ids, log),
                         daemon=True)
    t.start()
    uri = 'nbd+unix:///?socket=' + sp
    r = prl_img(*[a.replace('URI', uri) for a in args], want=want)
    t.join(10)
    check(not t.is_alive(), '%s: the server thread is stuck' % name)
    s.close()
    os.unlink(sp)
    return r, log


def dirty(out):
    return [(e['start'], e['length']) for e in json.loads(out)
            if e['dirty']]


def test():
    mapb1 = ['map', '--output=json', '--bitmap=b1', 'URI']

    # The server takes lists: each request names only what it needs.
    r, log = run('list', T_BS_PAYLOAD, lambda asked: asked or ALL, mapb1)
    check(dirty(r.out) == [(0, 256 * K)], 'b1 extents: %s' % r.out)
    check(log and all(a == [10] for a in log),
          'requests asked for %s' % log)
    print('with the flag, requests asked for %s' % log)
    r2, log = run('list-b0', T_BS_PAYLOAD, lambda asked: asked or ALL,
                  ['map', '--output=json', '--bitmap=b0', 'URI'])
    check(dirty(r2.out) == [(512 * K, 512 * K)], 'b0 extents: %s' % r2.out)
    check([9] in log and [10] not in log, 'b0 requests: %s' % log)

    # No flag: no list, every context answered, the same result.
    r3, log = run('nolist', 0, lambda asked: ALL, mapb1)
    check(r3.out == r.out, 'without lists: %s' % r3.out)
    check(log and all(a is None for a in log), 'lists sent: %s' % log)

    # A server that answers more than the list, or less.
    r, _ = run('extra', T_BS_PAYLOAD, lambda asked: ALL,
               mapb1, want=1)
    check('which the request did not list' in r.err, r.err)
    print('extra context: %s' % r.err.strip())
    r, _ = run('other-bitmap', T_BS_PAYLOAD,
               lambda asked: [9] if asked == [10] else (asked or ALL), mapb1,
               want=1)
    check('context id 9, which the request did not list' in r.err, r.err)
    r, _ = run('twice', T_BS_PAYLOAD,
               lambda asked: asked + asked if asked else ALL, mapb1, want=1)
    check('two block status chunks for context id 10' in r.err, r.err)
    r, _ = run('short', T_BS_PAYLOAD,
               lambda asked: asked[:-1] if asked else ALL, mapb1, want=1)
    check('lacks a context that was asked for' in r.err, r.err)
    print('missing context: %s' % r.err.strip())


main(test)
