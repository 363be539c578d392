# SPDX-License-Identifier: MIT
"""Parallels expandable images built byte by byte from parallels.rst, for
tests: either magic, any cluster size, chosen BAT entries and header
values, cluster contents, and field-level corruption of existing files."""

import struct

SECTOR = 512
HEADER_SIZE = 64
MAGIC_LEGACY = b'WithoutFreeSpace'
MAGIC_EXT = b'WithouFreSpacExt'
IN_USE_CLEAN = 0x312e3276
IN_USE_DIRTY = 0x746F6E59
FLAG_EMPTY = 1

# parallels.rst, "Header": name -> (byte offset, struct format).
FIELDS = {
    'magic': (0, '16s'),
    'version': (16, '<I'),
    'heads': (20, '<I'),
    'cylinders': (24, '<I'),
    'tracks': (28, '<I'),
    'nb_bat_entries': (32, '<I'),
    'nb_sectors': (36, '<Q'),
    'in_use': (44, '<I'),
    'data_off': (48, '<I'),
    'flags': (52, '<I'),
    'ext_off': (56, '<Q'),
}


def div_round_up(a, b):
    return (a + b - 1) // b


def round_up(a, b):
    return div_round_up(a, b) * b


class Image:
    """An image in memory.  Every header field is a plain attribute and
    may be set to anything, valid or not, before write()."""

    def __init__(self, size, cluster_size=1 << 20, ext=True, data_off=None):
        if cluster_size % SECTOR:
            raise ValueError('cluster_size must be a multiple of 512')
        self.ext = ext
        self.magic = MAGIC_EXT if ext else MAGIC_LEGACY
        self.version = 2
        self.heads = 16
        self.tracks = cluster_size // SECTOR
        self.nb_sectors = div_round_up(size, SECTOR)
        self.cylinders = self.nb_sectors // (16 * 32)
        self.nb_bat_entries = div_round_up(self.nb_sectors, self.tracks)
        self.in_use = IN_USE_CLEAN
        self.flags = 0
        self.ext_off = 0
        bat_end = HEADER_SIZE + 4 * self.nb_bat_entries
        if data_off is None:
            # What the driver writes: a cluster-aligned data area (ext
            # requires it); legacy images may use data_off = 0.
            data_off = round_up(bat_end, cluster_size) // SECTOR
        self.data_off = data_off
        self.bat = [0] * self.nb_bat_entries
        # Host byte offset -> (bytes, cluster size when allocated), fixed
        # at allocation so later header changes do not move the data.
        self.clusters = {}
        self.next_index = 0

    @property
    def cluster_size(self):
        return self.tracks * SECTOR

    @property
    def size(self):
        return self.nb_sectors * SECTOR

    @property
    def bat_end(self):
        return HEADER_SIZE + 4 * self.nb_bat_entries

    def data_offset(self):
        """The effective data offset in bytes (computed when 0)."""
        if self.data_off:
            return self.data_off * SECTOR
        return round_up(self.bat_end, SECTOR)

    def host_offset(self, index):
        return self.data_offset() + index * self.cluster_size

    def entry(self, index):
        """The BAT value that points at data-area cluster |index|: in
        clusters for ext images, in sectors for legacy ones."""
        off = self.host_offset(index)
        unit = self.cluster_size if self.ext else SECTOR
        if off % unit:
            raise ValueError('cluster %d at byte %d is not expressible'
                             % (index, off))
        return off // unit

    def allocate(self, guest_cluster, data=b'', index=None):
        """Point guest cluster |guest_cluster| at data-area cluster |index|
        (default: the next unused one) holding |data| (zero-padded)."""
        if index is None:
            index = self.next_index
        self.next_index = max(self.next_index, index + 1)
        if len(data) > self.cluster_size:
            raise ValueError('data larger than a cluster')
        self.bat[guest_cluster] = self.entry(index)
        self.clusters[self.host_offset(index)] = (data, self.cluster_size)
        return index

    def guest_bytes(self):
        """The contents a correct reader sees, for comparisons."""
        cs = self.cluster_size
        out = bytearray(self.size)
        if self.flags & FLAG_EMPTY:
            return bytes(out)
        unit = cs if self.ext else SECTOR
        for c, e in enumerate(self.bat):
            if e == 0 or c * cs >= self.size:
                continue
            data = self.clusters.get(e * unit, (b'', cs))[0]
            n = min(len(data), self.size - c * cs)
            out[c * cs:c * cs + n] = data[:n]
        return bytes(out)

    def header(self):
        h = bytearray(HEADER_SIZE)
        values = {
            'magic': self.magic, 'version': self.version,
            'heads': self.heads, 'cylinders': self.cylinders,
            'tracks': self.tracks, 'nb_bat_entries': self.nb_bat_entries,
            'nb_sectors': self.nb_sectors, 'in_use': self.in_use,
            'data_off': self.data_off, 'flags': self.flags,
            'ext_off': self.ext_off,
        }
        for name, (off, fmt) in FIELDS.items():
            struct.pack_into(fmt, h, off, values[name])
        return bytes(h)

    def write(self, path, file_size=None):
        """Write the file: header, BAT (|self.bat|, which may be shorter or
        longer than nb_bat_entries), the data clusters, then size it to
        |file_size| or to the end of the last cluster (at least the data
        offset)."""
        end = max(self.data_offset(), HEADER_SIZE + 4 * len(self.bat))
        for off, (data, cs) in self.clusters.items():
            end = max(end, off + cs)
        with open(path, 'wb') as f:
            f.write(self.header())
            f.write(struct.pack('<%dI' % len(self.bat), *self.bat))
            for off, (data, cs) in sorted(self.clusters.items()):
                if data:
                    f.seek(off)
                    f.write(data)
            f.truncate(end if file_size is None else file_size)


def parse(path):
    """Header fields and BAT of a file, as a dict ('bat' is a list)."""
    with open(path, 'rb') as f:
        h = f.read(HEADER_SIZE)
        if len(h) < HEADER_SIZE:
            raise ValueError('%s: %d bytes, no header' % (path, len(h)))
        d = {name: struct.unpack_from(fmt, h, off)[0]
             for name, (off, fmt) in FIELDS.items()}
        n = d['nb_bat_entries']
        raw = f.read(4 * n)
        d['bat'] = list(struct.unpack('<%dI' % (len(raw) // 4), raw))
    d['ext'] = d['magic'] == MAGIC_EXT
    d['cluster_size'] = d['tracks'] * SECTOR
    if d['data_off']:
        d['data_offset'] = d['data_off'] * SECTOR
    else:
        d['data_offset'] = round_up(HEADER_SIZE + 4 * n, SECTOR)
    unit = d['cluster_size'] if d['ext'] else SECTOR
    d['hosts'] = [e * unit for e in d['bat']]
    return d


def poke(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


def set_field(path, name, value):
    """Overwrite one header field in place, at its spec offset."""
    off, fmt = FIELDS[name]
    poke(path, off, struct.pack(fmt, value))


def set_bat_entry(path, index, value):
    poke(path, HEADER_SIZE + 4 * index, struct.pack('<I', value))
