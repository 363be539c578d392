# SPDX-License-Identifier: MIT
"""Malformed Parallels images: each must be refused by prl-img info with a
message naming the field or BAT entry and its value, never crash, and stay
byte-for-byte unchanged after read-only and read-write attempts (prl-img
info, check without -r, resize, prl-io -r and -w)."""

import os
import re

import parimg
from parimg import Image
from prltest import (Failure, check, main, path, prl_img, prl_io, run,
                     sha256, scaled, PRL_IO)

CS = 4096


def base(ext=True, data_off=None, nclusters=64):
    """A valid image of |nclusters| 4 KiB clusters, 3 of them allocated
    (guest 0, 1 and 2 at data-area indices 0, 1 and 2)."""
    im = Image(nclusters * CS, CS, ext=ext, data_off=data_off)
    for c in range(3):
        im.allocate(c, bytes([0x40 + c]) * CS)
    return im


def case_truncated(n, fmt):
    def make(p):
        base().write(p)
        with open(p, 'r+b') as f:
            f.truncate(n)
    return make


def with_image(mutate, file_size=None, **kw):
    def make(p):
        im = base(**kw)
        mutate(im)
        im.write(p, file_size)
    return make


def setattr_(name, value):
    return lambda im: setattr(im, name, value)


def set_bat(index, value_fn):
    def f(im):
        im.bat[index] = value_fn(im)
    return f


def big_bat(ext):
    """300 entries of 512-byte clusters: the BAT ends at byte 1264, so an
    entry of 1 (byte 512) points into it."""
    def make(p):
        im = Image(300 * 512, 512, ext=ext, data_off=None if ext else 0)
        im.allocate(0, b'x' * 512)
        im.bat[7] = 1
        im.write(p)
    return make


def legacy_data_off_in_bat(p):
    im = Image(300 * CS, CS, ext=False, data_off=1)
    im.write(p)


def legacy_below_data(p):
    # data_off at 16 KiB, the BAT ends at 320: an entry of sector 8 (byte
    # 4096) is neither header nor BAT, but below the data area.
    im = base(ext=False, data_off=32)
    im.bat[9] = 8
    im.write(p)


