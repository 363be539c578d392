# SPDX-License-Identifier: MIT
"""Helpers shared by the check tests, the crash test and the comparison
script: good images written through prl-io with a python reference of the
guest contents, field pokes at the offsets of parallels.rst, and the two
checkers (prl-img check, qemu-img check) run with their JSON parsed."""

import json
import os
import random
import shutil
import struct
import subprocess

import parimg
from prltest import (Failure, Result, check, first_difference, path,  # noqa
                     prl_img, prl_io)

SECTOR = 512
HEADER_SIZE = 64
EXT_MAGIC = 0xAB234CEF23DCEA87


class Img:
    """A Parallels image on disk and what its guest must read."""

    def __init__(self, p, ref, cs, legacy):
        self.path = p
        self.ref = bytearray(ref)  # guest contents expected after repair
        self.cs = cs
        self.legacy = legacy
        self.lost = []             # guest offsets whose data is gone
        self.bitmap = None         # UUID of a persistent bitmap, if any

    @property
    def size(self):
        return len(self.ref)

    def hdr(self):
        return parimg.parse(self.path)

    def host(self, guest_cluster):
        """Host byte offset of guest cluster |guest_cluster| (0: none)."""
        return self.hdr()['hosts'][guest_cluster]

    def set_field(self, name, value):
        parimg.set_field(self.path, name, value)

    def set_bat(self, index, value):
        parimg.set_bat_entry(self.path, index, value)

    def bat(self, index):
        return self.hdr()['bat'][index]

    def poke(self, off, data):
        parimg.poke(self.path, off, data)

    def peek(self, off, n):
        with open(self.path, 'rb') as f:
            f.seek(off)
            return f.read(n)

    def truncate(self, n):
        with open(self.path, 'r+b') as f:
            f.truncate(n)

    def file_size(self):
        return os.path.getsize(self.path)

    def zero_guest_cluster(self, c):
        """The reference after guest cluster |c| is gone (reads zero)."""
        self.ref[c * self.cs:(c + 1) * self.cs] = bytes(self.cs)

    def copy_to(self, p):
        shutil.copyfile(self.path, p)
        other = Img(p, self.ref, self.cs, self.legacy)
        other.lost = list(self.lost)
        other.bitmap = self.bitmap
        return other


def make(name, size=1 << 20, cs=4096, legacy=False, clusters=(0, 3, 7, 8),
         seed=1, partial=None, bitmap=False):
    """A good image made by prl-img create, with guest clusters
    |clusters| written (in that order, so host clusters follow it) with
    random bytes; |partial| = (offset, length) adds one short write.  With
    |bitmap|, a persistent bitmap is added before the writes."""
    p = path(name)
    opts = 'cluster_size=%d' % cs
    if legacy:
        opts += ',subformat=legacy'
    prl_img('create', '-q', '-f', 'parallels', '-o', opts, p, size)
    rnd = random.Random(seed)
    src = path(name + '.src')
    n = len(clusters) * cs + (partial[1] if partial else 0)
    data = rnd.randbytes(n)
    with open(src, 'wb') as f:
        f.write(data)
    ref = bytearray(size)
    cmds = []
    for i, c in enumerate(clusters):
        cmds.append('write %d %d %s:%d' % (c * cs, cs, src, i * cs))
        ref[c * cs:(c + 1) * cs] = data[i * cs:(i + 1) * cs]
    if partial:
        off, ln = partial
        base = len(clusters) * cs
        cmds.append('write %d %d %s:%d' % (off, ln, src, base))
        ref[off:off + ln] = data[base:base + ln]
    im = Img(p, ref, cs, legacy)
    if bitmap:
        r = prl_img('bitmap', '--add', '-g', str(cs), p, 'auto')
        im.bitmap = r.out.strip()
    if cmds:
        prl_io(p, cmds)
    os.unlink(src)
    return im


def prl_check(img, *opts, want=None):
    """prl-img check --output=json: (exit status, parsed JSON)."""
    r = prl_img('check', '-f', 'parallels', '--output=json', *opts, img,
                want=want)
    try:
        j = json.loads(r.out)
    except ValueError:
        raise Failure('prl-img check printed no JSON: %r' % r)
    return r.rc, j


def qemu_check(img, repair=None):
    """qemu-img check -f parallels [--repair]: (exit status, JSON or None,
    Result)."""
    args = ['qemu-img', 'check', '-f', 'parallels', '--output=json']
    if repair:
        args += ['-r', repair]
    # Not prltest.run: QEMU 7.2 itself aborts on some images (a bitmap
    # granularity that is not a power of two), which is its result here.
    p = subprocess.run(args + [img], capture_output=True, text=True,
                       errors='replace')
    r = Result(args + [img], p.returncode, p.stdout, p.stderr)
    try:
        j = json.loads(r.out)
    except ValueError:
        j = None
    return r.rc, j, r


def kinds(j, fixed=None):
    """Kinds of the findings in |j| (only those with fixed == |fixed|
    unless None)."""
    return [f['kind'] for f in j['findings']
            if fixed is None or f['fixed'] == fixed]


def guest(img, fmt='parallels'):
    """The guest contents, through prl-img convert -O raw."""
    out = img + '.raw'
    if os.path.exists(out):
        os.unlink(out)
    prl_img('convert', '-f', fmt, '-O', 'raw', img, out)
    with open(out, 'rb') as f:
        data = f.read()
    os.unlink(out)
    return data


def same_guest(img, ref, what):
    got = guest(img)
    check(len(got) == len(ref), '%s: guest size %d, want %d'
          % (what, len(got), len(ref)))
    d = first_difference(got, bytes(ref))
    check(d is None, '%s: guest byte %s differs from the reference'
          % (what, d))


def ext_clusters(img):
    """Byte offsets of the Format Extension cluster and of the bitmap
    clusters its L1 tables name, read from the file as parallels.rst lays
    them out (not through prl)."""
    h = parimg.parse(img)
    if not h['ext_off']:
        return []
    cs = h['cluster_size']
    with open(img, 'rb') as f:
        f.seek(h['ext_off'] * SECTOR)
        ext = f.read(cs)
    out = [h['ext_off'] * SECTOR]
    magic, = struct.unpack_from('<Q', ext, 0)
    if magic != EXT_MAGIC:
        return out
    for pos in bitmap_l1_offsets(ext):
        e, = struct.unpack_from('<Q', ext, pos)
        if e > 1:
            out.append(e * SECTOR)
    return out


def read_clusters(img, offsets, cs):
    with open(img, 'rb') as f:
        res = []
        for o in offsets:
            f.seek(o)
            res.append(f.read(cs))
    return res


def bitmap_l1_offsets(ext):
    """Byte positions, inside the extension cluster |ext|, of the L1
    entries of every dirty bitmap feature."""
    out = []
    pos = 24
    while pos + 24 <= len(ext):
        fmagic, flags, size = struct.unpack_from('<QQI', ext, pos)
        if fmagic == 0:
            break
        data = pos + 24
        if fmagic == 0x20385FAE252CB34A and size >= 32:
            l1_size, = struct.unpack_from('<I', ext, data + 28)
            out += [data + 32 + 8 * i for i in range(l1_size)]
        pos = data + (size + 7) // 8 * 8
    return out


def ext_set_checksum(ext):
    """Store the MD5 of the cluster past its first 24 bytes (in place)."""
    import hashlib
    ext[8:24] = hashlib.md5(bytes(ext[24:])).digest()


def save_ref(im):
    """The reference written to a file, for prl-io's write SRC:OFF."""
    p = im.path + '.ref'
    with open(p, 'wb') as f:
        f.write(im.ref)
    return p
