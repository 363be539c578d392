#!/bin/bash
# SPDX-License-Identifier: MIT
# Data in and out through real clients: nbdcopy both ways, qemu-img
# convert, compare and info, qemu-io reads and writes, on raw and
# Parallels exports, over a Unix socket and TCP; data checked with cmp.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires nbdcopy qemu-img qemu-io cmp

pattern_file src.img 24
truncate -s 24M dst.img
qemu-img create -q -f parallels par.hdd 24M
port=$(free_port)
start_nbd nbd_pid log -t -e 8 -k s.sock -b 127.0.0.1 -p "$port" \
    --export dst=dst.img --export par=par.hdd --export src=src.img,ro

# nbdcopy into the raw and the Parallels export, and back out.
nbdcopy src.img "$(nbd_uri s.sock dst)"
nbdcopy src.img "nbd://127.0.0.1:$port/par"
cmp src.img dst.img || fail "nbdcopy in: dst.img differs"
nbdcopy "$(nbd_uri s.sock par)" out1.img
cmp src.img out1.img || fail "nbdcopy out of the Parallels export differs"
nbdcopy --connections=1 --requests=1 --no-extents \
    "nbd://127.0.0.1:$port/src" out2.img
cmp src.img out2.img || fail "nbdcopy out (one request) differs"
# Sparse copy out keeps the holes (they came back as holes or zeroes).
nbdcopy "$(nbd_uri s.sock src)" out3.img
cmp src.img out3.img || fail "nbdcopy sparse out differs"

# qemu-img: info, compare, convert both ways.
qemu-img info "nbd+unix:///src?socket=s.sock" |
    grep -q 'virtual size: 24 MiB' || fail "qemu-img info size"
qemu-img compare -f raw -F raw src.img "nbd+unix:///dst?socket=s.sock" ||
    fail "qemu-img compare src dst"
qemu-img compare -f raw -F raw src.img "nbd://127.0.0.1:$port/par" ||
    fail "qemu-img compare src par"
qemu-img convert -f raw -O raw "nbd+unix:///par?socket=s.sock" out4.img
cmp src.img out4.img || fail "qemu-img convert out differs"
truncate -s 0 dst.img && truncate -s 24M dst.img
qemu-img convert -n -f raw -O raw src.img "nbd+unix:///dst?socket=s.sock"
cmp src.img dst.img || fail "qemu-img convert in differs"

# qemu-img map reads base:allocation: holes of src.img are holes.
qemu-img map --output=json -f raw "nbd+unix:///src?socket=s.sock" >map.json
cat map.json
grep -q '"start": 1048576, "length": 2097152, .*"zero": true, "data": false' \
    map.json || fail "qemu-img map does not see the hole at 1 MiB"
grep -q '"start": 0, "length": 1048576, .*"data": true' map.json ||
    fail "qemu-img map does not see data at 0"

# qemu-io: patterned writes and reads checked by qemu itself.
qemu-io -f raw -c 'write -P 0x5a 1M 512k' -c 'write -z 2M 64k' \
    -c 'discard 4M 64k' -c 'flush' "nbd://127.0.0.1:$port/par" >qio.out
qemu-io -f raw -c 'read -P 0x5a 1M 512k' -c 'read -P 0 2M 64k' \
    "nbd+unix:///par?socket=s.sock" >qio.out
cat qio.out
grep -q 'Pattern verification failed' qio.out && fail "qemu-io pattern"
qemu-io -f raw -r -c 'read -P 0 0 512' "nbd+unix:///src?socket=s.sock" \
    >qio.out 2>&1 || true
grep -q 'Pattern verification failed' qio.out ||
    fail "qemu-io should see non-zero data at 0 of src"
# Writes to the read-only export are refused.
if qemu-io -f raw -c 'write 0 512' "nbd+unix:///src?socket=s.sock" \
    >qio.out 2>&1 && ! grep -qi 'error\|denied\|read-only' qio.out; then
    fail "write to a read-only export succeeded"
fi
cmp src.img out1.img || fail "read-only export changed"

stop_nbd "$nbd_pid" log
qemu-img check -q -f parallels par.hdd
[ "$(le32 par.hdd 44)" -ne $((0x746F6E59)) ] || fail "par.hdd left in use"
qemu-img compare -q -f parallels -F raw par.hdd src.img && fail "par.hdd \
should differ from src after the qemu-io writes"
qemu-io -f parallels -c 'read -P 0x5a 1M 512k' par.hdd | grep -q \
    'Pattern verification failed' && fail "qemu-io write lost"
true
