#!/bin/bash
# SPDX-License-Identifier: MIT
# The prl-io test driver itself: every command does what the other tests
# rely on, from -c and from stdin, and every failure (a refused request,
# a pattern mismatch, a bad command) exits 1 with a message and leaves
# the image closed cleanly.
. "$(dirname "$0")/../functions.sh"
set -x

K=65536
prl_img create -f parallels -o cluster_size=64K t.hdd 1M
head -c 300000 /dev/urandom >src.bin

# write from a file, read into a file: the bytes travel unchanged.
prl_io t.hdd -c "write 70000 200000 src.bin:12345" \
    -c "read 70000 200000 out.bin:7"
cmp -n 200000 <(tail -c +12346 src.bin) <(tail -c +8 out.bin) ||
    fail "write FILE:OFF / read FILE:OFF"

# Patterns, zero (-u, -F), trim, flush, from stdin.
prl_io t.hdd <<'EOF'
# comments and blank lines are skipped

write -P 0x5a 0 1000
write -F -P 0x5b 1000 24
read -P 0x5a 0 1000
read -P 0x5b 1000 24
zero 500 100
zero -u -F 600 10
read -P 0 500 110
trim 0 65536
read -P 0 0 65536
flush
EOF

# status: one line per extent, covering the range.
prl_io -r t.hdd -c "status 0 1M" >status.txt
cat status.txt
"$PYTHON" - <<'EOF'
lines = [l.split() for l in open('status.txt')]
pos = 0
for off, length, flags, depth, offset in lines:
    assert int(off) == pos, lines
    pos += int(length)
    assert depth in ('depth=0', 'depth=1'), lines
    if 'data' in flags.split(','):
        assert offset != 'offset=-' and depth == 'depth=1', lines
    else:
        assert flags == 'zero' and offset == 'offset=-', lines
assert pos == 1 << 20, pos
# 70000 .. 270000 touches the 64 KiB clusters 1 to 4; cluster 0 was
# trimmed.
data = [(int(o), int(n)) for o, n, f, d, x in lines if 'data' in f]
assert data == [(65536, 4 * 65536)], data
EOF

# size, info, close and reopen.
[ "$(prl_io -r t.hdd -c size)" = 1048576 ] || fail size
prl_io -r t.hdd -c info >info.txt
grep -qx "format=parallels" info.txt || fail "info format"
grep -qx "cluster_size=65536" info.txt || fail "info cluster_size"
grep -qx "in_use=0x312e3276" info.txt || fail "info in_use"
prl_io t.hdd -c "write -P 1 0 1" -c close -c "reopen -r" -c "read -P 1 0 1"
# resize, with and without shrink.
prl_io t.hdd -c "resize 2M" -c size -c "resize $((K * 3)) shrink" -c size \
    >sizes.txt
[ "$(tr '\n' ' ' <sizes.txt)" = "2097152 196608 " ] || fail resize
# -f picks the driver.
prl_io -f raw -r t.hdd -c size >raw-size.txt
[ "$(cat raw-size.txt)" = "$(file_size t.hdd)" ] || fail "-f raw"

# Failures: status 1, a message, and a cleanly closed image.
expect_status 1 prl_io -r t.hdd -c "write -P 1 0 1"
err_contains "read-only"
expect_status 1 prl_io t.hdd -c "read -P 0 $((K * 3)) 1"
err_contains "past the end"
expect_status 1 prl_io t.hdd -c "write -P 7 10 10" -c "read -P 8 10 10"
err_contains "mismatch at offset 10"
expect_status 1 prl_io t.hdd -c "frobnicate"
err_contains "frobnicate"
expect_status 1 prl_io t.hdd -c "write 0 10 missing.bin:0"
err_contains "missing.bin"
expect_status 1 prl_io t.hdd -c "read -P 0 1Q 1"
expect_status 1 prl_io missing.hdd -c size
[ "$(le32 t.hdd 44)" = $((0x312e3276)) ] || fail "left in use"
expect_status 2 prl_io
echo OK
