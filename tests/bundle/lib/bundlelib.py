# SPDX-License-Identifier: MIT
"""What the bundle tests share: descriptors written by the test, layers
written by qemu-io, a cluster-level model of a chain, and the helpers."""

import os
import re
import subprocess

from prltest import BUILD, Failure, check, path, prl_io, run

HELPER = os.path.join(BUILD, 'tests', 'bundle', 'bundle-helper')
ZERO = '{00000000-0000-0000-0000-000000000000}'
TOP = '{5fbaabe3-6958-40ff-92a7-860e329aab41}'
BACKUP = '{704718e1-2314-44c8-9087-d78ed36b0f4e}'


def guid(n):
    """A fixed, readable GUID for layer |n|."""
    return '{%08x-0000-4000-8000-%012x}' % (n + 1, n + 1)


def descriptor(size, blocksize, images, shots, top_guid=None,
               root='Parallels_disk_image', params_extra='', storage_extra='',
               snapshots_extra='', padding=0, cylinders=None, version='1.0',
               start=0, end=None, heads=16, sectors=63):
    """The text of a DiskDescriptor.xml: |images| is a list of (guid,
    type, file), |shots| a list of (guid, parent)."""
    sect = size // 512
    cyl = sect // (heads * sectors) if cylinders is None else cylinders
    end = sect if end is None else end
    x = ['<?xml version="1.0" encoding="UTF-8"?>',
         '<%s Version="%s">' % (root, version),
         '    <Disk_Parameters>',
         '        <Disk_size>%d</Disk_size>' % sect,
         '        <Cylinders>%d</Cylinders>' % cyl,
         '        <Heads>%d</Heads>' % heads,
         '        <Sectors>%d</Sectors>' % sectors,
         '        <Padding>%d</Padding>' % padding,
         params_extra,
         '    </Disk_Parameters>',
         '    <StorageData>',
         '        <Storage>',
         '            <Start>%d</Start>' % start,
         '            <End>%d</End>' % end,
         '            <Blocksize>%d</Blocksize>' % blocksize,
         storage_extra]
    for g, t, f in images:
        x += ['            <Image>',
              '                <GUID>%s</GUID>' % g,
              '                <Type>%s</Type>' % t,
              '                <File>%s</File>' % f,
              '            </Image>']
    x += ['        </Storage>', '    </StorageData>', '    <Snapshots>']
    if top_guid:
        x.append('        <TopGUID>%s</TopGUID>' % top_guid)
    x.append(snapshots_extra)
    for g, p in shots:
        x += ['        <Shot>',
              '            <GUID>%s</GUID>' % g,
              '            <ParentGUID>%s</ParentGUID>' % p,
              '        </Shot>']
    x += ['    </Snapshots>', '</%s>' % root, '']
    return '\n'.join(l for l in x if l != '')


def write_file(p, text):
    with open(p, 'w' if isinstance(text, str) else 'wb') as f:
        f.write(text)


def read_file(p):
    with open(p, 'rb') as f:
        return f.read()


def qemu_create(p, size, cs):
    run(['qemu-img', 'create', '-q', '-f', 'parallels', '-o',
         'cluster_size=%d' % cs, p, size])


def qemu_write(p, writes):
    """Write (pattern, offset, length) triples into a Parallels image with
    qemu-io, the real peer."""
    if not writes:
        return
    args = ['qemu-io', '-f', 'parallels']
    for pat, off, ln in writes:
        args += ['-c', 'write -P 0x%02x %d %d' % (pat, off, ln)]
    args.append(p)
    run(args)


def qemu_check(p):
    r = run(['qemu-img', 'check', '-f', 'parallels', p], want=None)
    check(r.rc == 0, 'qemu-img check %s: %r' % (p, r))


class Layer:
    """What a layer image holds: its own bytes and its clusters."""

    def __init__(self, size, cs):
        self.size, self.cs = size, cs
        self.data = bytearray(size)
        self.clusters = set()

    def write(self, pat, off, ln):
        self.data[off:off + ln] = bytes([pat]) * ln
        for c in range(off // self.cs, (off + ln - 1) // self.cs + 1):
            self.clusters.add(c)


def compose(layers):
    """Guest contents and per-cluster depth (1 = top ... 0 none) of a chain
    given top first.  A layer's allocated cluster hides everything below
    it, including the parts of the cluster it never wrote (zeroes)."""
    top = layers[0]
    size, cs = top.size, top.cs
    out = bytearray(size)
    depth = []
    for c in range(0, (size + cs - 1) // cs):
        d = 0
        for i, l in enumerate(layers):
            if l.clusters is None or c in l.clusters:
                d = i + 1
                break
        depth.append(d)
        if d:
            src = layers[d - 1].data
            out[c * cs:(c + 1) * cs] = src[c * cs:(c + 1) * cs]
    return bytes(out), depth


def status(image, size):
    """prl-io status: a list of (offset, length, depth) of the library."""
    r = prl_io(image, ['status 0 %d' % size], readonly=True)
    out = []
    for line in r.out.splitlines():
        m = re.match(r'(\d+) (\d+) \S+ depth=(\d+)', line)
        check(m, 'bad status line %r' % line)
        out.append(tuple(int(g) for g in m.groups()))
    return out


def helper(*args, want=0):
    if not os.access(HELPER, os.X_OK):
        raise Failure('not built: ' + HELPER)
    return run([HELPER] + [str(a) for a in args], want=want)


def hds_files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.endswith('.hds'))


def tree_state(d):
    """Every file of a directory with its bytes, to show nothing changed."""
    out = {}
    for f in sorted(os.listdir(d)):
        p = os.path.join(d, f)
        out[f] = read_file(p) if os.path.isfile(p) else None
    return out


def popen_helper(*args):
    return subprocess.Popen([HELPER] + [str(a) for a in args],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
