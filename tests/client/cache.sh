#!/bin/bash
# SPDX-License-Identifier: MIT
# NBD_CMD_CACHE as a client: the block layer's read-ahead hint on an NBD
# export goes to the server when it takes it (nbdkit's log filter sees
# the request, offset and length as given), and costs nothing when it
# does not (nbdkit's nocache filter, cachemode=none: no request sent,
# success).  prl-nbd serving an NBD export passes its clients' CACHE on
# to that server.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires nbdkit

pattern_file disk.raw 8

start_nbdkit k1 -r -U "$PWD/k1.sock" --filter=log file disk.raw \
    logfile="$PWD/k1.log"
prl_io -r -c "cache 2097152 65536" "$(img_uri k1.sock)"
grep -q 'Cache id=[0-9]* offset=0x200000 count=0x10000 ' k1.log ||
    fail "no CACHE 0x200000+0x10000 in nbdkit's log: $(grep Cache k1.log)"

# Through prl-nbd: a client's CACHE reaches nbdkit.
start_nbd p1 log1 -t -r -k px.sock "$(img_uri k1.sock)"
"$PYTHON" - "$PWD/px.sock" <<'PY'
import sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
assert h.can_cache(), 'prl-nbd does not offer CACHE'
h.cache(1 << 20, 5 << 20)
h.shutdown()
PY
stop_nbd "$p1" log1
grep -q 'Cache id=[0-9]* offset=0x500000 count=0x100000 ' k1.log ||
    fail "prl-nbd did not pass CACHE on: $(grep Cache k1.log)"
stop_pid "$k1"

# A server without CACHE: the hint is dropped, not an error.
start_nbdkit k2 -r -U "$PWD/k2.sock" --filter=log --filter=nocache \
    file disk.raw logfile="$PWD/k2.log" cachemode=none
prl_io -r -c "cache 0 65536" -c "read 0 4096 out.raw:0" "$(img_uri k2.sock)"
if grep -q ' Cache ' k2.log; then
    fail "CACHE sent to a server that does not take it"
fi
grep -q ' Read id=' k2.log || fail "nbdkit's log filter logged nothing"
stop_pid "$k2"
