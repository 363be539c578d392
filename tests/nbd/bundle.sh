#!/bin/bash
# SPDX-License-Identifier: MIT
# A bundle (a snapshot chain) served by prl-nbd: qemu:allocation-depth
# tells the snapshot's data (depth 2) from the top image's (1) and from
# unallocated ranges (0); base:allocation calls all of it data.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires nbdinfo
helper="$PRL_BUILD/tests/bundle/bundle-helper"
[ -x "$helper" ] || skip "tests/bundle/bundle-helper is not built"

prl_img create -q -f bundle -o cluster_size=64K disk.hdd 4M
prl_io -c "write -P 0x11 0 1M" disk.hdd
"$helper" snapshot disk.hdd >/dev/null
prl_io -c "write -P 0x22 2M 64K" disk.hdd

start_nbd nbd_pid log -t -r -A -k s.sock disk.hdd
nbdinfo --map=qemu:allocation-depth "$(nbd_uri s.sock)" >depth.txt
cat depth.txt
grep -qE '^ +0 +1048576 +2 ' depth.txt || fail "snapshot data not depth 2"
grep -qE '^ +1048576 +1048576 +0 ' depth.txt || fail "gap not depth 0"
grep -qE '^ +2097152 +65536 +1 ' depth.txt || fail "top data not depth 1"
nbdinfo --map "$(nbd_uri s.sock)" >map.txt
cat map.txt
grep -qE '^ +0 +1048576 +0 +data' map.txt || fail "snapshot data not data"
grep -qE '^ +2097152 +65536 +0 +data' map.txt || fail "top data not data"
grep -qE '^ +1048576 +1048576 +3 +hole,zero' map.txt || fail "gap not a hole"
stop_nbd "$nbd_pid" log
