# SPDX-License-Identifier: MIT
"""What the bitmap tests share: making images, reading bitmaps back
through prl-img (info, map --bitmap) and from the file (parext), and
comparing dirty extents."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..', 'lib'))

import parext  # noqa: E402
import parimg  # noqa: E402
import prltest  # noqa: E402
from prltest import check  # noqa: E402

KIB = 1024
MIB = 1024 * 1024


def create(name, size, cluster_size=MIB, legacy=False):
    """A new Parallels image in the test's directory; returns its path."""
    p = prltest.path(name)
    if os.path.exists(p):
        os.unlink(p)
    opts = 'cluster_size=%d' % cluster_size
    if legacy:
        opts += ',subformat=legacy'
    prltest.prl_img('create', '-q', '-f', 'parallels', '-o', opts, p,
                    str(size))
    return p


def bitmap(img, *args, want=0):
    """prl-img bitmap ARGS... IMG-relative: args end with FILE BITMAP."""
    return prltest.prl_img('bitmap', *args, want=want)


def add(img, name='auto', granularity=None):
    """Add a bitmap; returns its canonical name."""
    args = ['--add']
    if granularity:
        args += ['-g', str(granularity)]
    r = bitmap(img, *args, img, name)
    if name == 'auto':
        made = r.out.strip()
        check(len(made) == 36, 'auto printed %r' % r.out)
        return made
    check(r.out == '', 'bitmap --add %s printed %r' % (name, r.out))
    return name.lower()


def info(img):
    """The bitmaps of `prl-img info --output=json`, by name."""
    r = prltest.prl_img('info', '--output=json', img)
    data = json.loads(r.out)['format-specific']['data']
    return {b['name']: b for b in data.get('bitmaps', [])}


def map_runs(img, name, want=0):
    """Dirty ranges [(start, length)] of `prl-img map --bitmap NAME
    --output=json`, after checking that its extents tile the disk and
    alternate; (None, result) when it failed as |want| asked."""
    r = prltest.prl_img('map', '--bitmap=' + name, '--output=json', img,
                        want=want)
    if want != 0:
        return None, r
    ext = json.loads(r.out)
    size = disk_size(img)
    pos, runs, last = 0, [], None
    for e in ext:
        check(e['start'] == pos, 'extent %r does not start at %d' % (e, pos))
        check(e['length'] > 0, 'empty extent %r' % e)
        check(last is None or e['dirty'] != last,
              'extents not merged at %r' % e)
        if e['dirty']:
            runs.append((e['start'], e['length']))
        last = e['dirty']
        pos += e['length']
    check(pos == size, 'map covers %d bytes of %d' % (pos, size))
    return runs, r


def human_runs(img, name):
    """The dirty ranges of the human `map --bitmap` output."""
    r = prltest.prl_img('map', '--bitmap=' + name, img)
    lines = r.out.splitlines()
    check(lines and lines[0].split() == ['Offset', 'Length'],
          'human map header: %r' % r.out)
    return [tuple(int(x, 16) for x in ln.split()) for ln in lines[1:]]


def disk_size(img):
    return parimg.parse(img)['nb_sectors'] * parext.SECTOR


def file_runs(img, name):
    """Dirty ranges of bitmap |name| decoded from the file by parext."""
    bms = parext.read_bitmaps(img)
    check(name in bms, '%s: no stored bitmap %s (have %s)'
          % (img, name, sorted(bms)))
    b = bms[name]
    return parext.dirty_runs(b['bits'], b['granularity'], disk_size(img))


def expect_runs(img, name, want, what=''):
    """The map of |name| and the file's own bitmap both show |want|, and
    info's dirty bytes add up."""
    got, _ = map_runs(img, name)
    check(got == want, '%s map --bitmap %s:\n got  %s\n want %s'
          % (what, name, got, want))
    onfile = file_runs(img, name)
    check(onfile == want, '%s bitmap %s decoded from the file:\n got  %s\n'
          ' want %s' % (what, name, onfile, want))
    b = info(img)[name]
    total = sum(n for _, n in want)
    check(b['dirty-bytes'] == total, '%s info dirty-bytes %d, want %d'
          % (what, b['dirty-bytes'], total))


def io(img, cmds, want=0, readonly=False):
    return prltest.prl_io(img, cmds, readonly=readonly, want=want)


def changes(img, ops):
    """Apply ops [(kind, offset, length)] with prl-io in one read-write
    session; kind is write, zero, zero-u (no unmap) or trim.  Returns the
    changed ranges."""
    cmds = []
    for i, (kind, off, n) in enumerate(ops):
        if kind == 'write':
            cmds.append('write -P %d %d %d' % (0x30 + i % 64, off, n))
        elif kind == 'zero':
            cmds.append('zero %d %d' % (off, n))
        elif kind == 'zero-u':
            cmds.append('zero -u %d %d' % (off, n))
        elif kind == 'trim':
            cmds.append('trim %d %d' % (off, n))
        else:
            raise ValueError(kind)
    io(img, cmds)
    return [(off, n) for _, off, n in ops]


def read_file(p):
    with open(p, 'rb') as f:
        return f.read()
