# SPDX-License-Identifier: MIT
"""Write docs/check-compare.md: every corruption of findings.py given to
prl-img check and to qemu-img check (QEMU 7.2), check only and with
-r all, each on its own copy of the same corrupted image, with what each
tool reports and what the guest reads afterwards.

Usage: tests/check/compare.py BUILD_DIR [OUTPUT]   (default: stdout)
       tests/check/compare.py --check BUILD_DIR    (as a test: the
       committed docs/check-compare.md matches a fresh run)"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
DOC = os.path.join(SRC, 'docs', 'check-compare.md')


def setup(build):
    os.environ['PRL_BUILD'] = os.path.abspath(build)
    os.environ['PRL_SRC'] = SRC
    sys.path[:0] = [HERE, os.path.join(SRC, 'tests', 'lib')]


def cell(s):
    return s.replace('|', '\\|').replace('\n', ' ')


def guest_state(img, ref, cs):
    """How the guest reads against prl's reference (what a repair that
    keeps everything keeps), read by prl-img, else by qemu-img."""
    from prltest import PRL_IMG, run
    out = img + '.raw'
    reader = 'prl-img'
    r = run([PRL_IMG, 'convert', '-f',
             'parallels', '-O', 'raw', img, out], want=None)
    if r.rc != 0:
        reader = 'qemu-img'
        r = run(['qemu-img', 'convert', '-f', 'parallels', '-O', 'raw', img,
                 out], want=None)
        if r.rc != 0:
            return 'does not open'
    with open(out, 'rb') as f:
        got = f.read()
    os.unlink(out)
    if got == bytes(ref):
        return 'guest as expected'
    n = max(len(got), len(ref))
    diff = sum(1 for c in range(0, n, cs)
               if got[c:c + cs] != bytes(ref[c:c + cs]))
    what = '%d cluster(s) differ' % diff
    if len(got) != len(ref):
        what += ', size %d not %d' % (len(got), len(ref))
    return what + ('' if reader == 'prl-img' else ' (read by qemu-img)')


def ext_state(im):
    """For images whose Format Extension must survive: does it?"""
    import checklib as cl
    offs = getattr(im, 'ext_offs', None)
    if not offs:
        return ''
    if os.path.getsize(im.path) < max(offs) + im.cs or \
            cl.read_clusters(im.path, offs, im.cs) != im.ext_data:
        return '; **bitmap clusters destroyed**'
    return '; bitmap clusters kept'


def qemu_summary(rc, j, r):
    if rc < 0:
        return '**qemu-img aborts** (signal %d)' % -rc
    msgs = [m for m in r.err.splitlines() if m.strip()]
    msg = msgs[0] if msgs else ''
    msg = re.sub(r"'[^']*/", "'", msg)
    # Bitmap names are random UUIDs: the table must not change by them.
    msg = re.sub(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
                 r'[0-9a-f]{12}', 'UUID', msg)
    if j is None:
        return 'exit %d: %s' % (rc, msg)
    counts = []
    for k, name in (('corruptions', 'corruption'), ('leaks', 'leak')):
        if j.get(k):
            counts.append('%d %s' % (j[k], name))
    s = 'exit %d' % rc
    if counts:
        s += ': ' + ', '.join(counts)
    if msg:
        s += ' ("%s"%s)' % (msg, ', ...' if len(msgs) > 1 else '')
    return s


def compare_case(c):
    import checklib as cl
    import findings
    from prltest import path
    im = c.build()
    copies = {}
    for tag in ('prl', 'prl-r', 'qemu', 'qemu-r'):
        copies[tag] = im.copy_to(path('%s-%s.hdd' % (c.name, tag)))
        for attr in ('ext_offs', 'ext_data'):
            if hasattr(im, attr):
                setattr(copies[tag], attr, getattr(im, attr))

    rc, j = cl.prl_check(copies['prl'].path)
    prl = 'exit %d: %s' % (rc, ', '.join(dict.fromkeys(cl.kinds(j))))

    p = copies['prl-r']
    rc, j = cl.prl_check(p.path, '-r', 'all')
    lost = findings.lost_offsets(j)
    prl_r = 'exit %d; ' % rc
    prl_r += guest_state(p.path, p.ref, p.cs) if rc != 2 or c.repair else \
        'unchanged'
    if lost:
        prl_r += '; lost reported at ' + ', '.join(str(x) for x in lost)
    prl_r += ext_state(p)

    rc, qj, r = cl.qemu_check(copies['qemu'].path)
    qemu = qemu_summary(rc, qj, r)

    p = copies['qemu-r']
    rc, qj, r = cl.qemu_check(p.path, repair='all')
    qemu_r = 'exit %d; %s' % (rc, guest_state(p.path, p.ref, p.cs)) \
        if rc >= 0 else qemu_summary(rc, qj, r)
    if rc == 0:
        rc2, _ = cl.prl_check(p.path)
        if rc2 == 2:
            qemu_r += '; prl-img check still finds corruption'
    qemu_r += ext_state(p)
    return [c.name, c.doc, prl, prl_r, qemu, qemu_r]


def generate():
    import findings
    from prltest import run
    ver = run(['qemu-img', '--version'], want=None).out.splitlines()[0]
    rows = []
    for c in findings.CASES:
        rows.append(compare_case(c))
    out = ['<!-- SPDX-License-Identifier: MIT -->',
           '<!-- What prl-img check and qemu-img check report for each '
           'corruption; generated, do not edit. -->',
           '# prl-img check and qemu-img check, corruption by corruption',
           '',
           'Generated by `tests/check/compare.py BUILD_DIR '
           'docs/check-compare.md` (the check suite fails when this file '
           'is stale).  Each row is one case of `tests/check/findings.py`: '
           'a good image (4 KiB clusters, 1 MiB, guest clusters 0, 3, 7 '
           'and 8 written with random data; some cases use the legacy '
           'magic or add a persistent bitmap) corrupted at one spot.  Four '
           'copies of the corrupted image are given to `prl-img check`, '
           '`prl-img check -r all`, `qemu-img check -f parallels` and '
           '`qemu-img check -f parallels -r all`.',
           '',
           'After a repair, "guest as expected" means the guest reads what '
           'prl\'s test expects: every cluster that was readable before '
           'the damage, except those whose data the damage destroyed (which '
           'prl reports lost, at their guest offset).  A difference there '
           'for qemu-img means its repair (or what it leaves) reads '
           'otherwise.  QEMU: ' + ver + '.',
           '',
           '| case | corruption | prl-img check | prl-img check -r all | '
           'qemu-img check | qemu-img check -r all |',
           '|---|---|---|---|---|---|']
    for row in rows:
        out.append('| ' + ' | '.join(cell(x) for x in row) + ' |')
    notes = [c for c in findings.CASES if c.qemu_why]
    if notes:
        out += ['', '## Where QEMU 7.2 differs after prl\'s repair', '']
        for c in notes:
            out.append('- `%s`: %s.' % (c.name, c.qemu_why))
    return '\n'.join(out) + '\n'


def main():
    args = sys.argv[1:]
    check_mode = args[:1] == ['--check']
    if check_mode:
        args = args[1:]
    if not args or len(args) > 2:
        raise SystemExit(__doc__)
    setup(args[0])
    from prltest import main as test_main, check, requires

    def body():
        requires('qemu-img')
        text = generate()
        if check_mode:
            with open(DOC) as f:
                old = f.read()
            if old != text:
                sys.stdout.writelines(
                    __import__('difflib').unified_diff(
                        old.splitlines(True), text.splitlines(True),
                        'docs/check-compare.md', 'fresh run'))
            check(old == text, 'docs/check-compare.md is stale: run '
                  'tests/check/compare.py BUILD_DIR docs/check-compare.md')
        elif len(args) == 2:
            with open(args[1], 'w') as f:
                f.write(text)
        else:
            sys.stdout.write(text)
    test_main(body)


if __name__ == '__main__':
    main()
