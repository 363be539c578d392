#!/bin/bash
# SPDX-License-Identifier: MIT
# Time prl-img check against qemu-img check -f parallels in the same run on
# a 1 TiB-virtual Parallels image with 64 Ki allocated 1 MiB clusters;
# print medians, the prl/qemu ratio, and whether prl meets both targets
# (under 0.5 s, at most 0.5x qemu-img).
#
# Usage: bench/check.sh [BUILD_DIR]   (default: build)
# BENCH_DIR: where the image goes (default: bench/tmp/); 64 GiB apparent,
# about 260 MiB on disk (one 4 KiB block per cluster).  REPS: timed runs
# per tool (default 11).  LIMIT: prl's time limit in seconds (default 0.5);
# TARGET: the ratio to meet (default 0.50).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
prl_img=$build/tools/prl-img/prl-img
reps=${REPS:-11}
limit=${LIMIT:-0.5}
target=${TARGET:-0.50}
base=${BENCH_DIR:-$src/bench/tmp}

for t in "$prl_img" qemu-img /usr/bin/python3 awk; do
    command -v "$t" >/dev/null || { echo "check.sh: needs $t" >&2; exit 1; }
done

mkdir -p "$base"
dir=$(mktemp -d "$(cd "$base" && pwd)/prl-bench.XXXXXX")
trap 'rm -rf "$dir"; rmdir "$base" 2>/dev/null || true' EXIT
avail_kb=$(df --output=avail -k "$dir" | tail -n 1)
if [ "$avail_kb" -lt $((1 << 20)) ]; then
    echo "check.sh: $dir has $((avail_kb >> 10)) MiB free, needs 1 GiB" >&2
    exit 1
fi
echo "bench: image in $dir ($(df --output=fstype "$dir" | tail -n 1))"
echo "bench: $($prl_img --version), $(qemu-img --version | head -n 1)"

# The image, written from parallels.rst: WithouFreSpacExt, 1 MiB clusters,
# 2^20 BAT entries (a 4 MiB BAT, data at 5 MiB), 65536 guest clusters
# spread over the disk in random order, each host cluster holding one
# non-zero byte (the rest sparse), the file ending with the last cluster.
img=$dir/big.hdd
/usr/bin/python3 - "$img" <<'PY'
import random, struct, sys
MiB = 1 << 20
n_bat, n_alloc, cs = 1 << 20, 1 << 16, MiB
data_off = (64 + 4 * n_bat + cs - 1) // cs * cs
rnd = random.Random(1)
guest = rnd.sample(range(n_bat), n_alloc)
bat = [0] * n_bat
for i, g in enumerate(guest):
    bat[g] = data_off // cs + i
hdr = struct.pack('<16sIIIIIQIIIQ', b'WithouFreSpacExt', 2, 16,
                  n_bat * cs // 512 // (16 * 32), cs // 512, n_bat,
                  n_bat * cs // 512, 0x312e3276, data_off // 512, 0, 0)
with open(sys.argv[1], 'wb') as f:
    f.write(hdr)
    f.write(struct.pack('<%dI' % n_bat, *bat))
    for i in range(n_alloc):
        f.seek(data_off + i * cs + (i * 4096) % cs)
        f.write(bytes([1 + i % 255]))
    f.truncate(data_off + n_alloc * cs)
PY
echo "bench: $(du -h --apparent-size "$img" | cut -f1) apparent," \
    "$(du -h "$img" | cut -f1) on disk"

# Written back before the clock runs, or writeback competes with it.
sync "$img"

# Both must find it clean, or the timing compares different work.
"$prl_img" check -f parallels "$img" >/dev/null ||
    { echo "check.sh: prl-img check does not find the image clean" >&2; exit 1; }
qemu-img check -f parallels "$img" >/dev/null ||
    { echo "check.sh: qemu-img check does not find the image clean" >&2; exit 1; }

# The clock is bash's EPOCHREALTIME, in microseconds: a fork of date(1)
# per reading would cost a good part of what is timed.

# Alternate the two tools so that a disturbance hits both; page cache
# warm (one untimed run each first).
declare -a t_prl=() t_qemu=()
for ((r = 0; r <= reps; r++)); do
    t0=${EPOCHREALTIME/[.,]/}
    "$prl_img" check -f parallels "$img" >/dev/null
    t1=${EPOCHREALTIME/[.,]/}
    qemu-img check -f parallels "$img" >/dev/null
    t2=${EPOCHREALTIME/[.,]/}
    if [ $r -gt 0 ]; then
        t_prl+=($((t1 - t0)))
        t_qemu+=($((t2 - t1)))
    fi
done

median() {
    printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {
        if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "%.4f", m / 1e6
    }'
}
m_prl=$(median "${t_prl[@]}")
m_qemu=$(median "${t_qemu[@]}")
echo "bench: prl-img check  median ${m_prl} s of $reps"
echo "bench: qemu-img check median ${m_qemu} s of $reps"
awk -v p="$m_prl" -v q="$m_qemu" -v l="$limit" -v t="$target" 'BEGIN {
    ratio = p / q
    printf "check: prl/qemu = %.2f (target <= %.2f): %s\n", ratio, t,
        ratio <= t ? "ok" : "MISSED"
    printf "check: prl %.3f s (limit %.2f s): %s\n", p, l,
        p < l ? "ok" : "MISSED"
    exit !(ratio <= t && p < l)
}'
