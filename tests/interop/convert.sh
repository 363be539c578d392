#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-img convert: raw -> parallels -> raw round trips are byte-equal to
# the source (cmp), for several cluster sizes and both magics; the
# intermediate images are ones QEMU checks clean and converts to the same
# bytes; QEMU-made images convert the same through prl and QEMU; zero
# runs stay unallocated; compare exit codes match qemu-img compare.
. "$(dirname "$0")/../functions.sh"
requires qemu-img qemu-io cmp
set -x

M=1048576

# A 9 MiB + 1 KiB source: random data, explicit zeroes, holes, a partial
# last cluster.
"$PYTHON" - <<'EOF'
import random
rng = random.Random(7)
size = 9 * 1048576 + 1024
with open('src.raw', 'wb') as f:
    f.truncate(size)
    for off, n in [(0, 4096), (100000, 300000), (1048576 - 10, 20),
                   (3 * 1048576, 1048576), (6 * 1048576 + 333, 70000),
                   (size - 5000, 5000)]:
        f.seek(off)
        f.write(rng.randbytes(n))
    f.seek(5 * 1048576)
    f.write(bytes(65536))      # written zeroes, not a hole
EOF

for opts in "" cluster_size=4K cluster_size=32256 cluster_size=256K \
    cluster_size=1M,subformat=legacy cluster_size=32256,subformat=legacy \
    cluster_size=64K,preallocation=metadata; do
    rm -f mid.hdd back.raw qemu.raw
    prl_img convert -f raw -O parallels ${opts:+-o $opts} src.raw mid.hdd
    qemu-img check -f parallels mid.hdd
    prl_img check mid.hdd
    prl_img compare -f raw -F parallels src.raw mid.hdd
    qemu-img compare -f raw -F parallels src.raw mid.hdd
    prl_img convert -f parallels -O raw mid.hdd back.raw
    cmp src.raw back.raw
    qemu-img convert -f parallels -O raw mid.hdd qemu.raw
    cmp src.raw qemu.raw
done

# Sparse output: clusters that are all zero in the source are left
# unallocated (the default -S is 4 KiB, as in qemu-img).
prl_img convert -O parallels -o cluster_size=64K src.raw sparse.hdd
allocated=$(prl_img info --output=json sparse.hdd |
    json_field format-specific data allocated-clusters)
# Data touches the 64 KiB clusters 0, 1-6, 15-16, 48-63, 96-97 and
# 143-144: 29 of them; the written-zero cluster at 5 MiB (80) stays a
# hole.
[ "$allocated" = 29 ] || fail "$allocated clusters allocated, want 29"
prl_img map --output=json sparse.hdd >map.json
"$PYTHON" - <<'EOF'
import json
m = json.load(open('map.json'))
at5m = [e for e in m if e['start'] <= 5 * 1048576 < e['start'] + e['length']]
assert at5m and not at5m[0]['data'], at5m
EOF
prl_img convert -O raw sparse.hdd sparse.raw
cmp src.raw sparse.raw

# Parallels to parallels (magic change), and through prl-img from a
# QEMU-made image.
prl_img convert -O parallels -o subformat=legacy,cluster_size=32256 \
    sparse.hdd legacy.hdd
qemu-img check -f parallels legacy.hdd
prl_img compare sparse.hdd legacy.hdd
qemu-img create -f parallels -o cluster_size=256K q.hdd 4M >/dev/null
qemu-io -f parallels -c "write -P 0x71 1000 300000" \
    -c "write -P 0x72 $((3 * M)) 5" q.hdd >/dev/null
prl_img convert -O raw q.hdd p.raw
qemu-img convert -O raw q.hdd qq.raw
cmp p.raw qq.raw
prl_img convert -O parallels q.hdd p2.hdd
qemu-img compare q.hdd p2.hdd

# A source size that is not a whole sector: parallels rounds it up (as
# QEMU does), and the extra bytes read as zero.
head -c 100001 src.raw >odd.raw
prl_img convert -f raw -O parallels odd.raw odd.hdd
prl_img convert -f parallels -O raw odd.hdd odd-back.raw
[ "$(file_size odd-back.raw)" = 100352 ] || fail "odd size round trip"
cmp -n 100001 odd.raw odd-back.raw
prl_io -r odd.hdd -c "read -P 0 100001 351"

# compare: 0 identical, 1 different, 2 error; like qemu-img compare.
cp back.raw diff.raw
printf 'X' | dd of=diff.raw bs=1 seek=$((7 * M + 3)) conv=notrunc \
    2>/dev/null
expect_status 0 prl_img compare src.raw mid.hdd
expect_status 1 prl_img compare src.raw diff.raw
out_contains $((7 * M + 3))
expect_status 1 qemu-img compare src.raw diff.raw
expect_status 2 prl_img compare src.raw missing.raw
expect_status 2 qemu-img compare src.raw missing.raw

# Size mismatches: identical when the longer tail reads as zero (with a
# warning), different when it does not, always different with -s; as in
# qemu-img compare.  (QEMU reports a mismatch in that tail at its sector,
# prl at the exact byte; both are right, so only the status is compared.)
truncate -s 1M short.raw
truncate -s 2M long.raw
for t in "" -s; do
    want=0
    [ -z "$t" ] || want=1
    expect_status $want qemu-img compare $t short.raw long.raw
    expect_status $want prl_img compare $t short.raw long.raw
done
printf 'y' | dd of=long.raw bs=1 seek=1500000 conv=notrunc 2>/dev/null
expect_status 1 qemu-img compare short.raw long.raw
expect_status 1 prl_img compare short.raw long.raw

# -S 0 writes every cluster, zeroes included, as qemu-img does; -p only
# adds progress on stderr.
prl_img convert -S 0 -O parallels -o cluster_size=64K short.raw full.hdd
qemu-img convert -S 0 -O parallels -o cluster_size=64K short.raw qfull.hdd
for img in full.hdd qfull.hdd; do
    n=$(prl_img info --output=json $img |
        json_field format-specific data allocated-clusters)
    [ "$n" = 16 ] || fail "$img: $n clusters allocated with -S 0"
done
prl_img convert -p -O parallels src.raw progress.hdd 2>progress.err
grep -q "100.00/100%" progress.err || fail "no progress shown"
prl_img compare src.raw progress.hdd

# Refused conversions leave no output behind.
expect_fail prl_img convert -O parallels -o cluster_size=1000 src.raw x.hdd
err_contains cluster_size
[ ! -e x.hdd ] || fail "failed convert left x.hdd"
echo OK
