# SPDX-License-Identifier: MIT
# Helpers for the shell tests, sourced first thing:
#     . "$(dirname "$0")/../functions.sh"
# It sets -e -u -o pipefail, finds the build (PRL_BUILD, else ../build
# next to the sources), makes a private temp dir and cd's into it, and on
# exit kills exactly the processes started with start_bg and removes the
# temp dir.  Exit status 77 means "skipped".

set -e -u -o pipefail

PRL_SRC=${PRL_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PRL_BUILD=${PRL_BUILD:-$PRL_SRC/build}
PRL_BUILD=$(cd "$PRL_BUILD" && pwd)
export PRL_SRC PRL_BUILD
export PYTHONPATH="$PRL_SRC/tests/lib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

PRL_IMG_BIN="$PRL_BUILD/tools/prl-img/prl-img"
PRL_IO_BIN="$PRL_BUILD/tests/helpers/prl-io"
PYTHON=/usr/bin/python3

# PIDs started by start_bg, killed (only these) on exit.
_prl_pids=()
_prl_cleanups=()

_prl_exit()
{
    local rc=$? pid i
    set +e
    for ((i = ${#_prl_cleanups[@]} - 1; i >= 0; i--)); do
        eval "${_prl_cleanups[$i]}"
    done
    for pid in "${_prl_pids[@]}"; do
        stop_pid "$pid"
    done
    cd /
    rm -rf "$PRL_TMP"
    exit $rc
}

PRL_TMP=$(mktemp -d "${TMPDIR:-/tmp}/prl-test.XXXXXX")
trap _prl_exit EXIT
cd "$PRL_TMP"

# on_exit CMD: run CMD (a string for eval) at exit, last registered first.
on_exit()
{
    _prl_cleanups+=("$1")
}

# skip REASON: end the test as skipped.
skip()
{
    echo "skip: $*" >&2
    exit 77
}

# fail MESSAGE: end the test as failed.
fail()
{
    echo "FAIL: $*" >&2
    exit 1
}

# requires CMD...: skip unless every command exists.
requires()
{
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip "$c is not installed"
    done
}

# requires_python_module MOD: skip unless /usr/bin/python3 can import it.
requires_python_module()
{
    "$PYTHON" -c "import $1" 2>/dev/null ||
        skip "python module $1 is not installed"
}

# prl_img ARGS / prl_io ARGS: the tools under test from the build.
prl_img()
{
    [ -x "$PRL_IMG_BIN" ] || fail "prl-img is not built: $PRL_IMG_BIN"
    "$PRL_IMG_BIN" "$@"
}

prl_io()
{
    [ -x "$PRL_IO_BIN" ] || fail "prl-io is not built: $PRL_IO_BIN"
    "$PRL_IO_BIN" "$@"
}

# no_sanitizer_report FILE: fail when FILE holds an ASan/UBSan/LSan report,
# which are crashes even when the exit status looks ordinary.
no_sanitizer_report()
{
    if grep -aE 'ERROR: (Address|Leak|Memory|Thread)Sanitizer|runtime error:' \
        "$1" >/dev/null; then
        cat "$1" >&2
        fail "sanitizer report in $1"
    fi
}

# expect_status WANT CMD...: run CMD, which must exit with WANT; its
# stdout and stderr are left in $PRL_TMP/out and $PRL_TMP/err (and
# echoed for the log).  A status of 128 or more (a signal) always fails.
expect_status()
{
    local want=$1 rc=0
    shift
    "$@" >"$PRL_TMP/out" 2>"$PRL_TMP/err" || rc=$?
    cat "$PRL_TMP/out"
    cat "$PRL_TMP/err" >&2
    no_sanitizer_report "$PRL_TMP/err"
    [ $rc -lt 128 ] || fail "'$*' died of signal $((rc - 128))"
    [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, want $want"
}

# expect_fail CMD...: CMD must fail (status 1..127) with a message.
expect_fail()
{
    local rc=0
    "$@" >"$PRL_TMP/out" 2>"$PRL_TMP/err" || rc=$?
    cat "$PRL_TMP/out"
    cat "$PRL_TMP/err" >&2
    no_sanitizer_report "$PRL_TMP/err"
    [ $rc -ne 0 ] || fail "'$*' succeeded, want a failure"
    [ $rc -lt 128 ] || fail "'$*' died of signal $((rc - 128))"
    [ -s "$PRL_TMP/err" ] || fail "'$*' failed without a message"
}

# err_contains TEXT...: the last expect_* stderr contains every TEXT.
err_contains()
{
    local t
    for t in "$@"; do
        grep -aqF -- "$t" "$PRL_TMP/err" ||
            fail "stderr lacks '$t': $(cat "$PRL_TMP/err")"
    done
}

# out_contains TEXT...: likewise for stdout.
out_contains()
{
    local t
    for t in "$@"; do
        grep -aqF -- "$t" "$PRL_TMP/out" ||
            fail "stdout lacks '$t': $(cat "$PRL_TMP/out")"
    done
}

# same_file A B: byte-for-byte equal.
same_file()
{
    cmp "$1" "$2" || fail "$1 and $2 differ"
}

# file_size FILE: size in bytes.
file_size()
{
    stat -c %s "$1"
}

# le32 FILE OFFSET: the little-endian 32-bit value at OFFSET, in decimal.
le32()
{
    od -A n -t u4 -j "$2" -N 4 --endian=little "$1" | tr -d ' '
}

# json_field KEY...: read JSON on stdin and print the value found by
# following KEYs (object keys, or list indexes) from the top.
json_field()
{
    "$PYTHON" -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(json.dumps(v) if isinstance(v, (dict, list, bool)) else v)' "$@"
}

# free_port: a TCP port that was free on 127.0.0.1 a moment ago.
free_port()
{
    "$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# start_bg VAR CMD...: start CMD in the background, store its PID in VAR
# and remember it so that exit kills it (that PID only).
start_bg()
{
    # Locals with names no caller uses: `printf -v` would set a local of
    # the same name as VAR instead of the caller's variable.
    local _start_bg_var=$1
    shift
    "$@" &
    _prl_pids+=("$!")
    printf -v "$_start_bg_var" '%s' "$!"
}

# stop_pid PID: TERM, wait up to 5 s, then KILL; only this PID.
stop_pid()
{
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait_for TIMEOUT_S DESCRIPTION CMD...: poll CMD every 0.1 s until it
# succeeds; fail after TIMEOUT_S seconds.
wait_for()
{
    local t=$1 what=$2 i
    shift 2
    for ((i = 0; i < t * 10; i++)); do
        "$@" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "timed out after ${t}s waiting for $what"
}

_port_open()
{
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_for_port PORT [TIMEOUT_S]: until something accepts on 127.0.0.1.
wait_for_port()
{
    wait_for "${2:-10}" "port $1" _port_open "$1"
}

# wait_for_socket PATH [TIMEOUT_S]: until PATH is a unix socket.
wait_for_socket()
{
    wait_for "${2:-10}" "socket $1" test -S "$1"
}

# wait_for_file PATH [TIMEOUT_S]: until PATH exists and is not empty.
wait_for_file()
{
    wait_for "${2:-10}" "file $1" test -s "$1"
}
