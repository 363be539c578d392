#!/bin/bash
# SPDX-License-Identifier: MIT
# A 16 TiB ext image (2^35 sectors: nb_sectors needs its upper half):
# created sparse, written at both ends, mapped, read back, checked by
# qemu-img, and it stays small on disk.  (qemu-img map and compare abort
# on images over 1 TiB in QEMU 7.2, so only prl maps it.)
. "$(dirname "$0")/../functions.sh"
requires qemu-img
set -x

T16=17592186044416
M=1048576

prl_img create -f parallels big.hdd 16T
[ "$(le32 big.hdd 36)" = 0 ] || fail "nb_sectors low half"
[ "$(le32 big.hdd 40)" = 8 ] || fail "nb_sectors high half"
[ "$(le32 big.hdd 32)" = 16777216 ] || fail "BAT entries"
prl_img info --output=json big.hdd >info.json
"$PYTHON" - <<EOF
import json
i = json.load(open('info.json'))
assert i['virtual-size'] == $T16, i
assert i['format'] == 'parallels', i
assert i['cluster-size'] == $M, i
EOF

prl_io big.hdd -c "write -P 0xa1 0 4096" \
    -c "write -P 0xb2 $((T16 - 4096)) 4096" \
    -c "write -P 0xc3 $((T16 / 2 - 100)) 200"
qemu-img check -f parallels big.hdd

prl_io -r big.hdd -c "read -P 0xa1 0 4096" -c "read -P 0 4096 $((M - 4096))" \
    -c "read -P 0xb2 $((T16 - 4096)) 4096" \
    -c "read -P 0 $((T16 - M)) $((M - 4096))" \
    -c "read -P 0 $((T16 / 2 - M)) $((M - 100))" \
    -c "read -P 0xc3 $((T16 / 2 - 100)) 200" \
    -c "read -P 0 $((T16 / 2 + 100)) $((M - 100))"

# Four clusters are allocated: the first, the two around the middle, the
# last; everything else is a hole.
prl_img map --output=json big.hdd >map.json
"$PYTHON" - <<EOF
import json
m = json.load(open('map.json'))
T, M = $T16, $M
assert m[0]['start'] == 0 and m[-1]['start'] + m[-1]['length'] == T, m
for a, b in zip(m, m[1:]):
    assert a['start'] + a['length'] == b['start'], m
data = [(e['start'], e['length']) for e in m if e['data']]
assert data == [(0, M), (T // 2 - M, 2 * M), (T - M, M)], data
for e in m:
    assert e['present'] == e['data'] and e['zero'] != e['data'], e
EOF

# The BAT of 16 M entries is 64 MiB of mostly holes; four clusters and
# a few BAT pages is all that may be allocated.
alloc=$(($(stat -c %b big.hdd) * 512))
[ $alloc -lt $((16 * M)) ] || fail "16 TiB image occupies $alloc bytes"
echo OK
