# SPDX-License-Identifier: MIT
"""The Parallels Format Extension and its dirty-bitmap feature, built and
read byte by byte from parallels.rst for tests, independently of the C
codec: extension clusters with any features, flags, magic and checksum
(MD5 via hashlib), bitmap features, and a reader that rebuilds each
stored bitmap from its L1 table."""

import hashlib
import struct
import uuid

import parimg

SECTOR = 512
EXT_MAGIC = 0xAB234CEF23DCEA87
EXT_HEADER = 24          # magic + MD5
FEATURE_HEADER = 24      # magic, flags, data_size, unused32
BITMAP_FIXED = 32        # size, id, granularity, l1_size

FEATURE_END = 0
FEATURE_DIRTY_BITMAP = 0x20385FAE252CB34A
NECESSARY = 1 << 0
TRANSIT = 1 << 1

# prl's own per-bitmap attributes (lib/block/parallels-ext.h): written
# with TRANSIT, data = u32 count, u32 0, count * (16-byte id, u32 flags,
# u32 0).  Known here only to read what prl wrote.
FEATURE_PRL_ATTRS = 0x50524C4254414753
ATTR_DISABLED = 1 << 0
ATTR_INCONSISTENT = 1 << 1


def pad8(n):
    return (n + 7) & ~7


class Feature:
    """One feature record: |data| is its payload (data_size bytes unless
    |data_size| overrides the header field)."""

    def __init__(self, magic, flags=0, data=b'', data_size=None):
        self.magic, self.flags, self.data = magic, flags, bytes(data)
        self.data_size = len(self.data) if data_size is None else data_size

    def encode(self):
        """Header, data and zero padding to the next 8 bytes."""
        raw = struct.pack('<QQII', self.magic, self.flags, self.data_size, 0)
        raw += self.data
        return raw + bytes(pad8(len(raw)) - len(raw))

    def __repr__(self):
        return 'Feature(0x%016x, flags=%d, %d bytes)' % (
            self.magic, self.flags, self.data_size)


def checksum(cluster):
    """MD5 of the cluster from byte 24 to its end."""
    return hashlib.md5(bytes(cluster[EXT_HEADER:])).digest()


def ext_cluster(features, cluster_size, magic=EXT_MAGIC, md5=None,
                end=True):
    """A Format Extension cluster holding |features| then (when |end|)
    the all-zero End record; |md5| overrides the checksum."""
    body = b''.join(f.encode() for f in features)
    if end:
        body += bytes(FEATURE_HEADER)
    if EXT_HEADER + len(body) > cluster_size:
        raise ValueError('features need %d bytes, cluster has %d'
                         % (EXT_HEADER + len(body), cluster_size))
    c = bytearray(cluster_size)
    c[EXT_HEADER:EXT_HEADER + len(body)] = body
    struct.pack_into('<Q', c, 0, magic)
    c[8:24] = checksum(c) if md5 is None else md5
    return bytes(c)


def bitmap_data(size_sectors, ident, granularity_sectors, l1, l1_size=None):
    """Dirty-bitmap feature data: |ident| is 16 bytes or UUID text; |l1|
    a list of u64 entries; |l1_size| overrides the count field."""
    if isinstance(ident, str):
        ident = uuid.UUID(ident).bytes
    n = len(l1) if l1_size is None else l1_size
    return (struct.pack('<Q16sII', size_sectors, ident, granularity_sectors,
                        n) + struct.pack('<%dQ' % len(l1), *l1))


def bitmap_feature(size_sectors, ident, granularity_sectors, l1, flags=0,
                   l1_size=None):
    return Feature(FEATURE_DIRTY_BITMAP, flags,
                   bitmap_data(size_sectors, ident, granularity_sectors, l1,
                               l1_size))


def uuid_text(ident):
    """Canonical text of a 16-byte id, bytes in order (as QEMU and prl
    name bitmaps)."""
    return str(uuid.UUID(bytes=bytes(ident)))


def bitmap_bytes(disk_size, granularity):
    """Bytes of bitmap data for a disk: one bit per granule."""
    return (parimg.div_round_up(disk_size, granularity) + 7) // 8


def l1_size(disk_size, granularity, cluster_size):
    return parimg.div_round_up(bitmap_bytes(disk_size, granularity),
                               cluster_size)


def parse_ext(cluster):
    """Parse an extension cluster: a dict with magic, checksum_ok and
    features (list of dicts: magic, flags, data_size, pos (of the feature
    header), data, raw (header + data + padding, as the spec lays it
    out)).  Raises ValueError when the list has no End record inside."""
    cs = len(cluster)
    out = {'magic': struct.unpack_from('<Q', cluster, 0)[0],
           'checksum_ok': checksum(cluster) == bytes(cluster[8:24]),
           'features': []}
    pos = EXT_HEADER
    while True:
        if cs - pos < FEATURE_HEADER:
            raise ValueError('no End record before byte %d' % pos)
        magic, flags, size, _ = struct.unpack_from('<QQII', cluster, pos)
        if magic == FEATURE_END:
            out['end'] = pos
            return out
        start = pos + FEATURE_HEADER
        if size > cs - start:
            raise ValueError('feature at byte %d runs past the cluster'
                             % pos)
        end = min(pad8(start + size), cs)
        out['features'].append({
            'magic': magic, 'flags': flags, 'data_size': size, 'pos': pos,
            'data': bytes(cluster[start:start + size]),
            'raw': bytes(cluster[pos:end]),
        })
        pos = end


