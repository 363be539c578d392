# SPDX-License-Identifier: MIT
"""qemu-img map --output=json over nbd+unix:// (QEMU's own NBD client,
which asks base:allocation in its own request sizes) gives the same
ranges against prl-nbd as against qemu-nbd serving the same image, raw
and Parallels of both magics.  Compared: start, length, zero and data,
what the client derives from the server's base:allocation; present and
depth are the client's own (an NBD export has no backing chain)."""

import json

from nbdtest import *  # noqa: F401,F403
from prltest import prl_img, prl_io

MiB = 1 << 20


def qemu_img_map(uri):
    r = run(['timeout', '60', 'qemu-img', 'map', '--output=json', uri])
    out = []
    for e in json.loads(r.out):
        key = (e['zero'], e['data'])
        end = out[-1][0] + out[-1][1] if out else 0
        check(e['start'] == end, 'gap before %r' % e)
        if out and out[-1][2] == key:
            out[-1] = (out[-1][0], out[-1][1] + e['length'], key)
        else:
            out.append((e['start'], e['length'], key))
    return out


def same(what, img, fmt):
    with Server('-r', '-t', '-e', '0', '-f', fmt, img) as srv:
        with QemuNbd(img, '-r', '-e', '2', '-f', fmt) as q:
            mine = qemu_img_map(srv.uri)
            theirs = qemu_img_map(q.uri)
    check(mine == theirs, '%s: against prl-nbd %r\nagainst qemu-nbd %r' %
          (what, mine, theirs))
    kinds = {k for _, _, k in mine}
    check(kinds == {(True, False), (False, True)},
          '%s: want data and holes, got %r' % (what, kinds))


def test():
    requires('qemu-img', 'qemu-nbd')
    raw = make_raw('r.raw', 16 * MiB)
    with open(raw, 'r+b') as f:
        f.seek(9 * MiB)
        f.write(b'\x01' * 12288)
    same('raw', raw, 'raw')
    for sub, cs in (('ext', '1M'), ('legacy', '32256')):
        img = path(sub + '.hdd')
        prl_img('create', '-q', '-f', 'parallels', '-o',
                'cluster_size=%s,subformat=%s' % (cs, sub), img, '40M')
        prl_io(img, ['write -P 1 0 5000', 'write -P 2 3M 2M',
                     'write -P 3 20000000 1', 'write -P 4 39M 1M'],
               fmt='parallels')
        same(sub, img, 'parallels')


main(test)
