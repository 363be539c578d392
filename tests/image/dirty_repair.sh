#!/bin/bash
# SPDX-License-Identifier: MIT
# Images left "in use" (in_use = 0x746F6E59, not closed cleanly): read-only
# opens work and change nothing; a read-write open repairs the image the
# way 'prl-img check -r all' would, says so, and leaves it clean, keeping
# every valid cluster and dropping what a crash left inconsistent.
. "$(dirname "$0")/../functions.sh"
requires qemu-img cmp
set -x

DIRTY=$((0x746F6E59))
CLEAN=$((0x312e3276))

# Three good clusters (guest 0, 1, 2 filled with a, b, c), 4 KiB each.
# crash.hdd adds what an interrupted writer may leave: a fourth cluster
# no entry points to (a leak) and an entry past the end of the file.
"$PYTHON" - <<'PY'
import parimg
for name, crash in (('dirty.hdd', False), ('crash.hdd', True)):
    im = parimg.Image(64 * 4096, 4096)
    for c, b in enumerate(b'abc'):
        im.allocate(c, bytes([b]) * 4096)
    im.in_use = parimg.IN_USE_DIRTY
    size = None
    if crash:
        im.bat[9] = im.entry(5)
        size = 4096 + 4 * 4096
    im.write(name, size)
PY

# Read-only opens: no repair, no change, and the dirty flag is reported.
for img in dirty.hdd crash.hdd; do
    cp $img $img.before
    prl_img info $img >/dev/null 2>&1 || true
    prl_io -r $img -c "read -P 0x61 0 4096" >/dev/null 2>&1 || true
    same_file $img $img.before
done
prl_img info --output=json dirty.hdd | grep -q '"dirty-flag": true' ||
    fail "info does not report the dirty flag"
# A valid but unclean image reads fine read-only.
prl_io -r dirty.hdd -c "read -P 0x61 0 4096" -c "read -P 0x63 8192 4096"
same_file dirty.hdd dirty.hdd.before

for img in dirty.hdd crash.hdd; do
    [ "$(le32 $img 44)" = $DIRTY ] || fail "$img should start dirty"
    expect_status 0 prl_io $img -c "read -P 0x61 0 4096" \
        -c "read -P 0x62 4096 4096" -c "read -P 0x63 8192 4096" \
        -c "read -P 0 12288 $((61 * 4096))" -c "write -P 0x64 20000 5"
    err_contains "not closed cleanly"
    [ "$(le32 $img 44)" = $CLEAN ] || fail "$img not clean after repair"
    qemu-img check -f parallels $img
    prl_img check $img
    prl_io -r $img -c "read -P 0x61 0 4096" -c "read -P 0x62 4096 4096" \
        -c "read -P 0x63 8192 4096" -c "read -P 0 12288 7712" \
        -c "read -P 0x64 20000 5" -c "read -P 0 20005 $((61 * 4096 - 7717))"
done
# The leaked cluster is gone: three old clusters and the new one.
[ "$(file_size crash.hdd)" = $((4096 + 4 * 4096)) ] ||
    fail "crash.hdd is $(file_size crash.hdd) bytes"
[ "$(le32 crash.hdd $((64 + 4 * 9)))" = 0 ] ||
    fail "the entry past the end of the file survived"
echo OK
