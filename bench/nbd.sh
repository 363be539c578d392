#!/bin/bash
# SPDX-License-Identifier: MIT
# Benchmark prl-nbd against qemu-nbd and `nbdkit file` with fio's nbd
# engine: the same raw file (and prl-nbd vs qemu-nbd on the same
# Parallels image), over a Unix socket and TCP loopback; sequential 1 MiB
# reads and writes at iodepth 16, 4 KiB random reads and writes at
# iodepth 32 with 1 and 4 connections.  Prints IOPS and the ratios
# measured in this run.  Not a test: it asserts nothing.
#
# Usage: bench/nbd.sh [BUILD_DIR]   (RUNTIME=seconds per job, default 5;
#        SIZE=image MiB, default 1024; TRANSPORTS="unix tcp")
set -e -u -o pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
prl_nbd=$build/tools/prl-nbd/prl-nbd
runtime=${RUNTIME:-5}
size=${SIZE:-1024}
transports=${TRANSPORTS:-unix tcp}

for c in fio qemu-nbd nbdkit qemu-img jq; do
    command -v "$c" >/dev/null || { echo "bench: $c is missing" >&2; exit 1; }
done
[ -x "$prl_nbd" ] || { echo "bench: build prl-nbd first" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/prl-bench.XXXXXX")
pid=
cleanup()
{
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

raw=$tmp/disk.raw
hdd=$tmp/disk.hdd
# Data everywhere, so reads are served from the page cache, not holes.
# Both images are written the same way (by qemu-img): how a file was
# written shapes its page cache (ext4 large folios make later 4 KiB
# writes several times dearer in the kernel), and the comparison must
# not hinge on that.
head -c "${size}M" /dev/urandom >"$tmp/src"
qemu-img convert -f raw -O raw "$tmp/src" "$raw"
qemu-img convert -f raw -O parallels "$tmp/src" "$hdd"
rm -f "$tmp/src"

free_port()
{
    /usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start SERVER FORMAT FILE TRANSPORT: sets pid and uri.
start()
{
    local server=$1 fmt=$2 file=$3 tr=$4 sock=$tmp/s.sock port addr
    rm -f "$sock"
    if [ "$tr" = unix ]; then
        uri="nbd+unix:///?socket=$sock"
    else
        port=$(free_port)
        uri="nbd://127.0.0.1:$port/"
    fi
    case $server in
    prl-nbd)
        if [ "$tr" = unix ]; then addr=(-k "$sock"); else
            addr=(-b 127.0.0.1 -p "$port"); fi
        "$prl_nbd" -t -e 0 -f "$fmt" "${addr[@]}" "$file" 2>/dev/null &
        ;;
    qemu-nbd)
        if [ "$tr" = unix ]; then addr=(-k "$sock"); else
            addr=(-b 127.0.0.1 -p "$port"); fi
        qemu-nbd -t -e 8 -f "$fmt" "${addr[@]}" "$file" 2>/dev/null &
        ;;
    nbdkit)
        if [ "$tr" = unix ]; then addr=(-U "$sock"); else
            addr=(-i 127.0.0.1 -p "$port"); fi
        nbdkit -f "${addr[@]}" file "$file" 2>/dev/null &
        ;;
    esac
    pid=$!
    for _ in $(seq 100); do
        if [ "$tr" = unix ]; then
            [ -S "$sock" ] && return 0
        else
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        fi
        sleep 0.1
    done
    echo "bench: $server did not start" >&2
    exit 1
}

