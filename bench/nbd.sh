#!/bin/bash
# SPDX-License-Identifier: MIT
# Benchmark prl-nbd against qemu-nbd and `nbdkit file` with fio's nbd
# engine: the same raw file (and prl-nbd vs qemu-nbd on the same
# Parallels image), over a Unix socket and TCP loopback; sequential 1 MiB
# reads and writes at iodepth 16, 4 KiB random reads and writes at
# iodepth 32 with 1 and 4 connections.  Each job runs REPS times, in
# rounds that run it on every server in turn (the first one rotating);
# prints the median figures, the median of each round's ratios, how far
# the repeats spread, and one verdict line per target.  Not a test: it asserts
# nothing and exits 0 whatever the figures.
#
# Usage: bench/nbd.sh [BUILD_DIR]   (RUNTIME=seconds per job, default 5;
#        REPS=rounds, default 3; SIZE=image MiB, default 1024;
#        TRANSPORTS="unix tcp"; JOBS="seq-read rand-write-4c ...", a
#        subset of the job names below; PRL_NBD_ARGS: more prl-nbd
#        options, e.g. --poll-max-ns=0)
set -e -u -o pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
prl_nbd=$build/tools/prl-nbd/prl-nbd
runtime=${RUNTIME:-5}
reps=${REPS:-3}
size=${SIZE:-1024}
transports=${TRANSPORTS:-unix tcp}

for c in fio qemu-nbd nbdkit qemu-img jq /usr/bin/python3; do
    command -v "$c" >/dev/null || { echo "bench: $c is missing" >&2; exit 1; }
