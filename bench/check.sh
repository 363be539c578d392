#!/bin/bash
# SPDX-License-Identifier: MIT
# Time prl-img check against qemu-img check -f parallels in the same run on
# 1 TiB-virtual Parallels images with 64 Ki allocated 1 MiB clusters, one
# allocated in random guest order (scattered) and one in guest order
# (contiguous); print for each the medians, the prl/qemu ratio and whether
# prl meets both targets (under 0.5 s, at most 0.5x qemu-img).
#
# Usage: bench/check.sh [BUILD_DIR]   (default: build)
# BENCH_DIR: where the images go (default: bench/tmp/); 64 GiB apparent
# each, about 260 MiB on disk (one 4 KiB block per cluster).  REPS: timed
# runs per tool and image (default 50).  LIMIT: prl's time limit in
# seconds (default 0.5); TARGET: the ratio to meet (default 0.50).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
prl_img=$build/tools/prl-img/prl-img
reps=${REPS:-50}
limit=${LIMIT:-0.5}
target=${TARGET:-0.50}
base=${BENCH_DIR:-$src/bench/tmp}

for t in "$prl_img" qemu-img /usr/bin/python3 awk sort; do
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
echo "bench: images in $dir ($(df --output=fstype "$dir" | tail -n 1))"
echo "bench: $($prl_img --version), $(qemu-img --version | head -n 1)"
echo "bench: $reps timed runs per tool and image, alternating, page cache" \
    "warm"

# An image written from parallels.rst: WithouFreSpacExt, 1 MiB clusters,
# 2^20 BAT entries (a 4 MiB BAT, data at 5 MiB), 65536 guest clusters at
# host clusters 0..65535 of the data area, each holding one non-zero byte
# (the rest sparse), the file ending with the last cluster.  scattered:
# the guest clusters are a random sample of the disk in random order;
# contiguous: guest clusters 0..65535 in order.
make_image() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import random, struct, sys
MiB = 1 << 20
n_bat, n_alloc, cs = 1 << 20, 1 << 16, MiB
data_off = (64 + 4 * n_bat + cs - 1) // cs * cs
if sys.argv[2] == 'scattered':
    guest = random.Random(1).sample(range(n_bat), n_alloc)
else:
    guest = range(n_alloc)
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
    # Written back before the clock runs, or writeback competes with it.
    sync "$1"
    # Both must find it clean, or the timing compares different work.
    "$prl_img" check -f parallels "$1" >/dev/null || {
        echo "check.sh: prl-img check does not find $1 clean" >&2
        exit 1
    }
    qemu-img check -f parallels "$1" >/dev/null || {
        echo "check.sh: qemu-img check does not find $1 clean" >&2
        exit 1
    }
}

# Median of microsecond counts, in milliseconds.
median_ms() {
    printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {
        if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "%.3f", m / 1e3
    }'
}

# Time both tools on image $1 named $2; print the figures and return
# non-zero when prl misses a target.  The clock is bash's EPOCHREALTIME,
# in microseconds (a fork of date(1) per reading would cost a good part
# of what is timed); both tools pay the same fork and exec from bash.
# The tools alternate, and which goes first alternates too, so that a
# disturbance or a cache effect of going second hits both alike; three
# untimed runs each first warm the page cache and the dynamic loader's.
bench_image() {
    local img=$1 name=$2 r t0 t1 t2 p q
    local -a t_prl=() t_qemu=()
    for ((r = 0; r < 3; r++)); do
        "$prl_img" check -f parallels "$img" >/dev/null
        qemu-img check -f parallels "$img" >/dev/null
    done
    for ((r = 0; r < reps; r++)); do
        if ((r % 2 == 0)); then
            t0=${EPOCHREALTIME/[.,]/}
            "$prl_img" check -f parallels "$img" >/dev/null
            t1=${EPOCHREALTIME/[.,]/}
            qemu-img check -f parallels "$img" >/dev/null
            t2=${EPOCHREALTIME/[.,]/}
            t_prl+=($((t1 - t0)))
            t_qemu+=($((t2 - t1)))
        else
            t0=${EPOCHREALTIME/[.,]/}
            qemu-img check -f parallels "$img" >/dev/null
            t1=${EPOCHREALTIME/[.,]/}
            "$prl_img" check -f parallels "$img" >/dev/null
            t2=${EPOCHREALTIME/[.,]/}
            t_qemu+=($((t1 - t0)))
            t_prl+=($((t2 - t1)))
        fi
    done
    p=$(median_ms "${t_prl[@]}")
    q=$(median_ms "${t_qemu[@]}")
    awk -v n="$name" -v p="$p" -v q="$q" -v l="$limit" -v t="$target" 'BEGIN {
        ratio = p / q
        ok_l = p < l * 1000
        ok_t = ratio <= t
        printf "check %s: prl %.2f ms, qemu %.2f ms (medians), " \
            "prl/qemu = %.2f\n", n, p, q, ratio
        printf "check %s: prl under %g s: %s; prl/qemu <= %.2f: %s\n", n, l,
            ok_l ? "ok" : "MISSED", t, ok_t ? "ok" : "MISSED"
        exit !(ok_l && ok_t)
    }'
}

status=0
for layout in scattered contiguous; do
    img=$dir/$layout.hdd
    make_image "$img" "$layout"
    echo "bench: $layout: $(du -h --apparent-size "$img" | cut -f1)" \
        "apparent, $(du -h "$img" | cut -f1) on disk"
    bench_image "$img" "$layout" || status=1
    rm -f "$img"
done
exit $status
