# SPDX-License-Identifier: MIT
# Shell helpers for the NBD server tests, sourced after tests/functions.sh:
#     . "$(dirname "$0")/../functions.sh"
#     . "$(dirname "$0")/lib/nbd-functions.sh"

PRL_NBD_BIN="$PRL_BUILD/tools/prl-nbd/prl-nbd"
[ -x "$PRL_NBD_BIN" ] || fail "prl-nbd is not built: $PRL_NBD_BIN"

# start_nbd VAR LOG ARGS...: start prl-nbd ARGS in the background with its
# stderr in LOG, PID in VAR; waits for the first -k socket or -p port.
start_nbd()
{
    local _v=$1 log=$2 a prev= sock= port=
    shift 2
    for a in "$@"; do
        case $prev in
        -k | --socket | --unix) sock=${sock:-$a} ;;
        -p | --port) port=$a ;;
        esac
        prev=$a
    done
    start_bg "$_v" "$PRL_NBD_BIN" "$@" 2>"$log"
    local i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "${!_v}" 2>/dev/null; then
            cat "$log" >&2
            fail "prl-nbd $* exited at start"
        fi
        if [ -n "$sock" ]; then
            [ -S "$sock" ] && return 0
        elif [ -n "$port" ]; then
            _port_open "$port" && return 0
        else
            return 0
        fi
        sleep 0.1
    done
    cat "$log" >&2
    fail "prl-nbd $* is not listening after 10 s"
}

# stop_nbd PID LOG: SIGTERM, which must end prl-nbd with status 0 within
# 30 s and leave no sanitizer report in LOG.
stop_nbd()
{
    local pid=$1 log=$2 i rc=0
    kill -TERM "$pid" 2>/dev/null || fail "prl-nbd $pid is not running"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fail "prl-nbd did not stop on SIGTERM"
    wait "$pid" || rc=$?
    no_sanitizer_report "$log"
    [ "$rc" -eq 0 ] || { cat "$log" >&2; fail "prl-nbd exited $rc"; }
}

# nbd_uri SOCK [EXPORT]: the URI of a Unix-socket export.
nbd_uri()
{
    echo "nbd+unix:///${2:-}?socket=$1"
}

# pattern_file PATH SIZE_MIB: a file of SIZE_MIB MiB, non-zero data with
# holes between 1 MiB pieces.
pattern_file()
{
    local p=$1 n=$2 i
    truncate -s "${n}M" "$p"
    for ((i = 0; i < n; i += 3)); do
        head -c 1M /dev/urandom | dd of="$p" bs=1M seek="$i" conv=notrunc \
            status=none
    done
}