def decode_bitmap(data):
    """The fields of a bitmap feature's data; as many L1 entries as the
    data holds, up to l1_size."""
    size, ident, gran, n = struct.unpack_from('<Q16sII', data, 0)
    n_in = min(n, (len(data) - BITMAP_FIXED) // 8)
    l1 = list(struct.unpack_from('<%dQ' % n_in, data, BITMAP_FIXED))
    return {'size': size, 'id': ident, 'name': uuid_text(ident),
            'granularity': gran, 'l1_size': n, 'l1': l1}


def read_ext(path):
    """(header dict from parimg.parse, extension cluster bytes or None)."""
    h = parimg.parse(path)
    if not h['ext_off']:
        return h, None
    with open(path, 'rb') as f:
        f.seek(h['ext_off'] * SECTOR)
        c = f.read(h['cluster_size'])
    return h, c


def bitmap_problem(b, data_size, disk_sectors, cluster_size):
    """Why a decoded bitmap feature breaks the spec's field rules (not
    its L1 entries' cluster rules), or None."""
    if data_size < BITMAP_FIXED + 8 * b['l1_size']:
        return 'l1_size %d past data_size %d' % (b['l1_size'], data_size)
    g = b['granularity']
    if g == 0 or g & (g - 1):
        return 'granularity %d' % g
    if b['size'] != disk_sectors:
        return 'size %d' % b['size']
    if b['l1_size'] != l1_size(b['size'] * SECTOR, g * SECTOR,
                               cluster_size):
        return 'l1_size %d' % b['l1_size']
    return None


def read_bitmaps(path, skipped=None):
    """Every valid dirty bitmap stored in the file, rebuilt from the
    spec: a dict name -> {granularity (bytes), bits (bytes, bit i of the
    disk = bit i % 8 of byte i // 8), l1 (entries), attrs (prl's flags)}.
    Bitmap features that break the field rules, or repeat an earlier one's
    id, are left out (and their reasons appended to |skipped|)."""
    h, c = read_ext(path)
    if c is None:
        return {}
    ext = parse_ext(c)
    if ext['magic'] != EXT_MAGIC or not ext['checksum_ok']:
        raise ValueError('%s: bad extension magic or checksum' % path)
    cs = h['cluster_size']
    out, attrs = {}, {}
    with open(path, 'rb') as f:
        for feat in ext['features']:
            if feat['magic'] == FEATURE_PRL_ATTRS:
                n = struct.unpack_from('<I', feat['data'], 0)[0]
                for i in range(n):
                    ident, fl = struct.unpack_from('<16sI', feat['data'],
                                                   8 + 24 * i)
                    attrs[uuid_text(ident)] = fl
                continue
            if feat['magic'] != FEATURE_DIRTY_BITMAP:
                continue
            why = ('data_size %d' % feat['data_size']
                   if feat['data_size'] < BITMAP_FIXED else None)
            if why is None:
                b = decode_bitmap(feat['data'])
                why = bitmap_problem(b, feat['data_size'], h['nb_sectors'],
                                     cs)
            if why is not None:
                if skipped is not None:
                    skipped.append(why)
                continue
            nbytes = bitmap_bytes(b['size'] * SECTOR,
                                  b['granularity'] * SECTOR)
            bits = bytearray()
            for e in b['l1']:
                n = min(cs, nbytes - len(bits))
                if e == 0:
                    bits += bytes(n)
                elif e == 1:
                    bits += b'\xff' * n
                else:
                    f.seek(e * SECTOR)
                    chunk = f.read(n)
                    bits += chunk + bytes(n - len(chunk))
            b['granularity'] *= SECTOR
            b['bits'] = bytes(bits)
            if b['name'] in out:
                if skipped is not None:
                    skipped.append('id %s again' % b['name'])
                continue
            out[b['name']] = b
    for name, fl in attrs.items():
        if name in out:
            out[name]['attrs'] = fl
    for b in out.values():
        b.setdefault('attrs', 0)
    return out


def dirty_runs(bits, granularity, disk_size):
    """Maximal dirty byte ranges [(start, length)] of a bitmap, clipped to
    the disk."""
    runs = []
    nbits = parimg.div_round_up(disk_size, granularity)
    i = 0
    while i < nbits:
        if not (bits[i // 8] >> (i % 8)) & 1:
            i += 1
            continue
        j = i
        while j < nbits and (bits[j // 8] >> (j % 8)) & 1:
            j += 1
        start = i * granularity
        runs.append((start, min(j * granularity, disk_size) - start))
        i = j
    return runs


def expected_runs(ranges, granularity, disk_size):
    """The dirty ranges a bitmap must show after changes to |ranges|
    [(offset, length)]: each rounded out to the granularity, merged,
    clipped to the disk."""
    nbits = parimg.div_round_up(disk_size, granularity)
    bits = bytearray((nbits + 7) // 8)
    for off, length in ranges:
        if length == 0:
            continue
        for i in range(off // granularity,
                       (off + length - 1) // granularity + 1):
            bits[i // 8] |= 1 << (i % 8)
    return dirty_runs(bits, granularity, disk_size)


def place_cluster(img, data, index=None):
    """Put |data| in a data-area cluster of parimg.Image |img| that no BAT
    entry points at; returns its host byte offset."""
    if index is None:
        index = img.next_index
    img.next_index = max(img.next_index, index + 1)
    off = img.host_offset(index)
    img.clusters[off] = (bytes(data), img.cluster_size)
    return off


def attach_ext(img, features, index=None, **kw):
    """Give |img| a Format Extension cluster holding |features| (keyword
    arguments go to ext_cluster); returns its host byte offset."""
    off = place_cluster(img, ext_cluster(features, img.cluster_size, **kw),
                        index)
    img.ext_off = off // SECTOR
    return off
