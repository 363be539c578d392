#!/bin/bash
# SPDX-License-Identifier: MIT
# Time `nbdinfo --map` against prl-nbd and qemu-nbd serving the same
# 1 TiB files in the same run, over Unix sockets: a raw file that is one
# hole, a raw file with 4 KiB of data every 16 MiB, Parallels images with
# 64 Ki allocated 1 MiB clusters (every 16th cluster, and the first 64 Ki
# in a row), qemu:allocation-depth (-A) and a dirty bitmap (-B) of the
# scattered image.  Prints per case the medians, prl/qemu, the target,
# the CPU time each server spent per map, and nbdinfo's own CPU time per
# map (the same work whichever server answers: with the server's share
# at zero, the ratio could not go below client/qemu, printed as "floor");
# exits non-zero when a ratio misses the target.  Not a test: timings are
# noisy on a shared machine.
#
# Usage: bench/map.sh [BUILD_DIR]   (default: build)
# REPS: timed maps per server and case (default 5); TARGET: the ratio to
# meet (default 0.50); BENCH_DIR: where the files go (default bench/tmp/;
# about 800 MiB on disk); CASES: the case names to run (default all).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
prl_nbd=$build/tools/prl-nbd/prl-nbd
prl_img=$build/tools/prl-img/prl-img
reps=${REPS:-5}
target=${TARGET:-0.50}
base=${BENCH_DIR:-$src/bench/tmp}
cases=${CASES:-raw-hole raw-scattered par-scattered par-contiguous \
par-depth par-bitmap}

for t in "$prl_nbd" "$prl_img" qemu-nbd nbdinfo /usr/bin/python3 awk; do
    command -v "$t" >/dev/null || { echo "map.sh: needs $t" >&2; exit 1; }
done

mkdir -p "$base"
dir=$(mktemp -d "$(cd "$base" && pwd)/prl-bench.XXXXXX")
pids=()
cleanup()
{
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$dir"
    rmdir "$base" 2>/dev/null || true
}
trap cleanup EXIT
avail_kb=$(df --output=avail -k "$dir" | tail -n 1)
if [ "$avail_kb" -lt $((2 << 20)) ]; then
    echo "map.sh: $dir has $((avail_kb >> 10)) MiB free, needs 2 GiB" >&2
    exit 1
fi
echo "bench: files in $dir ($(df --output=fstype "$dir" | tail -n 1))"
echo "bench: $($prl_nbd --version), $(qemu-nbd --version | head -n 1)," \
    "$(nbdinfo --version | head -n 1)"