# (name, builder, -f for info or None, regexes the message must match)
CASES = []
# Every truncation length (every other one under the sanitizers).
for n in list(range(0, 64, 64 // scaled(64))):
    if n < 16:
        # No magic at all: probing refuses the .hdd name; -f parallels
        # says the file is too short.
        CASES.append(('truncated-%d' % n, case_truncated(n, None), None,
                      [r'magic']))
    CASES.append(('truncated-%d-f' % n, case_truncated(n, 'parallels'),
                  'parallels', [r'\b%d bytes' % n, r'\b64\b']))

CASES += [
    ('wrong-magic', with_image(setattr_('magic', b'WithoutFreeSpacX')),
     None, [r'magic']),
    ('wrong-magic-f', with_image(setattr_('magic', b'withouFreSpacExt')),
     'parallels', [r'magic']),
    ('version-1', with_image(setattr_('version', 1)), None,
     [r'version = 1\b']),
    ('version-3', with_image(setattr_('version', 3)), None,
     [r'version = 3\b']),
    ('version-max', with_image(setattr_('version', 0xffffffff)), None,
     [r'version = 4294967295\b']),
    ('tracks-0', with_image(setattr_('tracks', 0)), None,
     [r'tracks = 0\b']),
    ('tracks-huge', with_image(setattr_('tracks', 1 << 22)), None,
     [r'tracks = 4194304\b']),
    ('bat-past-eof', with_image(setattr_('nb_bat_entries', 100000)), None,
     [r'nb_bat_entries = 100000\b']),
    ('bat-huge', with_image(setattr_('nb_bat_entries', 0xffffffff)), None,
     [r'nb_bat_entries = 4294967295\b']),
    ('bat-short-of-nb-sectors', with_image(setattr_('nb_sectors', 513)),
     None, [r'nb_bat_entries = 64\b', r'\b513\b']),
    ('legacy-nb-sectors-high-bits',
     with_image(setattr_('nb_sectors', (1 << 32) | 512), ext=False), None,
     [r'nb_sectors = 4294967808\b']),
    ('ext-data-off-0', with_image(setattr_('data_off', 0)), None,
     [r'data_off = 0\b']),
    ('ext-data-off-misaligned', with_image(setattr_('data_off', 9)), None,
     [r'data_off = 9\b']),
    ('legacy-data-off-in-bat', legacy_data_off_in_bat, None,
     [r'data_off = 1\b']),
    ('ext-entry-in-bat', big_bat(True), None, [r'BAT entry 7 = 1\b']),
    ('legacy-entry-in-bat', big_bat(False), None, [r'BAT entry 7 = 1\b']),
    ('legacy-entry-below-data', legacy_below_data, None,
     [r'BAT entry 9 = 8\b']),
    ('legacy-entry-misaligned',
     with_image(set_bat(2, lambda im: im.bat[1] + 1), ext=False), None,
     [r'BAT entry 2 = 17\b']),
    ('legacy0-entry-misaligned',
     with_image(set_bat(2, lambda im: im.entry(2) + 3), ext=False,
                data_off=0), None,
     [r'BAT entry 2 = %d\b' % ((512 + 2 * CS) // 512 + 3)]),
    ('duplicate-entries', with_image(set_bat(5, lambda im: im.bat[1])),
     None, [r'BAT entr(y|ies)\b.*\b1\b', r'\b5\b']),
    ('legacy-duplicate-entries',
     with_image(set_bat(40, lambda im: im.bat[0]), ext=False), None,
     [r'BAT entr(y|ies)\b.*\b0\b', r'\b40\b']),
    ('entry-past-eof', with_image(set_bat(5, lambda im: im.entry(3))), None,
     [r'BAT entry 5 = %d\b' % (1 + 3)]),
    ('entry-far-past-eof', with_image(set_bat(6, lambda im: 0xfffffff0)),
     None, [r'BAT entry 6 = 4294967280\b']),
    ('legacy-entry-past-eof',
     with_image(set_bat(5, lambda im: im.entry(50)), ext=False), None,
     [r'BAT entry 5 = 408\b']),
    ('cluster-partly-inside',
     with_image(lambda im: None, file_size=CS + 3 * CS - 512), None,
     [r'BAT entry 2 = 3\b']),
    ('legacy-cluster-partly-inside',
     with_image(lambda im: None, file_size=512 + 3 * CS - 1, ext=False,
                data_off=0), None,
     [r'BAT entry 2 = %d\b' % ((512 + 2 * CS) // 512)]),
    ('ext-off-on-data-cluster',
     with_image(setattr_('ext_off', 3 * CS // 512)), None,
     [r'ext_off = 24\b']),
    ('ext-off-past-eof', with_image(setattr_('ext_off', 100 * CS // 512)),
     None, [r'ext_off = 800\b']),
    ('ext-off-misaligned', with_image(setattr_('ext_off', 9)), None,
     [r'ext_off = 9\b']),
    ('ext-off-huge', with_image(setattr_('ext_off', 1 << 62)), None,
     [r'ext_off = %d\b' % (1 << 62)]),
]


def expect_refused(what, r, patterns):
    check(r.rc != 0, '%s: accepted the image: %r' % (what, r))
    msg = r.err
    check(msg.strip(), '%s: failed without a message' % what)
    for pat in patterns:
        check(re.search(pat, msg), '%s: message %r does not match %r'
              % (what, msg.strip(), pat))


def run_case(name, make, fmt, patterns):
    p = path(name + '.hdd')
    make(p)
    before = sha256(p)
    size = os.path.getsize(p)
    fopt = ['-f', fmt] if fmt else []

    expect_refused(name + ': info', prl_img('info', *fopt, p, want=None),
                   patterns)
    expect_refused(name + ': info json',
                   prl_img('info', '--output=json', *fopt, p, want=None),
                   patterns)
    # Read-write attempts: open for writing must refuse before writing.
    expect_refused(name + ': resize',
                   prl_img('resize', *fopt, p, '+1M', want=None), [])
    for mode in ('-w', '-r'):
        args = [PRL_IO] + fopt + [mode, p, '-c', 'read -P 0 0 1']
        if mode == '-w':
            args[-1] = 'write -P 0x5a 0 512'
        expect_refused('%s: prl-io %s' % (name, mode), run(args, want=None),
                       patterns)
    # check without -r reports, never repairs.
    r = prl_img('check', *fopt, p, want=None)
    check(r.rc != 0, '%s: check found nothing: %r' % (name, r))
    check(os.path.getsize(p) == size and sha256(p) == before,
          '%s: the file changed' % name)


def test():
    failures = []
    for name, make, fmt, patterns in CASES:
        try:
            run_case(name, make, fmt, patterns)
        except Failure as e:
            failures.append(name)
            print('FAIL %s: %s' % (name, e))
    print('%d cases, %d failed' % (len(CASES), len(failures)))
    if failures:
        raise Failure('failed cases: ' + ', '.join(failures))


main(test)
