#!/bin/bash
# SPDX-License-Identifier: MIT
# The command line: --help, --version, refused arguments, --fork with
# --pid-file, -s on stdin/stdout, socket activation, -e, -t and
# --max-connections, the default export, TCP and Unix together.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires nbdinfo nbdsh
requires_python_module nbd

nbd() { "$PRL_NBD_BIN" "$@"; }

truncate -s 4M a.img
expect_status 0 nbd --help
out_contains "Usage: prl-nbd" "--export=NAME=FILE" "--discard" \
    "--allocation-depth"
expect_status 0 nbd --version
out_contains "prl-nbd "
expect_fail nbd
err_contains "no image to serve"
expect_fail nbd --bogus a.img
expect_fail nbd -p 70000 a.img
err_contains "invalid port"
expect_fail nbd --discard=maybe a.img
err_contains "ignore or unmap"
expect_fail nbd --export noequals a.img
err_contains "NAME=FILE"
expect_fail nbd --export x=a.img,wat a.img
err_contains "unknown key 'wat'"
expect_fail nbd -A --export x=a.img
err_contains "-A describe FILE"
expect_fail nbd -k s.sock --export a=a.img --export a=a.img
err_contains "used twice"
expect_fail nbd -k s.sock missing.img
err_contains "missing.img"
expect_fail nbd -k s.sock -f nosuch a.img
err_contains "nosuch"
expect_fail nbd -s -p 1234 a.img
expect_fail nbd --min-block-size=3 a.img
expect_fail nbd -k s.sock a.img b.img
err_contains "one FILE at most"
[ ! -e s.sock ] || fail "a failed start left s.sock"

# --fork: the parent returns once the child listens; --pid-file names it.
nbd --fork --pid-file=nbd.pid -t -k f.sock a.img
[ -S f.sock ] || fail "--fork returned before listening"
child=$(cat nbd.pid)
on_exit "kill $child 2>/dev/null"
kill -0 "$child" || fail "forked server not running"
nbdinfo --size "$(nbd_uri f.sock)" | grep -qx 4194304 || fail "forked size"
kill -TERM "$child"
wait_for 10 "forked server to exit" sh -c "! kill -0 $child"
[ ! -e f.sock ] || fail "socket left after exit"
[ ! -e nbd.pid ] || fail "pid file left after exit"

# -s: one client on stdin/stdout (libnbd runs the command on a socket
# pair), and socket activation (libnbd passes LISTEN_FDS/LISTEN_PID).
/usr/bin/python3 - "$PRL_NBD_BIN" <<'PY'
import sys, nbd
exe = sys.argv[1]
h = nbd.NBD()
h.connect_command([exe, '-s', 'a.img'])
h.pwrite(b'stdio' * 100, 4096)
assert h.pread(500, 4096) == b'stdio' * 100
assert h.get_size() == 4 << 20
h.shutdown()
h = nbd.NBD()
h.connect_systemd_socket_activation([exe, '-r', 'a.img'])
assert h.is_read_only()
assert h.pread(500, 4096) == b'stdio' * 100
h.shutdown()
PY
[ "$(head -c 4101 a.img | tail -c 5)" = stdio ] || fail "-s write lost"

# Without -t the server leaves after its last client.
start_nbd nbd_pid log -k once.sock a.img
nbdinfo --size "$(nbd_uri once.sock)" >/dev/null
wait_for 10 "prl-nbd to exit after its client" sh -c "! kill -0 $nbd_pid"
wait "$nbd_pid" || fail "prl-nbd exited $? after its last client"

# -e 2: a third client waits until one of the first two leaves.
start_nbd nbd_pid log -t -e 2 -k e.sock a.img
/usr/bin/python3 - "$(nbd_uri e.sock)" <<'PY'
import sys, threading, time, nbd
uri = sys.argv[1]
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(uri)
b.connect_uri(uri)
assert a.can_multi_conn()  # -e 2 shares the image
done = []
def third():
    c = nbd.NBD()
    c.connect_uri(uri)
    done.append(c.get_size())
    c.shutdown()
t = threading.Thread(target=third)
t.start()
time.sleep(1)
assert not done, 'third client served while two were connected'
a.shutdown()
t.join(10)
assert done == [4 << 20], done
b.shutdown()
PY
stop_nbd "$nbd_pid" log

# --max-connections: sockets beyond it are closed at once.
start_nbd nbd_pid log -t -e 0 --max-connections=1 -k m.sock a.img
/usr/bin/python3 - "$(nbd_uri m.sock)" <<'PY'
import sys, nbd
uri = sys.argv[1]
a = nbd.NBD()
a.connect_uri(uri)
b = nbd.NBD()
try:
    b.connect_uri(uri)
    raise SystemExit('second connection accepted')
except nbd.Error:
    pass
a.shutdown()
PY
stop_nbd "$nbd_pid" log
grep -q "max-connections" log || fail "refusal not logged"

# TCP and Unix at once; -x names FILE's export; --log=syslog is taken.
port=$(free_port)
start_nbd nbd_pid log -t -e 0 -k u.sock -b 127.0.0.1 -p "$port" -x disk \
    --log=syslog a.img
wait_for_port "$port"
nbdinfo --size "nbd://127.0.0.1:$port/disk" | grep -qx 4194304 ||
    fail "TCP export"
nbdinfo --size "$(nbd_uri u.sock disk)" | grep -qx 4194304 ||
    fail "Unix export"
nbdinfo --size "$(nbd_uri u.sock)" | grep -qx 4194304 ||
    fail "the empty name is the default export"
if nbdinfo --size "$(nbd_uri u.sock nope)" 2>err.txt; then
    fail "unknown export served"
fi
grep -q "nope" err.txt || fail "unknown export: no message: $(cat err.txt)"
stop_nbd "$nbd_pid" log
