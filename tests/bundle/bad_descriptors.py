# SPDX-License-Identifier: MIT
"""Bad descriptors, one per rule of prl-xml.rst and the safety rules, plus
malformed XML, a huge file, entity expansion and external entities: each
gives a clear error naming the element or value from prl-img info and
from every snapshot operation, nothing crashes, and nothing in the bundle
changes on disk.  Also the cases that must open: a geometry that is off
(a warning), Virtuozzo_disk_image, external files when allowed."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'lib'))

from bundlelib import (BACKUP, TOP, ZERO, descriptor, guid, helper,
                       qemu_create, tree_state, write_file)
from prltest import check, main, path, prl_img, requires, run

SIZE = 1 << 20
CS = 64 << 10
R, T = guid(0), guid(1)


def base(d, size=SIZE):
    os.mkdir(d)
    qemu_create(os.path.join(d, 'root.hds'), size, CS)
    qemu_create(os.path.join(d, 'top.hds'), size, CS)


IMAGES = [(R, 'Compressed', 'root.hds'), (T, 'Compressed', 'top.hds')]
SHOTS = [(R, ZERO), (T, R)]


def desc(**kw):
    images = kw.pop('images', IMAGES)
    shots = kw.pop('shots', SHOTS)
    kw.setdefault('top_guid', T)
    return descriptor(SIZE, kw.pop('blocksize', CS // 512), images, shots,
                      **kw)


def good():
    return desc()


def replace(old, new):
    text = good()
    assert old in text, old
    return text.replace(old, new, 1)


LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n'
          '<!ENTITY lol "lol">\n' +
          ''.join('<!ENTITY lol%d "%s">\n' % (i, ('&lol%d;' % (i - 1)
                                                  if i else '&lol;') * 10)
                  for i in range(10)) +
          ']>\n<Parallels_disk_image Version="1.0">&lol9;'
          '</Parallels_disk_image>\n')

XXE = ('<?xml version="1.0"?>\n<!DOCTYPE d [ <!ENTITY x SYSTEM '
       '"file:///etc/passwd"> ]>\n' +
       good().split('\n', 1)[1].replace('root.hds', '&x;'))

# (name, descriptor text, text the error must contain)
CASES = [
    ('root-element', desc(root='Foo_disk_image'), 'root element is <Foo'),
    ('version', desc(version='2.0'), "Version '2.0'"),
    ('padding', desc(padding=1), '<Padding> is 1'),
    ('no-disk-size', replace('<Disk_size>2048</Disk_size>', ''),
     'no <Disk_size>'),
    ('disk-size-nan', replace('<Disk_size>2048<', '<Disk_size>2O48<'),
     "'2O48', not a number"),
    ('disk-size-zero', replace('<Disk_size>2048<', '<Disk_size>0<'),
     '<Disk_size> is 0'),
    ('two-disk-size', replace('<Disk_size>2048</Disk_size>',
                              '<Disk_size>2048</Disk_size>'
                              '<Disk_size>2048</Disk_size>'),
     'more than one <Disk_size>'),
    ('split', replace('</Storage>', '</Storage><Storage><Start>0</Start>'
                      '</Storage>'), 'split disks'),
    ('no-storage', replace('<StorageData>', '<StorageData><!--').replace(
        '</StorageData>', '--></StorageData>'), 'no <Storage>'),
    ('start', desc(start=8), '<Start> of <Storage> is 8'),
    ('end', desc(end=4096), '<End> of <Storage> is 4096'),
    ('blocksize', desc(blocksize=256), '<Blocksize> says 256'),
    ('blocksize-zero', desc(blocksize=0), '<Blocksize> of <Storage> is 0'),
    ('guid-braces', replace('<GUID>%s</GUID>' % R,
                            '<GUID>%s</GUID>' % R[1:-1]), 'not a GUID'),
    ('guid-hex', replace('<GUID>%s</GUID>' % R,
                         '<GUID>%s</GUID>' % R.replace('0', 'g', 1)),
     'not a GUID'),
    ('type', replace('<Type>Compressed</Type>', '<Type>Sparse</Type>'),
     "is 'Sparse'; it must be Plain or Compressed"),
    ('no-file', replace('<File>root.hds</File>', ''), 'no <File>'),
    ('empty-file', replace('<File>root.hds</File>', '<File> </File>'),
     '<File> of image %s is empty' % R),
    ('file-element-child', replace('<File>root.hds</File>',
                                   '<File>root<b/>.hds</File>'),
     'must hold only text'),
    ('shot-unknown-image', desc(shots=SHOTS + [(guid(7), T)]),
     '<Shot> %s names no <Image>' % guid(7)),
    ('image-without-shot', desc(images=IMAGES + [(guid(7), 'Compressed',
                                                  'top.hds')]),
     '<Image> %s has no <Shot>' % guid(7)),
    ('dup-image', desc(images=IMAGES + [(T, 'Compressed', 'top.hds')]),
     'two <Image> elements have the GUID %s' % T),
    ('dup-shot', desc(shots=SHOTS + [(T, R)]),
     'two <Shot> elements have the GUID %s' % T),
    ('two-roots', desc(shots=[(R, ZERO), (T, ZERO)]), '2 root <Shot>'),
    ('no-root', desc(shots=[(R, T), (T, R)]), '0 root <Shot>'),
    ('cycle', desc(images=IMAGES + [(guid(2), 'Compressed', 'top.hds'),
                                    (guid(3), 'Compressed', 'top.hds')],
                   shots=SHOTS + [(guid(2), guid(3)), (guid(3), guid(2))]),
     'form a cycle'),
    ('self-parent', desc(shots=[(R, ZERO), (T, T)]), 'its own parent'),
    ('missing-parent', desc(shots=[(R, ZERO), (T, guid(9))]),
     'the <ParentGUID> %s of <Shot> %s names no <Shot>' % (guid(9), T)),
    ('no-top', desc(top_guid=None), 'no top snapshot'),
    ('top-unknown', desc(top_guid=guid(9)), '<TopGUID> %s names no <Shot>'
     % guid(9)),
    ('top-backup', desc(images=[(R, 'Compressed', 'root.hds'),
                                (BACKUP, 'Compressed', 'top.hds')],
                        shots=[(R, ZERO), (BACKUP, R)], top_guid=BACKUP),
     'BackupID'),
    ('plain-overlay', desc(images=[(R, 'Compressed', 'root.hds'),
                                   (T, 'Plain', 'top.hds')]),
     'overlays must be Compressed'),
    ('absolute', replace('<File>root.hds</File>',
                         '<File>%s</File>' % path('outside.hds')),
     'absolute path'),
    ('dotdot', replace('<File>root.hds</File>',
                       '<File>../outside.hds</File>'),
     'outside the bundle directory'),
    ('symlink-out', replace('<File>root.hds</File>',
                            '<File>link.hds</File>'),
     'outside the bundle directory'),
    ('missing-file', replace('<File>root.hds</File>',
                             '<File>gone.hds</File>'), 'No such file'),
    ('not-parallels', replace('<File>root.hds</File>',
                              '<File>junk.hds</File>'),
     'not a Parallels image'),
    ('wrong-size', replace('<File>root.hds</File>', '<File>big.hds</File>'),
     "<Disk_size> says %d" % SIZE),
    ('malformed', good()[:-40], 'not well-formed XML'),
    ('mismatched-tag', replace('</Heads>', '</Head>'),
     'not well-formed XML'),
    ('empty', '', 'not well-formed XML'),
    ('binary', b'\x00\xff\xfe' * 100, 'not well-formed XML'),
    ('huge', good().replace('</Parallels_disk_image>',
                            '<!--' + 'x' * (2 << 20) +
                            '--></Parallels_disk_image>'),
     'is refused'),
    ('billion-laughs', LAUGHS, 'DOCTYPE'),
    ('xxe', XXE, 'DOCTYPE'),
]


def expect_error(args, text, name):
    r = run(args, want=None)
    check(r.rc not in (0,) and r.rc < 128,
          '%s: %s exited %d, want a failure: %r' % (name, args[1], r.rc, r))
    check(text in r.err, '%s: %s: stderr lacks %r: %s' % (name, args[1],
                                                          text, r.err))


def test():
    requires('qemu-img')
    outside = path('outside.hds')
    qemu_create(outside, SIZE, CS)
    for name, text, want in CASES:
        d = path(name + '.hdd')
        base(d)
        qemu_create(os.path.join(d, 'big.hds'), 2 * SIZE, CS)
        write_file(os.path.join(d, 'junk.hds'), b'junk' * 1000)
        os.symlink(outside, os.path.join(d, 'link.hds'))
        write_file(os.path.join(d, 'DiskDescriptor.xml'), text)
        before = tree_state(d)
        outside_before = tree_state(path(''))['outside.hds']
        prl_img_bin = [os.path.join(os.environ.get('PRL_BUILD', ''), 'tools',
                                    'prl-img', 'prl-img')]
        from bundlelib import HELPER
        for args in (prl_img_bin + ['info', d],
                     prl_img_bin + ['info', '-f', 'bundle',
                                    os.path.join(d, 'DiskDescriptor.xml')],
                     [HELPER, 'snapshot', d], [HELPER, 'commit', d],
                     [HELPER, 'delete', d, R], [HELPER, 'list', d]):
            if name in ('wrong-size', 'not-parallels', 'missing-file',
                        'symlink-out', 'dotdot', 'blocksize',
                        'absolute') and \
                    args[1] == 'list':
                continue    # list reads only the descriptor
            expect_error(args, want, name)
        check(tree_state(d) == before, '%s: the bundle changed' % name)
        check(tree_state(path(''))['outside.hds'] == outside_before,
              '%s: a file outside the bundle changed' % name)

    # What must open.
    d = path('geometry.hdd')
    base(d)
    write_file(os.path.join(d, 'DiskDescriptor.xml'), desc(cylinders=7))
    r = prl_img('info', d)
    check('Cylinders 7' in r.err and 'differs from Disk_size' in r.err,
          'no geometry warning: %r' % r)
    d = path('real-geometry.hdd')
    base(d)
    write_file(os.path.join(d, 'DiskDescriptor.xml'), desc())
    r = prl_img('info', d)
    check('differs' not in r.err, 'warning on Parallels geometry: %r' % r)
    d = path('virtuozzo.hdd')
    base(d)
    write_file(os.path.join(d, 'DiskDescriptor.xml'),
               desc(root='Virtuozzo_disk_image'))
    prl_img('info', d)
    d = path('predefined-top.hdd')
    base(d)
    write_file(os.path.join(d, 'DiskDescriptor.xml'),
               desc(images=[(R, 'Compressed', 'root.hds'),
                            (TOP, 'Compressed', 'top.hds')],
                    shots=[(R, ZERO), (TOP, R)], top_guid=None))
    check(' 1 1 top.hds' in helper('list', d).out, 'predefined top')
    d = path('external.hdd')
    base(d)
    write_file(os.path.join(d, 'DiskDescriptor.xml'),
               replace('<File>root.hds</File>', '<File>%s</File>' % outside))
    helper('list', d)
    helper('-x', 'snapshot', d)
    helper('-x', 'commit', d)
    helper('-x', 'commit', d)
    check(os.path.exists(outside), 'an external image was removed')


main(test)
