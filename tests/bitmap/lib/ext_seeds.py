# SPDX-License-Identifier: MIT
"""Seed inputs for fuzz/fuzz_parallels_ext.c, built from parallels.rst
with parext: valid and broken Format Extension clusters (bitmaps with L1
entries of every form, prl's attributes, unknown TRANSIT, NECESSARY and
flag-less features, bad magic and checksum, bad L1 entries) for the
image layout the target builds around them.

Usage: /usr/bin/python3 tests/bitmap/lib/ext_seeds.py DIR
(writes DIR/seed-*, replacing the old ones)."""

import glob
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..', 'lib'))

import parext  # noqa: E402
from parext import NECESSARY, TRANSIT, Feature  # noqa: E402

# The target's input prefix (fuzz_parallels_ext.c).
FX_KEEP_MAGIC = 1 << 0
FX_KEEP_MD5 = 1 << 1
FX_DIRTY = 1 << 2
FX_FIX_SIZES = 1 << 5
SIZES = [512, 4096, 32256, 65536]
IDS = ['5eed0000-0000-4000-8000-%012x' % i for i in range(1, 9)]


class Layout:
    """Where the target puts things: data-area index i at host()."""

    def __init__(self, cs, sectors):
        self.cs, self.sectors = cs, sectors
        bat = -(-sectors // (cs // 512))
        self.data_off = -(-(64 + 4 * bat) // cs) * cs

    def sector(self, index):
        return (self.data_off + index * self.cs) // 512

    def l1_size(self, gran_sectors):
        return parext.l1_size(self.sectors * 512, gran_sectors * 512,
                              self.cs)


def seed(cs, sectors, features, flags=0, **kw):
    cluster = parext.ext_cluster(features, cs, **kw)
    prefix = bytes([flags | SIZES.index(cs) << 3]) + struct.pack('<I',
                                                                 sectors)
    return prefix + cluster.rstrip(b'\0')


def bitmap(lay, gran, l1=None, ident=0, **kw):
    n = lay.l1_size(gran)
    if l1 is None:
        l1 = [0] * n
    return parext.bitmap_feature(lay.sectors, IDS[ident], gran, l1, **kw)


def attrs(entries):
    data = struct.pack('<II', len(entries), 0)
    for ident, fl in entries:
        data += struct.pack('<16sII', bytes.fromhex(IDS[ident].replace(
            '-', '')), fl, 0)
    return Feature(parext.FEATURE_PRL_ATTRS, TRANSIT, data)


def seeds():
    out = {}
    # 512-byte clusters, 16000 sectors, 512 B granules: four L1 entries.
    lay = Layout(512, 16000)
    four = [lay.sector(2), 1, 0, lay.sector(5)]
    out['empty'] = seed(512, 16000, [])
    out['bitmap-zero'] = seed(512, 16000, [bitmap(lay, 1)])
    out['bitmap-forms'] = seed(512, 16000, [bitmap(lay, 1, four)])
    out['bitmap-forms-dirty'] = seed(512, 16000, [bitmap(lay, 1, four)],
                                     FX_DIRTY)
    out['two-bitmaps-attrs'] = seed(512, 16000, [
        bitmap(lay, 1, [lay.sector(3), 0, 1, 0]),
        bitmap(lay, 8, ident=1),
        attrs([(0, parext.ATTR_DISABLED), (1, parext.ATTR_INCONSISTENT)])])
    out['transit'] = seed(512, 16000, [
        Feature(0x1122334455667788, TRANSIT, b'0123456789abc'),
        bitmap(lay, 1, four)])
    out['neither'] = seed(512, 16000, [
        Feature(0x1122334455667789, 0, b'gone'), bitmap(lay, 2)])
    out['necessary'] = seed(512, 16000, [
        bitmap(lay, 1, four), Feature(0x112233445566778a, NECESSARY, b'n')])
    out['necessary-bitmap'] = seed(512, 16000, [
        bitmap(lay, 1, four, flags=NECESSARY)])
    out['bad-magic'] = seed(512, 16000, [bitmap(lay, 1, four)],
                            FX_KEEP_MAGIC, magic=0x1234)
    out['bad-md5'] = seed(512, 16000, [bitmap(lay, 1, four)], FX_KEEP_MD5,
                          md5=bytes(16))
    out['good-md5-kept'] = seed(512, 16000, [bitmap(lay, 1, four)],
                                FX_KEEP_MAGIC | FX_KEEP_MD5)
    out['no-end'] = seed(512, 16000, [Feature(7, TRANSIT, bytes(464))],
                         end=False)
    out['l1-misaligned'] = seed(512, 16000, [
        bitmap(lay, 1, [lay.sector(2) + 1, 0, 0, 0])])
    out['l1-past-eof'] = seed(512, 16000, [
        bitmap(lay, 1, [lay.sector(7), 0, 0, 0])])
    out['l1-bat-cluster'] = seed(512, 16000, [
        bitmap(lay, 1, [lay.sector(0), 0, 0, 0])])
    out['l1-ext-cluster'] = seed(512, 16000, [
        bitmap(lay, 1, [lay.sector(1), 0, 0, 0])])
    out['l1-twice'] = seed(512, 16000, [
        bitmap(lay, 1, [lay.sector(4), lay.sector(4), 0, 0])])
    out['l1-shared'] = seed(512, 16000, [
        bitmap(lay, 1, [lay.sector(4), 0, 0, 0]),
        bitmap(lay, 1, [0, lay.sector(4), 0, 0], ident=1)])
    out['same-id'] = seed(512, 16000, [bitmap(lay, 1), bitmap(lay, 2)])
    out['size-wrong'] = seed(512, 16000, [
        parext.bitmap_feature(15999, IDS[0], 1, [0] * 4)])
    out['size-fixed'] = seed(512, 12345, [
        parext.bitmap_feature(1, IDS[0], 1, [0] * 4)], FX_FIX_SIZES)
    out['gran-3'] = seed(512, 16000, [
        parext.bitmap_feature(16000, IDS[0], 3, [0] * 2)])
    out['l1-size-past-data'] = seed(512, 16000, [
        bitmap(lay, 1, four, l1_size=40)])
    out['data-size-small'] = seed(512, 16000, [
        Feature(parext.FEATURE_DIRTY_BITMAP, 0, bytes(20))])
    # Other cluster sizes and the legacy magic.
    lay = Layout(4096, 300000 % (1 << 17))
    out['c4k'] = seed(4096, lay.sectors, [
        bitmap(lay, 1, [lay.sector(2)] + [0] * (lay.l1_size(1) - 1)),
        bitmap(lay, 8, ident=1), Feature(0xfeed, TRANSIT, b'x' * 100)])
    lay = Layout(32256, 100000)
    out['legacy-32256'] = seed(32256, 100000, [
        bitmap(lay, 1, [1] * lay.l1_size(1)),
        bitmap(lay, 64, [lay.sector(5)], ident=1)])
    lay = Layout(65536, 1 << 17)
    out['c64k'] = seed(65536, 1 << 17, [
        bitmap(lay, 1, [lay.sector(2)]), attrs([(0, parext.ATTR_DISABLED)])],
        FX_DIRTY)
    # As full as a 512-byte cluster gets.
    lay = Layout(512, 2000)
    out['full'] = seed(512, 2000, [bitmap(lay, 1, ident=i) for i in range(6)])
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: ext_seeds.py DIR')
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    for old in glob.glob(os.path.join(d, 'seed-*')):
        os.unlink(old)
    for name, data in seeds().items():
        with open(os.path.join(d, 'seed-' + name), 'wb') as f:
            f.write(data)


if __name__ == '__main__':
    main()