# The files, written from the specs.  Parallels: WithouFreSpacExt, 1 MiB
# clusters, 2^20 BAT entries (1 TiB), host clusters in BAT order, each
# holding one non-zero byte (the rest sparse).
/usr/bin/python3 - "$dir" <<'PY'
import os, struct, sys
MiB = 1 << 20
d = sys.argv[1]
def par(name, stride, n_alloc=1 << 16, n_bat=1 << 20, cs=MiB):
    data_off = (64 + 4 * n_bat + cs - 1) // cs * cs
    bat = [0] * n_bat
    for i in range(n_alloc):
        bat[i * stride] = data_off // cs + i
    hdr = struct.pack('<16sIIIIIQIIIQ', b'WithouFreSpacExt', 2, 16,
                      n_bat * cs // 512 // (16 * 32), cs // 512, n_bat,
                      n_bat * cs // 512, 0x312e3276, data_off // 512, 0, 0)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(hdr)
        f.write(struct.pack('<%dI' % n_bat, *bat))
        for i in range(n_alloc):
            f.seek(data_off + i * cs)
            f.write(bytes([1 + i % 255]))
        f.truncate(data_off + n_alloc * cs)
par('scattered.hdd', 16)
par('contiguous.hdd', 1)
with open(os.path.join(d, 'hole.raw'), 'wb') as f:
    f.truncate(1 << 40)
with open(os.path.join(d, 'scattered.raw'), 'wb') as f:
    f.truncate(1 << 40)
    for i in range(1 << 16):
        f.seek(i * 16 * MiB)
        f.write(b'\x01' * 4096)
PY
# A bitmap of the scattered image (64 KiB granules: 16 Mi bits), dirty
# where a copy of the image's clusters 1..3 of every 256th would be.
cp --sparse=always "$dir/scattered.hdd" "$dir/bitmap.hdd"
uuid=$("$prl_img" bitmap --add "$dir/bitmap.hdd" auto)
/usr/bin/python3 - "$dir/bitmap.hdd" "$build" <<'PY'
import subprocess, sys
img, build = sys.argv[1:]
cmds = ''.join('write -P 9 %d 4096\n' % ((i * 256 + 1) << 20)
               for i in range(4096))
subprocess.run([build + '/tests/helpers/prl-io', '-f', 'parallels', '-w',
                img], input=cmds.encode(), check=True,
               stdout=subprocess.DEVNULL)
PY
sync -f "$dir/hole.raw"

clk_tck=$(getconf CLK_TCK)
cpu_ticks()
{
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# start NAME ARGS...: run ARGS in the background; sets started_pid once
# socket NAME exists.
start()
{
    local sock=$dir/$1.sock
    shift
    rm -f "$sock"
    "$@" -k "$sock" 2>"$dir/server.log" &
    started_pid=$!
    pids+=("$started_pid")
    for _ in $(seq 100); do
        [ -S "$sock" ] && return 0
        sleep 0.05
    done
    cat "$dir/server.log" >&2
    echo "map.sh: $1 did not start" >&2
    exit 1
}

median()
{
    printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {
        if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "%.4f", m / 1e6
    }'
}

missed=0
# run CASE FORMAT FILE CONTEXT [SERVER-ARGS...]
run()
{
    local name=$1 fmt=$2 file=$3 ctx=$4 ppid qpid r t0 t1 t2 c_p c_q
    shift 4
    case " $cases " in *" $name "*) ;; *) return 0 ;; esac
    start prl "$prl_nbd" -r -t -e 0 -f "$fmt" "$@" "$file"
    ppid=$started_pid
    start qemu qemu-nbd -r -t -e 2 -f "$fmt" "$@" "$file"
    qpid=$started_pid
    local up="nbd+unix:///?socket=$dir/prl.sock"
    local uq="nbd+unix:///?socket=$dir/qemu.sock"
    # Both must report the same map, or the timing compares different work.
    nbdinfo --map="$ctx" "$up" >"$dir/map.prl"
    nbdinfo --map="$ctx" "$uq" >"$dir/map.qemu"
    if ! cmp -s "$dir/map.prl" "$dir/map.qemu"; then
        echo "map.sh: $name: the servers' maps differ" >&2
        diff "$dir/map.prl" "$dir/map.qemu" | head >&2
        exit 1
    fi
    local -a t_prl=() t_qemu=() t_cli=()
    local TIMEFORMAT='%3U %3S'
    c_p=$(cpu_ticks "$ppid")
    c_q=$(cpu_ticks "$qpid")
    # Alternate, so that a disturbance hits both.
    for ((r = 0; r < reps; r++)); do
        t0=${EPOCHREALTIME/[.,]/}
        { time nbdinfo --map="$ctx" "$up" >/dev/null; } 2>"$dir/cpu"
        t1=${EPOCHREALTIME/[.,]/}
        { time nbdinfo --map="$ctx" "$uq" >/dev/null; } 2>>"$dir/cpu"
        t2=${EPOCHREALTIME/[.,]/}
        t_prl+=($((t1 - t0)))
        t_qemu+=($((t2 - t1)))
        t_cli+=($(awk '{ s += ($1 + $2) * 1e6 } END { printf "%d", s / NR }' \
            "$dir/cpu"))
    done
    c_p=$(($(cpu_ticks "$ppid") - c_p))
    c_q=$(($(cpu_ticks "$qpid") - c_q))
    kill "$ppid" "$qpid"
    wait "$ppid" "$qpid" 2>/dev/null || true
    pids=()
    awk -v n="$name" -v c="$ctx" -v e="$(wc -l <"$dir/map.prl")" \
        -v p="$(median "${t_prl[@]}")" -v q="$(median "${t_qemu[@]}")" \
        -v k="$(median "${t_cli[@]}")" -v t="$target" -v cp="$c_p" \
        -v cq="$c_q" -v hz="$clk_tck" -v reps="$reps" 'BEGIN {
        ratio = p / q
        printf "map: %-14s %-22s %6d extents  prl %.4f s  qemu %.4f s  " \
            "prl/qemu %.2f (target <= %.2f): %s\n", n, c, e, p, q, ratio, t,
            ratio <= t ? "ok" : "MISSED"
        printf "map: %-14s CPU per map: prl-nbd %.1f ms, qemu-nbd %.1f ms, " \
            "nbdinfo %.1f ms (floor %.2f)\n", n, cp * 1000 / hz / reps,
            cq * 1000 / hz / reps, k * 1000, k / q
        exit ratio > t
    }' || missed=$((missed + 1))
}

run raw-hole raw "$dir/hole.raw" base:allocation
run raw-scattered raw "$dir/scattered.raw" base:allocation
run par-scattered parallels "$dir/scattered.hdd" base:allocation
run par-contiguous parallels "$dir/contiguous.hdd" base:allocation
run par-depth parallels "$dir/scattered.hdd" qemu:allocation-depth -A
run par-bitmap parallels "$dir/bitmap.hdd" "qemu:dirty-bitmap:$uuid" \
    -B "$uuid"

echo "map: $missed case(s) missed the target"
[ "$missed" -eq 0 ]
