#!/bin/bash
# SPDX-License-Identifier: MIT
# Busy polling between requests (--poll-max-ns): a client that keeps
# requests coming (fio, iodepth 32) is polled and polling finds its
# requests; a client that pauses longer than the budget between requests
# is never polled; --poll-max-ns=0 turns polling off.  prl-nbd -vv logs
# each connection's counts when it ends.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires fio /usr/bin/python3
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio lacks the nbd engine"
requires_python_module nbd

head -c 16M /dev/urandom >raw.img

# counts LOG: "RECEIVES POLLED FOUND" of the connection with the most
# receives.
counts()
{
    sed -n 's/.*busy polling: \([0-9]*\) receives, \([0-9]*\) polled, \([0-9]*\) found data$/\1 \2 \3/p' "$1" |
        sort -n -k1,1 | tail -n 1
}

run_fio()
{
    fio --name=poll --ioengine=nbd --uri="$(nbd_uri s.sock)" --rw=randread \
        --bs=4k --iodepth=32 --size=16M --number_ios=20000 \
        --output=fio.out || { cat fio.out >&2; fail "fio"; }
}

# A budget of 1 ms: fio's next requests always come sooner than that.
start_nbd pid log -vv -t -e 0 --poll-max-ns=1000000 -k s.sock raw.img
run_fio

# One request, then a 5 ms pause, 40 times.
/usr/bin/python3 - "$(nbd_uri s.sock)" <<'EOF'
import sys
import time

import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(40):
    assert len(h.pread(4096, i * 4096)) == 4096
    time.sleep(0.005)
h.shutdown()
EOF
stop_nbd "$pid" log

n=$(grep -c 'busy polling:' log) || true
[ "$n" -ge 3 ] || { cat log >&2; fail "expected a polling line per connection, got $n"; }
read -r recvs polled found <<<"$(counts log)"
echo "fio: $recvs receives, $polled polled, $found found data"
[ "$polled" -gt 0 ] || fail "fio's connection was never polled"
[ "$found" -gt 0 ] || fail "polling never found fio's requests"
[ "$found" -le "$polled" ] && [ "$polled" -le "$recvs" ] ||
    fail "counts out of order: $recvs $polled $found"

# The paused client: its connection's line has 40 reads (and the
# disconnect) behind 41 receives or more, none polled.
slow=$(sed -n 's/.*busy polling: \([0-9]*\) receives, \([0-9]*\) polled.*/\1 \2/p' log |
    awk '$1 >= 41 && $1 <= 45')
[ -n "$slow" ] || { cat log >&2; fail "no line for the paused client"; }
[ "${slow#* }" -eq 0 ] || fail "the paused client was polled: $slow"

# Off: no polling, no line.
start_nbd pid log0 -vv -t -e 0 --poll-max-ns=0 -k s.sock raw.img
run_fio
stop_nbd "$pid" log0
grep -q 'busy polling:' log0 && fail "--poll-max-ns=0 still polls"
grep -q 'serving export' log0 || fail "fio never reached transmission"

"$PRL_NBD_BIN" --poll-max-ns=2000000 raw.img 2>err && fail "accepted 2 ms"
grep -q "invalid --poll-max-ns '2000000'" err || fail "unclear error: $(cat err)"
