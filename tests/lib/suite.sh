# SPDX-License-Identifier: MIT
# The runner behind tests/<suite>/run: runs each test as its own process
# with a time limit and a private TMPDIR, prints PASS/FAIL/SKIP lines, the
# log of each failure, and one closing "N passed, N failed, N skipped".
#
# A test passes with exit status 0 and is skipped with 77; its skip reason
# is the last line of its output that starts with "skip: ".  Anything else
# fails, including a time-out (PRL_TEST_TIMEOUT seconds, default 600).

suite_passed=0
suite_failed=0
suite_skipped=0

# suite_init BUILD_DIR: set and export PRL_SRC and PRL_BUILD (absolute).
# BUILD_DIR falls back to $PRL_BUILD, then to $PRL_SRC/build.
suite_init()
{
    PRL_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    local build=${1:-${PRL_BUILD:-$PRL_SRC/build}}
    if [ ! -d "$build" ]; then
        echo "FAIL setup: build directory '$build' does not exist"
        echo "0 passed, 1 failed, 0 skipped"
        exit 1
    fi
    PRL_BUILD=$(cd "$build" && pwd)
    export PRL_SRC PRL_BUILD
    export PYTHONPATH="$PRL_SRC/tests/lib${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONDONTWRITEBYTECODE=1
    suite_tmp=$(mktemp -d "${TMPDIR:-/tmp}/prl-suite.XXXXXX")
    trap 'rm -rf "$suite_tmp"' EXIT
}

# suite_wanted NAME FILTER...: true when no filter was given or NAME is
# one of them.
suite_wanted()
{
    local name=$1 f
    shift
    [ $# -eq 0 ] && return 0
    for f in "$@"; do
        [ "$f" = "$name" ] && return 0
    done
    return 1
}

# suite_run NAME CMD...: run one test and record its result.
suite_run()
{
    local name=$1
    shift
    local log="$suite_tmp/log" dir="$suite_tmp/tmp" rc reason
    rm -rf "$dir"
    mkdir -p "$dir"
    TMPDIR=$dir timeout -k 10 "${PRL_TEST_TIMEOUT:-600}" "$@" \
        >"$log" 2>&1 </dev/null
    rc=$?
    rm -rf "$dir"
    case $rc in
    0)
        echo "PASS $name"
        suite_passed=$((suite_passed + 1))
        ;;
    77)
        reason=$(grep -a '^skip: ' "$log" | tail -n 1 | sed 's/^skip: //')
        echo "SKIP $name: ${reason:-no reason given}"
        suite_skipped=$((suite_skipped + 1))
        ;;
    *)
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            echo "FAIL $name (timed out after ${PRL_TEST_TIMEOUT:-600}s)"
        else
            echo "FAIL $name (exit status $rc)"
        fi
        tail -n 300 "$log" | sed 's/^/    /'
        suite_failed=$((suite_failed + 1))
        ;;
    esac
}

# suite_missing NAME WHY: count a test that could not even start.
suite_missing()
{
    echo "FAIL $1 ($2)"
    suite_failed=$((suite_failed + 1))
}

# suite_scripts DIR FILTER...: run every *.sh and *.py in DIR as a test
# named after the file.
suite_scripts()
{
    local dir=$1 t name
    shift
    for t in "$dir"/*.sh "$dir"/*.py; do
        [ -e "$t" ] || continue
        name=$(basename "$t")
        suite_wanted "$name" "$@" || continue
        case $t in
        *.sh) suite_run "$name" bash "$t" ;;
        *.py) suite_run "$name" /usr/bin/python3 "$t" ;;
        esac
    done
}

# suite_end: the summary line and the exit status.
suite_end()
{
    echo "$suite_passed passed, $suite_failed failed, $suite_skipped skipped"
    [ "$suite_failed" -eq 0 ]
}
