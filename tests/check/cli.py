# SPDX-License-Identifier: MIT
"""prl-img check's command line: qemu-img's exit statuses (0 clean, 1 the
check could not run, 2 corruptions, 3 leaks only, 63 no check for the
format), its JSON keys plus the findings list, -q, and the human output
that names each finding once, before and after a repair."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checklib as cl  # noqa: E402
import parimg  # noqa: E402
from prltest import check, main, path, prl_img, sha256  # noqa: E402

TOP_KEYS = {'filename', 'format', 'check-errors', 'corruptions', 'leaks',
            'image-end-offset', 'total-clusters', 'allocated-clusters',
            'findings'}
FINDING_KEYS = {'kind', 'class', 'offset', 'message', 'fixed'}
OPTIONAL_KEYS = {'bat-index', 'action', 'data-lost', 'guest-offset'}


def keys(j, repaired):
    want = TOP_KEYS | ({'corruptions-fixed', 'leaks-fixed'} if repaired
                       else set())
    check(set(j) == want, 'JSON keys %s, want %s' % (sorted(j), sorted(want)))
    for f in j['findings']:
        check(FINDING_KEYS <= set(f) <= FINDING_KEYS | OPTIONAL_KEYS,
              'finding keys: %s' % f)
        check(f['class'] in ('corruption', 'leak', 'note'), 'class: %s' % f)
        check(('data-lost' in f) == ('guest-offset' in f), 'lost: %s' % f)
        check(not f['fixed'] or f.get('action'), 'fixed, no action: %s' % f)


def test():
    # Clean: exit 0, counts, no findings; -q prints nothing.
    im = cl.make('clean.hdd')
    rc, j = cl.prl_check(im.path)
    check(rc == 0 and j['findings'] == [], 'clean: %d %s' % (rc, j))
    keys(j, False)
    check(j['format'] == 'parallels' and j['total-clusters'] == 256 and
          j['allocated-clusters'] == 4 and
          j['image-end-offset'] == im.file_size(), 'clean counts: %s' % j)
    r = prl_img('check', im.path)
    check('No errors were found on the image.' in r.out, r.out)
    r = prl_img('check', '-q', im.path)
    check(r.out == '', '-q printed: %r' % r.out)
    before = sha256(im.path)
    r = prl_img('check', '-q', '-r', 'all', im.path)
    check(r.out == '' and sha256(im.path) == before,
          'clean image: -q -r all printed %r or changed it' % r.out)

    # Leaks only: 3; corruption: 2, with the keys after a repair too.
    leak = im.copy_to(path('leak.hdd'))
    with open(leak.path, 'ab') as f:
        f.write(b'\1' * 4096)
    rc, j = cl.prl_check(leak.path)
    check(rc == 3 and j['leaks'] == 1 and j['corruptions'] == 0, '%s' % j)
    bad = im.copy_to(path('bad.hdd'))
    bad.set_bat(7, 1000)
    rc, j = cl.prl_check(bad.path)
    check(rc == 2 and j['corruptions'] == 1, 'corrupt: %d %s' % (rc, j))
    keys(j, False)
    f = [x for x in j['findings'] if x['kind'] == 'bat-past-eof'][0]
    check(f['bat-index'] == 7 and f['offset'] == 1000 * 4096 and
          not f['fixed'], 'finding: %s' % f)
    r = prl_img('check', bad.path, want=2)
    check(r.out.count('BAT entry 7 = 1000') == 1, r.out)
    r = prl_img('check', '-r', 'all', bad.path)
    check(r.out.count('BAT entry 7 = 1000') == 1 and 'Repairing' in r.out
          and 'data lost at guest offset 28672' in r.out, r.out)
    bad.set_bat(7, 1000)
    rc, j = cl.prl_check(bad.path, '-r', 'all')
    keys(j, True)
    check(rc == 0 and j['corruptions-fixed'] == 1 and j['corruptions'] == 0,
          'repaired: %s' % j)
    f = [x for x in j['findings'] if x['kind'] == 'bat-past-eof'][0]
    check(f['fixed'] and f['data-lost'] and f['guest-offset'] == 7 * 4096,
          'repaired finding: %s' % f)

    # -r leaks fixes leaks, not corruptions: 2 stays 2, file untouched
    # where the BAT is.
    bad.set_bat(7, 1000)
    rc, j = cl.prl_check(bad.path, '-r', 'leaks')
    check(rc == 2 and j['corruptions'] == 1 and
          parimg.parse(bad.path)['bat'][7] == 1000, '-r leaks: %s' % j)

    # Not this format.  -f raw: no check (63), as qemu-img.  A .hdd file
    # without the magic is not taken for raw when probed (never 63).
    raw = path('disk.raw')
    with open(raw, 'wb') as f:
        f.truncate(1 << 20)
    r = prl_img('check', raw, want=63)
    r = prl_img('check', '-f', 'raw', raw, want=63)
    nomagic = im.copy_to(path('nomagic.hdd'))
    nomagic.poke(0, b'X')
    before = sha256(nomagic.path)
    # Probed, it is no image of a format prl knows: nothing was checked,
    # so 1 (the check could not complete), as qemu-img exits when it
    # cannot open a file; the error alone says it is not a Parallels
    # image, once, with no summary and no JSON, with -r all too.
    for opts in ([], ['-r', 'all'], ['--output=json'],
                 ['-r', 'all', '--output=json']):
        r = prl_img('check', *opts, nomagic.path, want=1)
        check(r.out == '' and r.err.count('\n') == 1 and
              'is not a Parallels image' in r.err and 'magic' in r.err,
              'probed %s: %r' % (opts, r))
    # A file that is missing: the same, the error alone.
    r = prl_img('check', '-r', 'all', path('missing.hdd'), want=1)
    check(r.out == '' and r.err.count('\n') == 1, 'missing: %r' % r)
    r = prl_img('check', '-f', 'parallels', '--output=json', nomagic.path,
                want=2)
    check(json.loads(r.out)['findings'][0]['kind'] == 'magic', r.out)
    check(sha256(nomagic.path) == before, 'bad magic file changed')

    # Errors of use and of I/O: 1.
    prl_img('check', path('missing.hdd'), want=1)
    prl_img('check', '-r', 'some', im.path, want=1)
    prl_img('check', '--output=xml', im.path, want=1)
    prl_img('check', want=1)
    if os.geteuid() != 0:
        os.chmod(leak.path, 0o444)
        prl_img('check', '-r', 'all', leak.path, want=1)


if __name__ == '__main__':
    main(test)
