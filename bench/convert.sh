#!/bin/bash
# SPDX-License-Identifier: MIT
# Time prl-img convert against qemu-img convert in the same run, both
# directions (raw -> Parallels, Parallels -> raw), on a 2 GiB disk half
# filled with random data; print medians and the prl/qemu ratios.
#
# Usage: bench/convert.sh [BUILD_DIR]   (default: build)
# BENCH_DIR: where the ~5 GiB of temporary files go (default:
# bench/tmp/); it must be on a real disk, not tmpfs.
# REPS: repetitions per command (default 3).  TARGET: the ratio to meet
# (default 0.70).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
prl_img=$build/tools/prl-img/prl-img
reps=${REPS:-3}
target=${TARGET:-0.70}
base=${BENCH_DIR:-$src/bench/tmp}

for t in "$prl_img" qemu-img cmp awk; do
    command -v "$t" >/dev/null || { echo "convert.sh: needs $t" >&2; exit 1; }
done

mkdir -p "$base"
dir=$(mktemp -d "$(cd "$base" && pwd)/prl-bench.XXXXXX")
trap 'rm -rf "$dir"; rmdir "$base" 2>/dev/null || true' EXIT

# The page cache of a RAM file system would make this a memory benchmark.
fstype=$(df --output=fstype "$dir" | tail -n 1)
avail_kb=$(df --output=avail -k "$dir" | tail -n 1)
case $fstype in
tmpfs | ramfs)
    echo "convert.sh: $dir is on $fstype; set BENCH_DIR to a disk" >&2
    exit 1
    ;;
esac
if [ "$avail_kb" -lt $((6 << 20)) ]; then
    echo "convert.sh: $dir has $((avail_kb >> 20)) GiB free, needs 6" >&2
    exit 1
fi
echo "bench: files in $dir ($fstype, $((avail_kb >> 20)) GiB free)"
echo "bench: $($prl_img --version), $(qemu-img --version | head -n 1)"

# The source: 2 GiB, sparse, random data in every other 64 MiB region
# (regions 0, 2, 4, ...), so 1 GiB of data and 1 GiB of holes.
raw=$dir/src.raw
truncate -s 2G "$raw"
for ((i = 0; i < 32; i += 2)); do
    head -c 64M /dev/urandom |
        dd of="$raw" bs=1M seek=$((i * 64)) conv=notrunc status=none
done
echo "bench: source $(du -h --apparent-size "$raw" | cut -f1) apparent," \
    "$(du -h "$raw" | cut -f1) allocated"

# now_ns: monotonic enough for runs of seconds.
now_ns() {
    date +%s%N
}

# time_median NAME OUTPUT CMD...: run CMD once untimed, then $reps times
# with OUTPUT removed first and the page cache warm (dirty pages written
# back before the clock starts); print the median seconds.  The clock
# stops when OUTPUT is on disk (CMD, then fsync of OUTPUT by `sync FILE`):
# qemu-img convert does not flush its output by default (cache mode
# unsafe) while prl-img does, so timing only CMD would compare page-cache
# writes against disk writes.
time_median() {
    local name=$1 out=$2
    shift 2
    local -a times=()
    # One untimed run first: binaries, libraries and inputs in the cache.
    rm -f "$out"
    "$@" >/dev/null
    for ((r = 0; r < reps; r++)); do
        rm -f "$out"
        sync
        local t0 t1
        t0=$(now_ns)
        "$@" >/dev/null
        sync "$out"
        t1=$(now_ns)
        times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')")
    done
    local med
    med=$(printf '%s\n' "${times[@]}" | sort -n | awk '
        { v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2];
              else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    printf '  %-34s %s s (runs: %s)\n' "$name" "$med" "${times[*]}" >&2
    echo "$med"
}

# ratio PRL QEMU LABEL: print the ratio and whether it meets the target.
ratio() {
    awk -v p="$1" -v q="$2" -v t="$target" -v l="$3" 'BEGIN {
        r = p / q
        verdict = "meets the target <= " t
        if (r > t) {
            verdict = "MISSES the target <= " t
        }
        printf "%s: prl/qemu = %.2f (prl %.3f s, qemu %.3f s) -> %s\n",
            l, r, p, q, verdict
        exit (r <= t) ? 0 : 1
    }'
}

cat "$raw" >/dev/null

echo "bench: raw -> parallels, $reps runs each"
p1=$(time_median "prl-img convert -f raw -O parallels" "$dir/prl.hdd" \
    "$prl_img" convert -f raw -O parallels "$raw" "$dir/prl.hdd")
q1=$(time_median "qemu-img convert -f raw -O parallels" "$dir/qemu.hdd" \
    qemu-img convert -f raw -O parallels "$raw" "$dir/qemu.hdd")

# Both tools read the same Parallels image for the other direction.
cat "$dir/prl.hdd" >/dev/null
echo "bench: parallels -> raw, $reps runs each"
p2=$(time_median "prl-img convert -f parallels -O raw" "$dir/prl.raw" \
    "$prl_img" convert -f parallels -O raw "$dir/prl.hdd" "$dir/prl.raw")
q2=$(time_median "qemu-img convert -f parallels -O raw" "$dir/qemu.raw" \
    qemu-img convert -f parallels -O raw "$dir/prl.hdd" "$dir/qemu.raw")

echo "bench: verifying outputs"
qemu-img compare -q -f raw -F parallels "$raw" "$dir/prl.hdd"
qemu-img compare -q -f raw -F parallels "$raw" "$dir/qemu.hdd"
cmp "$raw" "$dir/prl.raw"
cmp "$raw" "$dir/qemu.raw"
echo "bench: all outputs hold the source's guest data"

echo
st=0
ratio "$p1" "$q1" "raw -> parallels" || st=1
ratio "$p2" "$q2" "parallels -> raw" || st=1
exit $st