stop()
{
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

# CPU time (user + system, clock ticks) the server has used so far.
cpu_ticks()
{
    awk '{ print $14 + $15 }' "/proc/$pid/stat"
}

# job NAME RW BS IODEPTH JOBS: "IOPS CPU-us-per-request" of one fio run
# against $uri.  The second figure (server CPU per request) is what
# separates servers when the client is the bottleneck.
job()
{
    local rw=$2 bs=$3 qd=$4 nj=$5 kind t0 t1 ios hz
    # Dirty pages of the previous job must not throttle this one.
    sync
    t0=$(cpu_ticks)
    fio --name="$1" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --numjobs="$nj" --size="$((size / nj))M" \
        --offset_increment="$((size / nj))M" --time_based \
        --runtime="$runtime" --group_reporting --output-format=json \
        --output="$tmp/fio.json" \
        >/dev/null 2>&1
    t1=$(cpu_ticks)
    case $rw in *read) kind=read ;; *) kind=write ;; esac
    ios=$(jq ".jobs[0].$kind.total_ios" "$tmp/fio.json")
    hz=$(getconf CLK_TCK)
    printf '%s %s\n' "$(jq ".jobs[0].$kind.iops | floor" "$tmp/fio.json")" \
        "$(awk -v t=$((t1 - t0)) -v n="$ios" -v hz="$hz" \
            'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')"
}

jobs=(
    "seq-read read 1M 16 1"
    "seq-write write 1M 16 1"
    "rand-read-1c randread 4k 32 1"
    "rand-read-4c randread 4k 32 4"
    "rand-write-1c randwrite 4k 32 1"
    "rand-write-4c randwrite 4k 32 4"
)

declare -A iops cpu
run_server()
{
    local server=$1 fmt=$2 file=$3 tr=$4 j name res
    start "$server" "$fmt" "$file" "$tr"
    for j in "${jobs[@]}"; do
        set -- $j
        name=$1
        res=$(job "$@")
        iops[$server/$fmt/$tr/$name]=${res% *}
        cpu[$server/$fmt/$tr/$name]=${res#* }
    done
    stop
}

ratio()
{
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b;
                                      else printf "-" }'
}

# One pass of 4 KiB writes over every block of each image, so that the
# page cache holds both in the same small pieces whichever server comes
# first (see above).
warm_up()
{
    start prl-nbd "$1" "$2" unix
    fio --name=warm --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
        --iodepth=32 --size="${size}M" --output=/dev/null >/dev/null 2>&1
    stop
}
warm_up raw "$raw"
warm_up parallels "$hdd"

echo "fio nbd engine, ${runtime}s per job, ${size} MiB image"
echo "IOPS, then server CPU per request (us; lower is better)"
for tr in $transports; do
    run_server prl-nbd raw "$raw" "$tr"
    run_server nbdkit raw "$raw" "$tr"
    run_server qemu-nbd raw "$raw" "$tr"
    run_server prl-nbd parallels "$hdd" "$tr"
    run_server qemu-nbd parallels "$hdd" "$tr"
    echo
    printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s %8s %8s\n' "$tr" job \
        prl nbdkit qemu-nbd xnbdkit xqemu prl-hdd qemu-hdd xqemu hdd/raw
    for j in "${jobs[@]}"; do
        set -- $j
        n=$1
        p=${iops[prl-nbd/raw/$tr/$n]}
        k=${iops[nbdkit/raw/$tr/$n]}
        q=${iops[qemu-nbd/raw/$tr/$n]}
        ph=${iops[prl-nbd/parallels/$tr/$n]}
        qh=${iops[qemu-nbd/parallels/$tr/$n]}
        printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s %8s %8s\n' "$tr" \
            "$n" "$p" "$k" "$q" "$(ratio "$p" "$k")" "$(ratio "$p" "$q")" \
            "$ph" "$qh" "$(ratio "$ph" "$qh")" "$(ratio "$ph" "$p")"
    done
    printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s\n' "$tr" "cpu us/req" \
        prl nbdkit qemu-nbd knbd/prl qemu/prl prl-hdd qemu-hdd
    for j in "${jobs[@]}"; do
        set -- $j
        n=$1
        p=${cpu[prl-nbd/raw/$tr/$n]}
        k=${cpu[nbdkit/raw/$tr/$n]}
        q=${cpu[qemu-nbd/raw/$tr/$n]}
        printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s\n' "$tr" "$n" \
            "$p" "$k" "$q" "$(ratio "$k" "$p")" "$(ratio "$q" "$p")" \
            "${cpu[prl-nbd/parallels/$tr/$n]}" \
            "${cpu[qemu-nbd/parallels/$tr/$n]}"
    done
done
