#!/bin/bash
# SPDX-License-Identifier: MIT
# Time prl-img convert against qemu-img convert in the same run, both
# directions (raw -> Parallels, Parallels -> raw), on a 2 GiB disk half
# filled with random data; print medians and the prl/qemu ratios.
#
# The target is on wall time: how long the command runs.  Both tools run
# with their default cache mode for the target (unsafe: no flush, the
# kernel writes the data back later), so both leave the same work to the
# kernel.  The time until the output is on disk (command, then sync) is
# printed too; the disk's write speed bounds it for both tools alike.
#
# Usage: bench/convert.sh [BUILD_DIR]   (default: build)
# BENCH_DIR: where the ~5 GiB of temporary files go (default:
# bench/tmp/); it must be on a real disk, not tmpfs.
# REPS: rounds, each running both tools (default 5).  TARGET: the ratio
# to meet (default 0.70).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
prl_img=$build/tools/prl-img/prl-img
reps=${REPS:-5}
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

# run_once OUTPUT CMD...: remove OUTPUT, write back dirty pages, run CMD
# with a warm page cache; print the seconds CMD took and the seconds
# until OUTPUT was on disk (CMD, then `sync OUTPUT`).
run_once() {
    local out=$1
    shift
    rm -f "$out"
    sync
    local t0 t1 t2
    t0=$(now_ns)
    "$@" >/dev/null
    t1=$(now_ns)
    sync "$out"
    t2=$(now_ns)
    awk -v a="$t0" -v b="$t1" -v c="$t2" \
        'BEGIN { printf "%.3f %.3f\n", (b - a) / 1e9, (c - a) / 1e9 }'
}

median() {
    sort -n | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2];
              else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# pair LABEL PRL_OUT QEMU_OUT -- PRL_CMD... -- QEMU_CMD...: one untimed
# run of each (binaries, libraries and inputs in the cache), then $reps
# rounds that alternate the two, so drift in the machine's load hits
# both alike.  Prints the medians and the ratios; returns 1 when the
# wall-time ratio misses the target.
pair() {
    local label=$1 pout=$2 qout=$3
    shift 4
    local -a pcmd=() qcmd=()
    while [ "$1" != -- ]; do
        pcmd+=("$1")
        shift
    done
    shift
    qcmd=("$@")
    local -a pw=() pd=() qw=() qd=()
    run_once "$pout" "${pcmd[@]}" >/dev/null
    run_once "$qout" "${qcmd[@]}" >/dev/null
    for ((r = 0; r < reps; r++)); do
        local a b
        read -r a b < <(run_once "$pout" "${pcmd[@]}")
        pw+=("$a")
        pd+=("$b")
        read -r a b < <(run_once "$qout" "${qcmd[@]}")
        qw+=("$a")
        qd+=("$b")
    done
    local mpw mpd mqw mqd bpw bqw
    bpw=$(printf '%s\n' "${pw[@]}" | sort -n | head -n 1)
    bqw=$(printf '%s\n' "${qw[@]}" | sort -n | head -n 1)
    mpw=$(printf '%s\n' "${pw[@]}" | median)
    mpd=$(printf '%s\n' "${pd[@]}" | median)
    mqw=$(printf '%s\n' "${qw[@]}" | median)
    mqd=$(printf '%s\n' "${qd[@]}" | median)
    echo "  prl  wall: ${pw[*]}"
    echo "  qemu wall: ${qw[*]}"
    awk -v l="$label" -v p="$mpw" -v q="$mqw" -v pd="$mpd" -v qd="$mqd" \
        -v bp="$bpw" -v bq="$bqw" -v t="$target" 'BEGIN {
        r = p / q
        verdict = (r <= t) ? "meets" : "MISSES"
        printf "%s: wall time prl/qemu = %.2f (prl %.3f s, qemu %.3f s) " \
            "-> %s the target <= %s\n", l, r, p, q, verdict, t
        printf "%s: best of each, prl/qemu = %.2f (prl %.3f s, qemu %.3f s; " \
            "what each does when nothing else runs)\n", l, bp / bq, bp, bq
        printf "%s: until on disk prl/qemu = %.2f (prl %.3f s, qemu " \
            "%.3f s; the disk bounds both)\n", l, pd / qd, pd, qd
        exit (r <= t) ? 0 : 1
    }'
}

cat "$raw" >/dev/null
st=0

echo "bench: raw -> parallels, $reps rounds"
pair "raw -> parallels" "$dir/prl.hdd" "$dir/qemu.hdd" -- \
    "$prl_img" convert -f raw -O parallels "$raw" "$dir/prl.hdd" -- \
    qemu-img convert -f raw -O parallels "$raw" "$dir/qemu.hdd" || st=1

# Both tools read the same Parallels image for the other direction.
cat "$dir/prl.hdd" >/dev/null
echo "bench: parallels -> raw, $reps rounds"
pair "parallels -> raw" "$dir/prl.raw" "$dir/qemu.raw" -- \
    "$prl_img" convert -f parallels -O raw "$dir/prl.hdd" "$dir/prl.raw" -- \
    qemu-img convert -f parallels -O raw "$dir/prl.hdd" "$dir/qemu.raw" || st=1

echo "bench: verifying outputs"
qemu-img compare -q -f raw -F parallels "$raw" "$dir/prl.hdd"
qemu-img compare -q -f raw -F parallels "$raw" "$dir/qemu.hdd"
cmp "$raw" "$dir/prl.raw"
cmp "$raw" "$dir/qemu.raw"
echo "bench: all outputs hold the source's guest data"
exit $st
