# SPDX-License-Identifier: MIT
"""A descriptor full of what prl does not interpret (unknown elements and
attributes at every level, comments, a processing instruction) with a
Snapshot.xml and another file beside it: after snapshot create, delete of
a middle and of the root snapshot, and commit, everything unknown is still
there, unchanged, and the descriptor differs from the original only in
the Image/Shot/TopGUID elements the operations add and remove."""

import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bundlelib import (ZERO, guid, helper, qemu_create, qemu_write,
                       read_file, write_file)
from prltest import check, first_difference, main, path, read_image, requires

SIZE = 2 << 20
CS = 64 << 10

UNKNOWN = [
    '<!-- written by a test, keep me -->',
    '<?prl-test keep="me"?>',
    '<Encryption><Engine>{00000000-0000-0000-0000-000000000000}</Engine>'
    '<Data/></Encryption>',
    '<UID>{0badc0de-0000-4000-8000-000000000001}</UID>',
    '<Name>disk &amp; friends</Name>',
    '<Miscellaneous><CompatLevel>level2</CompatLevel>'
    '<Bootable>1</Bootable></Miscellaneous>',
    '<!-- inside Storage -->',
    '<Tag kind="x">per-image data</Tag>',
    '<Unknown attr="1">text<![CDATA[ <raw> ]]></Unknown>',
    '<!-- between shots -->',
    '<Extra version="9"><Deep><Deeper a="b"/></Deep></Extra>',
]

# The unknown attributes, as they must read afterwards.
ATTRS = ['<Parallels_disk_image Version="1.0" vendor="test">',
         '<Storage kind="main">']


def build(d):
    os.mkdir(d)
    files = []
    for i in range(3):
        f = os.path.join(d, 'disk.hdd.0.%s.hds' % guid(i))
        qemu_create(f, SIZE, CS)
        qemu_write(f, [(0x21 + i, i * 300000, 200000)])
        files.append(os.path.basename(f))

    def image(i):
        return ('<Image>\n<GUID>%s</GUID>\n<Type>Compressed</Type>\n'
                '<File>%s</File>\n%s\n</Image>' % (guid(i), files[i],
                                                   UNKNOWN[7]))

    def shot(i, parent):
        return ('<Shot>\n<GUID>%s</GUID>\n<ParentGUID>%s</ParentGUID>\n'
                '%s\n</Shot>' % (guid(i), parent, UNKNOWN[8]))

    text = '\n'.join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        UNKNOWN[0],
        ATTRS[0],
        UNKNOWN[1],
        '<Disk_Parameters>',
        '<Disk_size>%d</Disk_size>' % (SIZE // 512),
        '<Cylinders>%d</Cylinders>' % (SIZE // 512 // 1008),
        '<Heads>16</Heads>', '<Sectors>63</Sectors>', '<Padding>0</Padding>',
        UNKNOWN[2], UNKNOWN[3], UNKNOWN[4], UNKNOWN[5],
        '</Disk_Parameters>',
        '<StorageData>', ATTRS[1], UNKNOWN[6],
        '<Start>0</Start>', '<End>%d</End>' % (SIZE // 512),
        '<Blocksize>%d</Blocksize>' % (CS // 512),
        image(0), image(1), image(2),
        '</Storage>', '</StorageData>',
        '<Snapshots>',
        '<TopGUID>%s</TopGUID>' % guid(2),
        shot(0, ZERO), UNKNOWN[9], shot(1, guid(0)), shot(2, guid(1)),
        '</Snapshots>',
        UNKNOWN[10],
        '</Parallels_disk_image>', ''])
    write_file(os.path.join(d, 'DiskDescriptor.xml'), text)
    write_file(os.path.join(d, 'Snapshot.xml'),
               '<?xml version="1.0"?>\n<Snapshots><!-- vm state -->'
               '<Shot guid="x"/></Snapshots>\n')
    write_file(os.path.join(d, 'notes.txt'), 'not an image\n')


def normalized(text, keep):
    """The descriptor without the parts the operations may change: the
    Image and Shot elements of snapshots not in |keep|, TopGUID and the
    ParentGUID texts; whitespace between elements ignored."""
    root = ET.fromstring(text, parser=ET.XMLParser(
        target=ET.TreeBuilder(insert_comments=True, insert_pis=True)))
    for parent in root.iter():
        for child in list(parent):
            g = child.find('GUID')
            if child.tag in ('Image', 'Shot') and g is not None and \
                    g.text not in keep:
                parent.remove(child)
            elif child.tag == 'TopGUID':
                parent.remove(child)
            elif child.tag == 'ParentGUID':
                child.text = ''
    return ET.canonicalize(ET.tostring(root, encoding='unicode'),
                           with_comments=True, strip_text=True)


def chain(d):
    return [line.split(' ')[0]
            for line in helper('list', d).out.splitlines()]


def test():
    requires('qemu-img', 'qemu-io')
    d = path('disk.hdd')
    build(d)
    desc = os.path.join(d, 'DiskDescriptor.xml')
    orig = read_file(desc).decode()
    snap = read_file(os.path.join(d, 'Snapshot.xml'))
    contents = read_image(d, SIZE)
    steps = [('snapshot',), ('delete', guid(1)), ('commit',),
             ('delete', guid(0))]
    for step in steps:
        helper(step[0], d, *step[1:])
        now = read_file(desc).decode()
        keep = set(chain(d)) & {guid(0), guid(1), guid(2)}
        for frag in UNKNOWN + ATTRS:
            n_orig = orig.count(frag)
            if frag in (UNKNOWN[7], UNKNOWN[8]):
                # One per surviving original Image / Shot.
                n_orig = len(keep)
            check(now.count(frag) == n_orig,
                  'after %s: %r appears %d times, want %d:\n%s' %
                  (step, frag, now.count(frag), n_orig, now))
        check(normalized(now, keep) == normalized(orig, keep),
              'after %s: the descriptor changed beyond the snapshot '
              'elements:\n%s' % (step, now))
        check(read_file(os.path.join(d, 'Snapshot.xml')) == snap,
              'after %s: Snapshot.xml changed' % (step,))
        check(os.path.exists(os.path.join(d, 'notes.txt')),
              'after %s: notes.txt is gone' % (step,))
        off = first_difference(read_image(d, SIZE), contents)
        check(off is None, 'after %s: contents differ at %r' % (step, off))
    check(len(chain(d)) == 1, 'one image left: %r' % chain(d))


main(test)
