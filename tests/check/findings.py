# SPDX-License-Identifier: MIT
"""One test per finding of prl-img check: a good image is corrupted at an
offset of parallels.rst's layout; check must name the finding with the
right exit status and change nothing, check -r all (or -r leaks) must
repair it, a second check and qemu-img check must find the image clean,
and every guest cluster that survives must read back as written, while
those whose data is gone are reported lost at their guest offset.

Usage: findings.py CASE       run one case (tests/check/run runs each)
       findings.py --list     print the case names
       findings.py --seeds DIR   write each corrupted image (small ones
                              only) to DIR/check-CASE, for the fuzz corpus
"""

import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checklib as cl  # noqa: E402
import parimg  # noqa: E402
from prltest import (Failure, check, main, prl_img, prl_io,  # noqa
                     requires, sha256)

DIRTY = parimg.IN_USE_DIRTY
CLEAN = parimg.IN_USE_CLEAN


class Case:
    """|build| returns the corrupted checklib.Img (its ref is what the
    guest must read after the repair, its lost the guest offsets the
    repair must report lost).

    rc: exit status of the first check; kinds: the kinds of finding it
    must report, and no other; fixed: those -r must fix (default: all).
    repair: '-r' argument, or None when the image must not be repaired
    (the file must then stay unchanged and check -r all say what check
    said); opens_ro: such an image still opens read-only.
    qemu: exit status qemu-img check gives the repaired image (0 unless
    QEMU 7.2 is wrong about it; the case says why)."""

    def __init__(self, name, doc, build, rc, kinds, repair='all', qemu=0,
                 post=None, seed=True, qemu_why=None, fixed=None,
                 opens_ro=False):
        self.name, self.doc, self.build = name, doc, build
        self.rc, self.kinds, self.repair = rc, kinds, repair
        self.fixed = kinds if fixed is None else fixed
        self.opens_ro = opens_ro  # unrepairable, yet it opens read-only
        self.qemu, self.post, self.seed = qemu, post, seed
        self.qemu_why = qemu_why


CASES = []


def case(name, doc, rc, kinds, **kw):
    def reg(fn):
        CASES.append(Case(name, doc, fn, rc, kinds, **kw))
        return fn
    return reg


# Base image: WithouFreSpacExt, 4 KiB clusters, 1 MiB (256 BAT entries,
# the BAT ends at byte 1088 and data_off is 8 sectors = byte 4096), guest
# clusters 0, 3, 7 and 8 written in that order, so they sit at host
# clusters 1..4 (bytes 4096, 8192, 12288, 16384); the file is 20480
# bytes.  QEMU 7.2 reports leaks on images whose header and BAT pass one
# cluster, so every BAT here fits in its first cluster.
CS = 4096
SIZE = 1 << 20
BAT = parimg.HEADER_SIZE


def base(name='img.hdd', **kw):
    kw.setdefault('size', SIZE)
    kw.setdefault('cs', CS)
    return cl.make(name, **kw)


def bat_off(i):
    return BAT + 4 * i


# ---- header ---------------------------------------------------------


def unrepairable_header(field, value):
    def build():
        im = base()
        im.saved = (field, im.hdr()[field])
        im.set_field(field, value)
        return im
    return build


def restore_and_read(im):
    """Header damage no one can repair: put the field back by hand and
    show the check and repair attempts destroyed nothing."""
    field, value = im.saved
    im.set_field(field, value)


@case('header-truncated', 'a 40-byte file: too short for the header; '
      'nothing to repair', 2, ['header-truncated'], repair=None, qemu=0,
      qemu_why='QEMU 7.2 reads the missing header bytes as zeroes and '
      'finds the 40-byte file clean')
def _():
    im = base()
    im.truncate(40)
    return im


case('magic', 'magic is neither of the two strings: not this format; '
     'check says so (exit 2) and never treats the file as raw', 2,
     ['magic'], repair=None, qemu=1, post=restore_and_read)(
    unrepairable_header('magic', b'WithoutFreeSpacX'))
case('version', 'version = 3: not this format', 2, ['version'],
     repair=None, qemu=1, post=restore_and_read)(
    unrepairable_header('version', 3))