done
[ -x "$prl_nbd" ] || { echo "bench: build prl-nbd first" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/prl-bench.XXXXXX")
pid=
pid2=
cleanup()
{
    local p
    for p in $pid $pid2; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

raw=$tmp/disk.raw
hdd=$tmp/disk.hdd
# Data everywhere, so reads are served from the page cache, not holes.
head -c "${size}M" /dev/urandom >"$tmp/src"
qemu-img convert -f raw -O raw "$tmp/src" "$raw"
qemu-img convert -f raw -O parallels "$tmp/src" "$hdd"
rm -f "$tmp/src"

free_port()
{
    /usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start SERVER FORMAT FILE TRANSPORT [SOCKET-NAME]: sets pid and uri.
start()
{
    local server=$1 fmt=$2 file=$3 tr=$4 sock=$tmp/${5:-s}.sock port addr
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
        # shellcheck disable=SC2086 # PRL_NBD_ARGS: words on purpose
        "$prl_nbd" -t -e 0 -f "$fmt" ${PRL_NBD_ARGS:-} "${addr[@]}" "$file" \
            2>/dev/null &
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

# job NAME RW BS IODEPTH JOBS: "IOPS CPU-us-per-request FIO-CPU-%" of one
# fio run against $uri.  The second figure (server CPU per request) is
# what separates servers when the client is the bottleneck; the third
# (fio's user + system time in percent of one CPU, the mean of its
# threads) shows when it is: near 100, fio itself, not the server, sets
# the pace, and no server can go faster.
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
    printf '%s %s %s\n' "$(jq ".jobs[0].$kind.iops | floor" "$tmp/fio.json")" \
        "$(awk -v t=$((t1 - t0)) -v n="$ios" -v hz="$hz" \
            'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')" \
        "$(jq '.jobs[0].usr_cpu + .jobs[0].sys_cpu | floor' "$tmp/fio.json")"
}

all_jobs=(
    "seq-read read 1M 16 1"
    "seq-write write 1M 16 1"
    "rand-read-1c randread 4k 32 1"
    "rand-read-4c randread 4k 32 4"
    "rand-write-1c randwrite 4k 32 1"
    "rand-write-4c randwrite 4k 32 4"
)
jobs=()
for j in "${all_jobs[@]}"; do
    if [ -z "${JOBS:-}" ] || [[ " $JOBS " == *" ${j%% *} "* ]]; then
        jobs+=("$j")
    fi
done
[ ${#jobs[@]} -gt 0 ] || { echo "bench: JOBS selects no job" >&2; exit 1; }

# Every repeat's figures, space-separated in round order, by
# server/format/transport/job.
declare -A iops cpu fcpu
# run_one SERVER FORMAT FILE TRANSPORT JOB...: one job on a fresh server.
run_one()
{
    local server=$1 fmt=$2 file=$3 tr=$4 res
    shift 4
    start "$server" "$fmt" "$file" "$tr"
    res=$(job "$@")
    stop
    set -- "$1" $res
    iops[$server/$fmt/$tr/$1]+="$2 "
    cpu[$server/$fmt/$tr/$1]+="$3 "
    fcpu[$server/$fmt/$tr/$1]+="$4 "
}

median()
{
    printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Spread of the repeats: (max - min) / median, in percent.
spread()
{
    printf '%s\n' $1 | sort -g | awk -v m="$(median "$1")" '
        NR == 1 { lo = $1 } { hi = $1 }
        END { if (m > 0) printf "%.0f", (hi - lo) * 100 / m; else print 0 }'
}

ratio()
{
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b;
                                      else printf "-" }'
}

# Median of the per-round ratios of two lists of figures: both figures
# of a round were measured within a minute of each other, so a change in
# the machine's load between rounds cancels out.
pratio()
{
    local a=($1) b=($2) i q=
    for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
        q+="$(ratio "${a[i]}" "${b[i]}") "
    done
    q=${q//-/}
    if [ -z "${q// /}" ]; then echo -; else median "$q" | xargs printf '%.2f'; fi
}

# The same page cache for both images, whatever wrote them.  ext4 caches
# a file in folios as large as the writes that filled it (qemu-img
# writes MiBs), and a 4 KiB write into a large folio costs the kernel
# time in proportion to the folio (ext4_block_write_begin walks all its
# blocks): random 4 KiB writes ran 4-15 times slower on a file written
# in large pieces, and the .hdd and the raw file did not come out the
# same.  So both files leave the page cache and come back by one pass of
# 4 KiB writes through prl-nbd: every page then sits in a 4 KiB folio,
# which the jobs keep (they only rewrite cached pages).  This is the
# state in which the servers' own costs show most.  The two passes run
# at once, so that neither file gets the physically more contiguous
# pages (a file whose pages were allocated one after another copies out
# up to a third faster, which showed as a Parallels image reading faster
# than the raw file).
evict()
{
    /usr/bin/python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fdatasync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)' "$1"
}
evict "$raw"
evict "$hdd"
start prl-nbd parallels "$hdd" unix warm
pid2=$pid
uri2=$uri
start prl-nbd raw "$raw" unix
warm=(--ioengine=nbd --rw=write --bs=4k --iodepth=32 --size="${size}M")
fio --name=raw "${warm[@]}" --uri="$uri" --name=hdd "${warm[@]}" \
    --uri="$uri2" --output=/dev/null >/dev/null 2>&1
stop
kill "$pid2"
wait "$pid2" 2>/dev/null || true
pid2=
sync

echo "fio nbd engine, ${runtime}s per job, ${size} MiB image, median of $reps"
echo "IOPS (median), ratios (median of the rounds' ratios), server CPU per"
echo "request (us, median; lower is better), fio's CPU (% of one CPU per"
echo "thread, median), spread of the repeats"
servers=(
    "prl-nbd raw raw"
    "nbdkit raw raw"
    "qemu-nbd raw raw"
    "prl-nbd parallels hdd"
    "qemu-nbd parallels hdd"
)
verdicts=()
# verdict TRANSPORT JOB WHAT FIGURE TARGET [NOTE]
verdict()
{
    local v=missed
    if awk -v a="$4" -v t="$5" 'BEGIN { exit !(a != "-" && a >= t) }'; then
        v=met
    fi
    verdicts+=("$(printf '%-6s %-5s %-14s %-22s %5s (target >= %s)%s' \
        "$v" "$1" "$2" "$3" "$4" "$5" "${6:+ $6}")")
}

# client_bound FIO-CPU-%: a note for the verdicts when fio's threads ran
# at 95% or more of a CPU with prl-nbd, so that the figure is fio's
# ceiling, not the server's.
client_bound()
{
    awk -v c="$1" 'BEGIN { if (c >= 95)
        printf "[fio at %d%% CPU: client-bound]", c }'
}
# per_server TRANSPORT TITLE FUNCTION ARRAY: a table of FUNCTION (median,
# spread) of each server's figures in ARRAY, a row per job.
per_server()
{
    local tr=$1 f=$3 j n
    local -n a=$4
    printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s\n' "$tr" "$2" \
        prl nbdkit qemu-nbd "" "" prl-hdd qemu-hdd
    for j in "${jobs[@]}"; do
        n=${j%% *}
        printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s\n' "$tr" "$n" \
            "$($f "${a[prl-nbd/raw/$tr/$n]}")" \
            "$($f "${a[nbdkit/raw/$tr/$n]}")" \
            "$($f "${a[qemu-nbd/raw/$tr/$n]}")" "" "" \
            "$($f "${a[prl-nbd/parallels/$tr/$n]}")" \
            "$($f "${a[qemu-nbd/parallels/$tr/$n]}")"
    done
}
for tr in $transports; do
    for ((r = 0; r < reps; r++)); do
        for j in "${jobs[@]}"; do
            # Job by job, all servers one after the other, the first one
            # changing from round to round: the figures a ratio compares
            # are close in time, and none is always first.
            for ((s = 0; s < ${#servers[@]}; s++)); do
                set -- ${servers[(s + r) % ${#servers[@]}]}
                if [ "$3" = raw ]; then f=$raw; else f=$hdd; fi
                run_one "$1" "$2" "$f" "$tr" $j
            done
        done
    done
    declare -A m=()
    for k in "${!iops[@]}"; do
        [[ $k == */$tr/* ]] || continue
        m[$k]=$(median "${iops[$k]}")
    done
    echo
    printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s %8s %8s\n' "$tr" job \
        prl nbdkit qemu-nbd xnbdkit xqemu prl-hdd qemu-hdd xqemu hdd/raw
    for j in "${jobs[@]}"; do
        set -- $j
        n=$1
        p=${m[prl-nbd/raw/$tr/$n]}
        k=${m[nbdkit/raw/$tr/$n]}
        q=${m[qemu-nbd/raw/$tr/$n]}
        ph=${m[prl-nbd/parallels/$tr/$n]}
        qh=${m[qemu-nbd/parallels/$tr/$n]}
        P=${iops[prl-nbd/raw/$tr/$n]}
        PH=${iops[prl-nbd/parallels/$tr/$n]}
        xk=$(pratio "$P" "${iops[nbdkit/raw/$tr/$n]}")
        xq=$(pratio "$P" "${iops[qemu-nbd/raw/$tr/$n]}")
        xqh=$(pratio "$PH" "${iops[qemu-nbd/parallels/$tr/$n]}")
        xh=$(pratio "$PH" "$P")
        printf '%-5s %-14s %9.0f %9.0f %9.0f %8s %8s | %9.0f %9.0f %8s %8s\n' \
            "$tr" "$n" "$p" "$k" "$q" "$xk" "$xq" "$ph" "$qh" "$xqh" "$xh"
        cb=$(client_bound "$(median "${fcpu[prl-nbd/raw/$tr/$n]}")")
        cbh=$(client_bound "$(median "${fcpu[prl-nbd/parallels/$tr/$n]}")")
        verdict "$tr" "$n" "prl/nbdkit" "$xk" 1.00 "$cb"
        verdict "$tr" "$n" "prl/qemu-nbd" "$xq" 2.00 "$cb"
        verdict "$tr" "$n" "prl-hdd/qemu-nbd-hdd" "$xqh" 2.00 "$cbh"
        verdict "$tr" "$n" "prl-hdd/prl-raw" "$xh" 0.90 "$cbh"
    done
    printf '%-5s %-14s %9s %9s %9s %8s %8s | %9s %9s\n' "$tr" "cpu us/req" \
        prl nbdkit qemu-nbd knbd/prl qemu/prl prl-hdd qemu-hdd
    for j in "${jobs[@]}"; do
        set -- $j
        n=$1
        p=$(median "${cpu[prl-nbd/raw/$tr/$n]}")
        k=$(median "${cpu[nbdkit/raw/$tr/$n]}")
        q=$(median "${cpu[qemu-nbd/raw/$tr/$n]}")
        printf '%-5s %-14s %9.1f %9.1f %9.1f %8s %8s | %9.1f %9.1f\n' \
            "$tr" "$n" "$p" "$k" "$q" "$(ratio "$k" "$p")" "$(ratio "$q" "$p")" \
            "$(median "${cpu[prl-nbd/parallels/$tr/$n]}")" \
            "$(median "${cpu[qemu-nbd/parallels/$tr/$n]}")"
    done
    per_server "$tr" "fio cpu %" median fcpu
    # How noisy the run was: a ratio is only as good as this.
    per_server "$tr" "spread %" spread iops
done
echo
met=0
for v in "${verdicts[@]}"; do
    echo "verdict: $v"
    [[ $v == met* ]] && met=$((met + 1))
done
echo "targets: $met of ${#verdicts[@]} met"
