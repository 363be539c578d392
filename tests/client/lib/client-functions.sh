# SPDX-License-Identifier: MIT
# Shell helpers for the NBD client tests, sourced after tests/functions.sh
# and tests/nbd/lib/nbd-functions.sh: start qemu-nbd and nbdkit captive.

# start_qemu_nbd VAR SOCK ARGS...: qemu-nbd -t on the Unix socket SOCK
# (-k) with ARGS; PID in VAR; waits for the socket.
start_qemu_nbd()
{
    local _v=$1 sock=$2
    shift 2
    start_bg "$_v" qemu-nbd -t -k "$PWD/$sock" "$@"
    wait_for_socket "$PWD/$sock"
}

# start_qemu_nbd_tcp VAR PORT ARGS...: qemu-nbd -t on 127.0.0.1:PORT.
start_qemu_nbd_tcp()
{
    local _v=$1 port=$2
    shift 2
    start_bg "$_v" qemu-nbd -t -b 127.0.0.1 -p "$port" "$@"
    wait_for_port "$port"
}

# start_nbdkit VAR ARGS...: nbdkit in the foreground of a background job
# (so the PID is nbdkit's own), listening where ARGS say; waits for its
# pid file, which nbdkit writes once it listens.
start_nbdkit()
{
    local _v=$1 pidf
    shift
    pidf=$PWD/nbdkit-$RANDOM.pid
    start_bg "$_v" nbdkit -f --pidfile "$pidf" "$@"
    wait_for_file "$pidf"
}

# img_uri SOCK [EXPORT]: the Unix-socket URI (absolute socket path).
img_uri()
{
    echo "nbd+unix:///${2:-}?socket=$PWD/$1"
}

# same_runs A.json B.json: two `map --output=json` documents (prl-img or
# qemu-img) describe the same data/zero runs, however they split them.
same_runs()
{
    "$PYTHON" - "$1" "$2" <<'PY'
import json, sys
def runs(path):
    out = []
    for e in json.load(open(path)):
        k = (e['data'], e['zero'])
        if out and out[-1][2] == k and out[-1][0] + out[-1][1] == e['start']:
            out[-1][1] += e['length']
        else:
            out.append([e['start'], e['length'], k])
    return out
a, b = runs(sys.argv[1]), runs(sys.argv[2])
assert a == b, 'runs differ: %d vs %d, first %s / %s' % (
    len(a), len(b), a[:3], b[:3])
print(len(a), 'runs agree')
PY
}
