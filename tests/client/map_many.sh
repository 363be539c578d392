#!/bin/bash
# SPDX-License-Identifier: MIT
# Block status of an export with thousands of extents: prl-img map reads
# them from few replies (the driver keeps what each reply describes) and
# agrees with qemu-img map of the same URI, against prl-nbd (extended
# headers, with and without -A) and qemu-nbd; writes, zeroes and trims
# through the same handle are seen by the next status at once.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires qemu-nbd qemu-img

truncate -s 256M frag.raw
"$PYTHON" - <<'PY'
import os
f = os.open('frag.raw', os.O_WRONLY)
for off in range(0, 256 << 20, 128 << 10):
    os.pwrite(f, b'x' * 4096, off)
os.close(f)
PY

# check_map URI: map within 30 s, equal to qemu-img map.
check_map()
{
    timeout 30 "$PRL_IMG_BIN" map --output=json "$1" >prl.json ||
        fail "prl-img map of $1 failed or took over 30 s"
    qemu-img map --output=json "$1" >qemu.json
    [ "$(grep -c '"data": true' prl.json)" = 2048 ] ||
        fail "want 2048 data extents"
    same_runs prl.json qemu.json || fail "prl-img map differs from qemu-img map of $1"
}

start_nbd p1 log1 -t -r -e 0 -k p1.sock frag.raw
check_map "$(img_uri p1.sock)"
stop_nbd "$p1" log1
start_nbd p2 log2 -t -r -e 0 -A -k p2.sock frag.raw
check_map "$(img_uri p2.sock)"
stop_nbd "$p2" log2
start_qemu_nbd q1 q1.sock -r -f raw frag.raw
check_map "$(img_uri q1.sock)"
stop_pid "$q1"

# Status after a change through the same handle.
truncate -s 4M z.raw
start_nbd p3 log3 -t -e 0 -k p3.sock z.raw
prl_io -w -c "status 0 4M" -c "write -P 0x11 1M 64K" -c "status 1M 64K" \
    -c "zero 1M 64K" -c "status 1M 64K" "$(img_uri p3.sock)" >st.txt
cat st.txt
sed -n 2p st.txt | grep -q '^1048576 65536 data' ||
    fail "the write is not seen by the next status"
sed -n 3p st.txt | grep -q '^1048576 65536 zero' ||
    fail "the zero is not seen by the next status"
stop_nbd "$p3" log3
