# SPDX-License-Identifier: MIT
"""What every python test needs: where the build is, a private temp dir,
skipping (exit 77), running tools with checked results, and prl-io."""

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC = os.environ.get('PRL_SRC') or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get('PRL_BUILD')
                        or os.path.join(SRC, 'build'))
PRL_IMG = os.path.join(BUILD, 'tools', 'prl-img', 'prl-img')
PRL_IO = os.path.join(BUILD, 'tests', 'helpers', 'prl-io')

# The build runs under ASan and UBSan (make check-asan sets this): every
# process starts several times slower there, so the randomized and
# bulk tests run a part of their sequences (scaled()); the plain build
# runs them whole.
SANITIZED = os.environ.get('PRL_SANITIZED') == '1'


def scaled(n):
    """n, or half of it (at least 1) under the sanitizers."""
    return max(1, n // 2) if SANITIZED else n


CLEAN = 0x312e3276
DIRTY = 0x746F6E59

_SANITIZER = re.compile(r'ERROR: (Address|Leak|Memory|Thread)Sanitizer|'
                        r'runtime error:')


class Failure(Exception):
    """A check of the test did not hold."""


def skip(reason):
    print('skip: ' + reason, file=sys.stderr)
    sys.exit(77)


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def requires(*cmds):
    for c in cmds:
        if shutil.which(c) is None:
            skip(c + ' is not installed')


_tmp = None


def tmpdir():
    """The test's private directory, removed at exit."""
    global _tmp
    if _tmp is None:
        _tmp = tempfile.mkdtemp(prefix='prl-test.')
        atexit.register(shutil.rmtree, _tmp, True)
    return _tmp


def path(name):
    return os.path.join(tmpdir(), name)


class Result:
    def __init__(self, args, rc, out, err):
        self.args, self.rc, self.out, self.err = args, rc, out, err

    def __repr__(self):
        return ('%s -> %d\n--- stdout\n%s--- stderr\n%s'
                % (' '.join(self.args), self.rc, self.out, self.err))


def run(args, want=0, input=None, env=None):
    """Run |args|; |want| is the exit status required (None: any).  A
    death by signal or a sanitizer report always fails."""
    args = [str(a) for a in args]
    p = subprocess.run(args, input=input, capture_output=True, env=env,
                       text=True, errors='replace')
    r = Result(args, p.returncode, p.stdout, p.stderr)
    if p.returncode < 0 or p.returncode >= 128:
        raise Failure('died of a signal: %r' % r)
    if _SANITIZER.search(p.stderr):
        raise Failure('sanitizer report: %r' % r)
    if want is not None and p.returncode != want:
        raise Failure('exit status %d, want %d: %r' % (p.returncode, want, r))
    return r


def check_built(exe):
    if not os.access(exe, os.X_OK):
        raise Failure('not built: ' + exe)


def prl_img(*args, want=0):
    check_built(PRL_IMG)
    return run([PRL_IMG] + list(args), want=want)


def prl_io(image, commands, fmt=None, readonly=False, want=0):
    """Run prl-io on |image| with |commands| (a list of lines) on stdin."""
    check_built(PRL_IO)
    args = [PRL_IO]
    if fmt:
        args += ['-f', fmt]
    args.append('-r' if readonly else '-w')
    args.append(image)
    return run(args, want=want, input=''.join(c + '\n' for c in commands))


def read_image(image, size, fmt=None):
    """The guest contents of |image|, read through prl-io."""
    out = path('read-image.out')
    if os.path.exists(out):
        os.unlink(out)
    with open(out, 'wb'):
        pass
    prl_io(image, ['read 0 %d %s:0' % (size, out)] if size else [],
           fmt=fmt, readonly=True)
    with open(out, 'rb') as f:
        data = f.read()
    check(len(data) == size, 'read %d bytes of %d' % (len(data), size))
    return data


def first_difference(a, b):
    """Offset of the first byte where a and b differ, or None."""
    if a == b:
        return None
    n = min(len(a), len(b))
    step = 1 << 16
    for base in range(0, n, step):
        if a[base:base + step] != b[base:base + step]:
            for i in range(base, min(base + step, n)):
                if a[i] != b[i]:
                    return i
    return n


def sha256(p):
    import hashlib
    with open(p, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(fn):
    """Run a test's main function: Failure and other exceptions are
    failures (exit 1) with the message."""
    try:
        fn()
    except Failure as e:
        print('FAIL: %s' % e, file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