case('tracks-zero', 'tracks = 0: no cluster size to recover', 2,
     ['tracks'], repair=None, qemu=1, post=restore_and_read)(
    unrepairable_header('tracks', 0))
case('tracks-overflow', 'tracks = 0xffffffff: a cluster of 2 TiB '
     'overflows every limit', 2, ['tracks'], repair=None, qemu=1,
     post=restore_and_read)(unrepairable_header('tracks', 0xffffffff))


@case('bat-size-grow', 'nb_bat_entries (256) does not cover nb_sectors '
      '(300 clusters): the BAT grows into the zeroed space before the '
      'data area', 2, ['bat-size'])
def _():
    im = base()
    im.set_field('nb_sectors', 300 * CS // 512)
    im.ref += bytes(44 * CS)
    return im


@case('bat-size-shrink', 'nb_bat_entries does not cover nb_sectors and '
      'the BAT has no room to grow (it would reach the data area): the '
      'virtual size shrinks to what the BAT covers', 2, ['bat-size'])
def _():
    im = base()
    im.set_field('nb_sectors', 2000 * CS // 512)
    return im


@case('nb-sectors-high', 'legacy magic with the upper 32 bits of '
      'nb_sectors set: they are cleared (the low 32 bits are the size, '
      'which the BAT covers)', 2, ['nb-sectors-high'])
def _():
    im = base(legacy=True)
    h = im.hdr()
    im.set_field('nb_sectors', h['nb_sectors'] | (5 << 32))
    return im


@case('nb-sectors-overflow', 'nb_sectors = 2^60: the byte size overflows;'
      ' set back from the BAT size', 2, ['nb-sectors'])
def _():
    im = base()
    im.set_field('nb_sectors', 1 << 60)
    return im


@case('data-off-zero-ext', 'WithouFreSpacExt with data_off = 0: set back '
      'to the first cluster boundary past the BAT', 2, ['data-off'])
def _():
    im = base()
    im.set_field('data_off', 0)
    return im


@case('data-off-misaligned-ext', 'WithouFreSpacExt with data_off not a '
      'multiple of the cluster size', 2, ['data-off'])
def _():
    im = base()
    im.set_field('data_off', 9)
    return im


@case('data-off-in-bat', 'data_off points inside the BAT (legacy)', 2,
      ['data-off'])
def _():
    im = base(legacy=True)
    im.set_field('data_off', 1)
    return im


@case('flags-unknown', 'unknown flag bits 0x80000006: cleared, the Empty '
      'bit kept as it was', 2, ['flags'])
def _():
    im = base()
    im.set_field('flags', 0x80000006)
    return im


@case('empty-flag', 'the Empty flag set while four clusters are '
      'allocated: the flag is cleared, the clusters kept', 2,
      ['empty-flag'])
def _():
    im = base()
    im.set_field('flags', parimg.FLAG_EMPTY)
    return im


def ext_off_case(value_fn):
    def build():
        im = base(bitmap=True)
        im.set_field('ext_off', value_fn(im))
        return im
    return build


case('ext-off-misaligned', 'ext_off one sector past a cluster boundary:'
     ' the Format Extension is dropped, its clusters leak', 2,
     ['ext-off', 'leak'])(
    ext_off_case(lambda im: im.hdr()['ext_off'] + 1))
case('ext-off-past-eof', 'ext_off past the end of the file', 2,
     ['ext-off', 'leak'])(ext_off_case(lambda im: im.file_size() // 512 + 64))
case('ext-off-in-bat', 'ext_off inside the BAT', 2, ['ext-off', 'leak'])(
    ext_off_case(lambda im: 1))


@case('ext-collision', 'BAT entry 3 points at the Format Extension '
      'cluster: guest data wins, the extension is dropped (guest 3 reads '
      'what its entry names; its old cluster leaks)', 2,
      ['ext-collision', 'leak'])
def _():
    im = base(bitmap=True)
    ext = im.hdr()['ext_off'] * 512
    im.set_bat(3, ext // CS)
    im.touched = set()  # the extension, not entry 3, is what is dropped
    im.ref[3 * CS:4 * CS] = im.peek(ext, CS)
    return im


def poke_l1(im, index, value):
    """Set L1 entry |index| (over every bitmap of the extension, in order)
    to |value| sectors and store a matching MD5."""
    ext = im.hdr()['ext_off'] * 512
    cluster = bytearray(im.peek(ext, CS))
    l1 = cl.bitmap_l1_offsets(cluster)
    check(len(l1) > index and
          struct.unpack_from('<Q', cluster, l1[index])[0] > 1,
          'no L1 cluster %d: %r' % (index, l1))
    struct.pack_into('<Q', cluster, l1[index], value)
    cl.ext_set_checksum(cluster)
    im.poke(ext, bytes(cluster))
    return [struct.unpack_from('<Q', cluster, p)[0] for p in l1]


@case('bitmap-collision', 'the L1 entry of the bitmap names the cluster '
      'of guest 7 (MD5 recomputed): guest 7 keeps its data, the bitmap is '
      'dropped (and with it the extension, which has nothing else); its '
      'old cluster is freed', 2, ['bitmap-invalid', 'leak'])
def _():
    im = base(bitmap=True)
    poke_l1(im, 0, im.host(7) // 512)
    im.touched = set()
    return im


@case('bitmap-on-ext', 'the L1 entry of the bitmap names the Format '
      'Extension\'s own cluster (MD5 recomputed): storing the bitmap would '
      'overwrite the extension; it is dropped, its clusters freed', 2,
      ['bitmap-invalid', 'leak'])
def _():
    im = base(bitmap=True)
    poke_l1(im, 0, im.hdr()['ext_off'])
    im.touched = set()
    return im


def two_bitmaps():
    """The base image with bitmaps A and B, each with one L1 cluster
    (guest cluster 0 dirty); returns it and A's name."""
    im = base()
    names = [prl_img('bitmap', '--add', '-g', str(CS), im.path,
                     'auto').out.strip() for _ in range(2)]
    prl_io(im.path, ['write 0 %d %s:0' % (CS, cl.save_ref(im))])
    ext = im.hdr()['ext_off'] * 512
    l1 = cl.bitmap_l1_offsets(bytearray(im.peek(ext, CS)))
    check(len(l1) == 2, 'want two bitmaps of one L1 entry: %r' % l1)
    im.bitmap = names[0]
    im.touched = set()
    return im, l1


def only_first_bitmap(im):
    """Bitmap A survived the repair with its bits; B is gone."""
    r = prl_img('info', '--output=json', im.path)
    bitmaps = json.loads(r.out)['format-specific']['data'].get('bitmaps', [])
    check([b['name'] for b in bitmaps] == [im.bitmap],
          'bitmaps after the repair: %s' % bitmaps)
    r = prl_img('map', '--bitmap', im.bitmap, '--output=json', im.path)
    check('"dirty": true' in r.out, 'bitmap A lost its bits: ' + r.out)


@case('bitmap-shared-cluster', 'bitmap B\'s L1 entry names bitmap A\'s '
      'cluster (MD5 recomputed): B is dropped, A kept with its bits, B\'s '
      'old cluster freed', 2, ['bitmap-invalid', 'leak'],
      post=only_first_bitmap)
def _():
    im, l1 = two_bitmaps()
    ext = im.hdr()['ext_off'] * 512
    poke_l1(im, 1, struct.unpack_from('<Q', im.peek(ext, CS), l1[0])[0])
    return im


@case('bitmap-bad-granularity', 'bitmap B has granularity 3 sectors (not '
      'a power of two; MD5 recomputed): B is dropped, A kept with its bits',
      2, ['bitmap-invalid', 'leak'], post=only_first_bitmap)
def _():
    im, l1 = two_bitmaps()
    ext = im.hdr()['ext_off'] * 512
    cluster = bytearray(im.peek(ext, CS))
    # The granularity field is 8 bytes before the L1 table.
    struct.pack_into('<I', cluster, l1[1] - 8, 3)
    cl.ext_set_checksum(cluster)
    im.poke(ext, bytes(cluster))
    return im


@case('bitmap-same-id', 'bitmap B carries A\'s id (MD5 recomputed): B is '
      'dropped, A kept with its bits', 2, ['bitmap-invalid', 'leak'],
      post=only_first_bitmap)
def _():
    im, l1 = two_bitmaps()
    ext = im.hdr()['ext_off'] * 512
    cluster = bytearray(im.peek(ext, CS))
    # The id is 16 bytes from byte 8 of the feature data, which starts
    # 32 bytes before the L1 table.
    cluster[l1[1] - 24:l1[1] - 8] = cluster[l1[0] - 24:l1[0] - 8]
    cl.ext_set_checksum(cluster)
    im.poke(ext, bytes(cluster))
    return im


@case('ext-bad-magic', 'the Format Extension cluster has a wrong magic: '
      'the extension (and its bitmap) is dropped, its clusters freed', 2,
      ['ext-invalid', 'leak'])
def _():
    im = base(bitmap=True)
    im.poke(im.hdr()['ext_off'] * 512, b'\0')
    return im


@case('ext-bad-checksum', 'one byte of the Format Extension changed: the '
      'MD5 no longer matches; the extension is dropped', 2,
      ['ext-invalid', 'leak'])
def _():
    im = base(bitmap=True)
    off = im.hdr()['ext_off'] * 512
    im.poke(off + 100, bytes([im.peek(off + 100, 1)[0] ^ 0xff]))
    return im


@case('ext-necessary', 'a valid Format Extension with an unknown feature '
      'marked NECESSARY, on an image left in use with a leaked tail: the '
      'file must not be changed (parallels.rst), so check -r all, and the '
      'read-write open that would repair it, change nothing', 3,
      ['ext-necessary', 'unclean-close', 'leak-tail'], repair=None,
      opens_ro=True, qemu=1, qemu_why='QEMU 7.2 refuses any feature with '
      'flags')
def _():
    import parext
    im = base()
    end = im.file_size()
    im.poke(end, parext.ext_cluster(
        [parext.Feature(0x1122334455667788, parext.NECESSARY, b'x' * 13)],
        CS))
    im.set_field('ext_off', end // 512)
    with open(im.path, 'ab') as f:
        f.write(b'\xaa' * CS)
    im.set_field('in_use', DIRTY)
    im.touched = set()
    return im


@case('bitmap-necessary-invalid', 'a dirty bitmap feature marked '
      'NECESSARY whose L1 entry points past the end of the file: the '
      'extension cannot be loaded and must not be dropped; nothing is '
      'repaired', 2, ['bitmap-invalid', 'ext-necessary', 'leak'],
      repair=None,
      opens_ro=True, qemu=1, qemu_why='QEMU 7.2 refuses any feature with '
      'flags')
def _():
    im = base(bitmap=True)
    ext = im.hdr()['ext_off'] * 512
    cluster = bytearray(im.peek(ext, CS))
    l1 = cl.bitmap_l1_offsets(cluster)
    check(l1, 'no bitmap')
    # Feature header: magic, flags, data_size; L1 entries follow the
    # 32 fixed bytes of its data.
    feature = l1[0] - 32 - 24
    struct.pack_into('<Q', cluster, feature + 8, 1)
    struct.pack_into('<Q', cluster, l1[0], im.file_size() // 512 + 64)
    cl.ext_set_checksum(cluster)
    im.poke(ext, bytes(cluster))
    im.touched = set()
    return im


# ---- BAT entries ----------------------------------------------------


@case('bat-in-header', 'legacy image (entries in sectors): BAT entry 3 '
      '= 1, byte 512, inside the BAT and over guest 0\'s cluster: cleared, '
      'the data of guest 3 is lost, its old cluster leaks', 2,
      ['bat-in-header', 'bat-overlap', 'leak'],
      fixed=['bat-in-header', 'leak'])
def _():
    im = base(legacy=True)
    im.set_bat(3, 1)
    im.touched = {3}
    im.zero_guest_cluster(3)
    im.lost.append(3 * CS)
    return im


@case('bat-below-data', 'data_off raised to 16 sectors (byte 8192) '
      'above guest 3\'s cluster at byte 4096, past the BAT: the entry is '
      'below the data area; the repair lowers data_off back, which keeps '
      'every cluster in place', 2, ['bat-below-data', 'data-off'],
      fixed=['data-off'])
def _():
    im = base(clusters=(3, 0, 7, 8))
    im.set_field('data_off', 16)
    return im


@case('bat-below-data-legacy', 'legacy image, data_off raised by one '
      'sector: guest 0\'s cluster lies below the data area and every other '
      'one is off the new grid; data_off goes back down to keep them', 2,
      ['bat-below-data', 'data-off', 'bat-misaligned'], fixed=['data-off'])
def _():
    im = base(legacy=True)
    im.set_field('data_off', im.hdr()['data_offset'] // 512 + 1)
    return im


@case('bat-misaligned', 'legacy image: BAT entry of guest 7 moved one '
      'sector forward, off the cluster grid and over guest 8\'s cluster; '
      'the bytes it names are copied to an aligned cluster', 2,
      ['bat-misaligned', 'bat-overlap', 'leak'],
      fixed=['bat-misaligned', 'leak'])
def _():
    im = base(legacy=True)
    e = im.bat(7)
    im.set_bat(7, e + 1)
    im.touched = {7}
    with open(im.path, 'rb') as f:
        f.seek((e + 1) * 512)
        im.ref[7 * CS:8 * CS] = f.read(CS)
    return im


@case('bat-past-eof', 'BAT entry 7 points past the end of the file: '
      'cleared, the data of guest 7 reported lost; its old cluster leaks', 2,
      ['bat-past-eof', 'leak'])
def _():
    im = base()
    im.set_bat(7, 40)
    im.touched = {7}
    im.zero_guest_cluster(7)
    im.lost.append(7 * CS)
    return im


@case('bat-partial', 'the file ends 1000 bytes (with 4 KiB clusters) '
      'into the last cluster: the file is extended, the bytes kept, the '
      'rest reads zero', 2, ['bat-partial'])
def _():
    im = base()
    last, part = im.host(8), CS * 1000 // 4096
    im.truncate(last + part)
    im.touched = {8}
    im.ref[8 * CS + part:9 * CS] = bytes(CS - part)
    return im


def bat_fits(want_entries, want_sectors):
    """After the repair: the header says |want_*| and the file holds the
    whole BAT."""
    def post(im):
        h = im.hdr()
        check(h['nb_bat_entries'] == want_entries and
              h['nb_sectors'] == want_sectors and
              im.file_size() >= BAT + 4 * want_entries,
              'after the repair: nb_bat_entries %d, nb_sectors %d, file %d '
              'bytes' % (h['nb_bat_entries'], h['nb_sectors'],
                         im.file_size()))
    return post


@case('bat-past-eof-header', 'the file ends inside the BAT: the file is '
      'extended (sparse) to hold the BAT, whose missing entries mapped '
      'nothing, and the disk keeps its size; clusters past the end are lost',
      2, ['bat-past-eof'], post=bat_fits(512, (2 << 20) // 512))
def _():
    im = base(size=2 << 20, clusters=(0, 1))
    # 512 entries: the BAT ends at byte 2112, past a 2000-byte file.
    im.truncate(2000)
    for c in (0, 1):
        im.zero_guest_cluster(c)
        im.lost.append(c * CS)
    return im


@case('bat-past-eof-huge', 'the file ends inside a BAT of more than '
      '64 MiB (nb_bat_entries damaged): the file is not grown by that much; '
      'the BAT and the virtual size shrink to the entries the file holds',
      2, ['bat-past-eof'], post=bat_fits(484, 484 * CS // 512))
def _():
    im = base(size=2 << 20, clusters=(0, 1))
    # 2^24 + 1 entries, a BAT past 64 MiB, in a 2000-byte file that
    # holds (2000 - 64) / 4 = 484 of them; nb_sectors still 2 MiB.
    im.set_field('nb_bat_entries', (1 << 24) + 1)
    im.truncate(2000)
    for c in (0, 1):
        im.zero_guest_cluster(c)
        im.lost.append(c * CS)
    del im.ref[484 * CS:]
    return im


@case('bat-beyond-size', 'nb_sectors cut to 6 clusters: the entries of '
      'guest 7 and 8 map beyond the virtual size and are cleared', 2,
      ['bat-beyond-size'])
def _():
    im = base()
    im.set_field('nb_sectors', 6 * CS // 512)
    im.touched = {7, 8}
    del im.ref[6 * CS:]
    return im


@case('bat-duplicate', 'BAT entry 7 = entry 3: both keep the shared '
      'cluster\'s data (it is copied); the cluster entry 7 had leaks', 2,
      ['bat-duplicate', 'leak'])
def _():
    im = base()
    im.set_bat(7, im.bat(3))
    im.touched = {7}
    im.ref[7 * CS:8 * CS] = im.ref[3 * CS:4 * CS]
    return im


@case('bat-overlap', 'legacy image: entry 7 = entry 3 + 1 sector, so the '
      'two clusters share all but 512 bytes: reported as overlapping (and '
      'misaligned); entry 7 gets its own copy of the bytes it named, which '
      'ends the overlap too', 2, ['bat-overlap', 'bat-misaligned', 'leak'],
      fixed=['bat-misaligned', 'leak'])
def _():
    im = base(legacy=True)
    e = im.bat(3) + 1
    im.set_bat(7, e)
    im.touched = {7}
    with open(im.path, 'rb') as f:
        f.seek(e * 512)
        im.ref[7 * CS:8 * CS] = f.read(CS)
    return im


# ---- file level -----------------------------------------------------


@case('leak-interior', 'the BAT entry of guest 3 (host cluster 2, in the '
      'middle) is cleared: its cluster is an interior leak; -r leaks '
      'punches it', 3, ['leak'], repair='leaks')
def _():
    im = base()
    im.set_bat(3, 0)
    im.zero_guest_cluster(3)
    return im


@case('leak-tail', 'two clusters of garbage appended past the last '
      'cluster: a tail leak; -r leaks truncates', 3, ['leak-tail'],
      repair='leaks')
def _():
    im = base()
    with open(im.path, 'ab') as f:
        f.write(b'\xaa' * (2 * CS))
    return im


@case('unclean-close', 'in_use = 0x746F6E59: a note, not an error (exit '
      '0); -r all marks the image closed', 0, ['unclean-close'])
def _():
    im = base()
    im.set_field('in_use', DIRTY)
    return im


def bitmaps_survive(im):
    """The bitmap and its clusters are still there and still dirty where
    the writes were."""
    r = prl_img('map', '--bitmap', im.bitmap, '--output=json', im.path)
    check('"dirty": true' in r.out, 'bitmap lost its bits: ' + r.out)
    check(im.hdr()['ext_off'] != 0, 'the Format Extension was dropped')
    for off, data in zip(im.ext_offs, im.ext_data):
        check(cl.read_clusters(im.path, [off], CS)[0] == data,
              'bitmap or extension cluster at %d changed' % off)


@case('bitmaps-used', 'Format Extension and bitmap clusters last in the '
      'file, plus an interior leak: -r all frees the leak and keeps every '
      'extension cluster (QEMU 7.2 counts them as leaked and its -r '
      'truncates them away)', 3, ['leak'], post=bitmaps_survive, qemu=3,
      qemu_why='QEMU 7.2 counts the Format Extension and bitmap clusters, '
      'last in the file, as leaks')
def _():
    im = bitmap_last()
    # Guest 3's cluster leaks.
    im.set_bat(3, 0)
    im.zero_guest_cluster(3)
    return im


def bitmap_last():
    """The base image with a bitmap that has one dirty cluster, laid out
    the way prl's driver never leaves it (it keeps a data cluster last for
    QEMU's sake) but the format allows: the last data cluster moved into
    a hole below the extension, so the extension and bitmap clusters end
    the file."""
    im = base()
    r = prl_img('bitmap', '--add', '-g', str(CS), im.path, 'auto')
    im.bitmap = r.out.strip()
    # Rewrite guest 0 as it is: the bitmap gets a bit, hence a cluster.
    prl_io(im.path, ['write 0 %d %s:0' % (CS, cl.save_ref(im))])
    meta = cl.ext_clusters(im.path)
    check(len(meta) >= 2, 'no bitmap cluster: %r' % meta)
    hosts = im.hdr()['hosts']
    top = max(range(len(hosts)), key=lambda c: hosts[c])
    hole = [o for o in range(CS, max(meta), CS)
            if o not in hosts and o not in meta and not any(im.peek(o, CS))]
    check(hole, 'no hole below the extension')
    im.poke(hole[0], im.peek(hosts[top], CS))
    im.set_bat(top, hole[0] // CS)
    im.truncate(max(meta) + CS)
    im.ext_offs = meta
    im.ext_data = cl.read_clusters(im.path, meta, CS)
    check(max(meta) > max(im.hdr()['hosts']), 'extension is not last')
    return im


@case('bitmaps-tail-leak', 'extension and bitmap clusters last in the '
      'file, then two clusters of garbage: -r leaks truncates the garbage '
      'only', 3, ['leak-tail'], repair='leaks', post=bitmaps_survive,
      qemu=3, qemu_why='QEMU 7.2 counts the Format Extension and bitmap '
      'clusters, last in the file, as leaks')
def _():
    im = bitmap_last()
    with open(im.path, 'ab') as f:
        f.write(b'\x55' * (2 * CS))
    return im


@case('in-use-value', 'in_use = 0x12345678, a value the spec does not '
      'allow: a note; read as closed', 0, ['in-use-value'])
def _():
    im = base()
    im.set_field('in_use', 0x12345678)
    return im


def bitmap_inconsistent(im):
    r = prl_img('info', '--output=json', im.path)
    check('"consistent": false' in r.out, 'bitmap not marked '
          'inconsistent: ' + r.out)


@case('unclean-bitmaps', 'unclean close of an image with a bitmap: -r all '
      'marks the bitmap inconsistent (it missed writes) before marking '
      'the image clean', 0, ['unclean-close'],
      fixed=['unclean-close', 'bitmaps-inconsistent'], post=bitmap_inconsistent, qemu=1,
      qemu_why='prl records "inconsistent" in a feature of its own with '
      'the TRANSIT flag, and QEMU 7.2 refuses to open any image whose '
      'Format Extension has a feature with flags')
def _():
    im = base(bitmap=True)
    im.set_field('in_use', DIRTY)
    return im


# ---- the generic proof ---------------------------------------------


def no_duplicates(c, j):
    seen = set()
    for f in j['findings']:
        key = (f['kind'], f.get('bat-index'), f['offset'], f['message'])
        check(key not in seen, '%s: finding listed twice: %s' % (c.name, f))
        seen.add(key)


def lost_offsets(j):
    return sorted(f['guest-offset'] for f in j['findings']
                  if f.get('data-lost'))


def run_case(c):
    requires('qemu-img')
    im = c.build()
    p = im.path

    # Check only: the finding and the exit status, nothing written.
    before = sha256(p)
    rc, j = cl.prl_check(p)
    print('check: exit %d, findings %s' % (rc, cl.kinds(j)))
    check(rc == c.rc, '%s: check exited %d, want %d: %s'
          % (c.name, rc, c.rc, j))
    for k in c.kinds:
        check(k in cl.kinds(j), '%s: check did not report %s: %s'
              % (c.name, k, j['findings']))
    check(set(cl.kinds(j)) == set(c.kinds),
          '%s: check reported %s, want exactly %s' % (c.name, cl.kinds(j),
                                                      c.kinds))
    check(j['corruptions'] == 0 if c.rc != 2 else j['corruptions'] > 0,
          '%s: corruptions = %d with exit %d' % (c.name, j['corruptions'],
                                                 rc))
    check(sha256(p) == before, c.name + ': check without -r changed the '
          'file')
    # Findings about BAT entries name only the entries that were damaged.
    touched = getattr(im, 'touched', None)
    if touched is not None:
        blamed = {f['bat-index'] for f in j['findings'] if 'bat-index' in f}
        check(blamed <= touched, '%s: findings name BAT entries %s, only %s '
              'were damaged: %s' % (c.name, sorted(blamed), sorted(touched),
                                    j['findings']))

    if c.repair is None:
        rc, j = cl.prl_check(p, '-r', 'all')
        check(rc == c.rc, '%s: check -r all exited %d on an unrepairable '
              'image' % (c.name, rc))
        check(j['corruptions-fixed'] + j['leaks-fixed'] == 0 and
              not [f for f in j['findings'] if f['fixed']],
              '%s: check -r all says it fixed something: %s' % (c.name, j))
        no_duplicates(c, j)
        check(sha256(p) == before, c.name + ': an unrepairable image was '
              'changed by check -r all')
        rc, _, r = cl.qemu_check(p)
        check(rc == c.qemu, '%s: qemu-img check exited %d, want %d: %r'
              % (c.name, rc, c.qemu, r))
        # Open refuses it too, read-write (and read-only unless opens_ro).
        for ro in (True, False):
            r = prl_io(p, ['info'], fmt='parallels', readonly=ro, want=None)
            check((r.rc == 0) == (ro and c.opens_ro),
                  '%s: open (read-only: %s) exited %d' % (c.name, ro, r.rc))
        check(sha256(p) == before, c.name + ': changed by an open attempt')
        if c.opens_ro:
            cl.same_guest(p, im.ref, c.name + ' (read-only)')
        if c.post:
            c.post(im)
            cl.same_guest(p, im.ref, c.name + ' (field restored by hand)')
        return

    rc, j = cl.prl_check(p, '-r', c.repair)
    print('check -r %s: exit %d, findings %s' % (c.repair, rc,
                                                 cl.kinds(j)))
    check(rc == 0, '%s: check -r %s exited %d: %s' % (c.name, c.repair, rc,
                                                     j))
    no_duplicates(c, j)
    for k in c.fixed:
        found = [f for f in j['findings'] if f['kind'] == k]
        check(found and all(f['fixed'] and f.get('action') for f in found),
              '%s: %s not repaired: %s' % (c.name, k, j['findings']))
    fixed = j['corruptions-fixed'] + j['leaks-fixed']
    check(fixed > 0 or c.rc == 0, c.name + ': nothing counted as fixed')
    check(lost_offsets(j) == sorted(im.lost), '%s: lost data reported at %s,'
          ' want %s' % (c.name, lost_offsets(j), sorted(im.lost)))

    rc, j = cl.prl_check(p)
    check(rc == 0 and not [f for f in j['findings']
                           if f['class'] != 'note'],
          '%s: not clean after the repair: exit %d %s' % (c.name, rc, j))
    check(im.hdr()['in_use'] == CLEAN, c.name + ': not marked clean')
    rc, qj, r = cl.qemu_check(p)
    if c.qemu is not None:
        check(rc == c.qemu, '%s: qemu-img check exited %d, want %d: %r'
              % (c.name, rc, c.qemu, r))
    cl.same_guest(p, im.ref, c.name)
    if c.post:
        c.post(im)
    # A second repair has nothing left to do.
    rc, j = cl.prl_check(p, '-r', 'all')
    check(rc == 0 and j['corruptions-fixed'] == 0 and
          j['leaks-fixed'] == 0, '%s: second repair did something: %s'
          % (c.name, j))


def write_seeds(d):
    """The corrupted images, built with 512-byte clusters and a 64 KiB
    disk so that each is a few KiB, as check-CASE seeds of the check fuzz
    target (make-corpus keeps files not named seed-*)."""
    global CS, SIZE
    import shutil
    for c in CASES:
        try:
            CS, SIZE = 512, 64 << 10
            im = c.build()
        except (Failure, ValueError) as e:
            # Built for 4 KiB clusters only.
            print('%s: with 4 KiB clusters (%s)' % (c.name, e))
            CS, SIZE = 4096, 1 << 20
            im = c.build()
        out = os.path.join(d, 'check-' + c.name)
        shutil.copyfile(im.path, out)
        print('%s: %d bytes' % (out, os.path.getsize(out)))


def by_name(name):
    for c in CASES:
        if c.name == name:
            return c
    raise SystemExit('no case %r' % name)


if __name__ == '__main__':
    if sys.argv[1:] == ['--list']:
        print('\n'.join(c.name for c in CASES))
    elif len(sys.argv) == 3 and sys.argv[1] == '--seeds':
        main(lambda: write_seeds(sys.argv[2]))
    elif len(sys.argv) == 2:
        main(lambda: run_case(by_name(sys.argv[1])))
    else:
        raise SystemExit(__doc__)
