#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-img against qemu-nbd (structured replies, no extended headers):
# raw and Parallels exports (qemu-nbd -f parallels) over a Unix socket
# and TCP on 127.0.0.1; info, map (human and JSON, against qemu-img map
# of the same URI), convert to raw and Parallels, compare, and writes
# through convert -n checked in the served file.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires qemu-nbd qemu-img cmp

pattern_file disk.raw 16
qemu-img convert -f raw -O parallels disk.raw disk.hdd

# ---- Parallels export over a Unix socket ----
start_qemu_nbd q1 q1.sock -r -f parallels disk.hdd
u=$(img_uri q1.sock)
expect_status 0 prl_img info "$u"
out_contains "file format: nbd" "virtual size: 16 MiB (16777216 bytes)" \
    "disk size: unavailable"
expect_status 0 prl_img info --output=json "$u"
[ "$(json_field virtual-size <out)" = 16777216 ] || fail "virtual-size"
[ "$(json_field format <out)" = nbd ] || fail "format"

# map: the same data/zero ranges qemu-img sees on the same export.
prl_img map --output=json "$u" >prl-map.json
qemu-img map --output=json "$u" >qemu-map.json
same_runs prl-map.json qemu-map.json >/dev/null ||
    fail "prl-img map differs from qemu-img map"
expect_status 0 prl_img map "$u"
out_contains "Offset" "0x300000" "$u"
grep -q '^0 ' out || fail "human map lacks the first data range"

prl_img convert -O raw "$u" copy.raw
same_file copy.raw disk.raw
prl_img convert -O parallels "$u" copy.hdd
qemu-img compare -f parallels -F raw copy.hdd disk.raw
expect_status 0 prl_img compare "$u" disk.raw
expect_status 0 prl_img compare disk.hdd "$u"
printf 'x' | dd of=other.raw bs=1 seek=5000000 conv=notrunc status=none
cp disk.raw other.raw
printf 'x' | dd of=other.raw bs=1 seek=5000000 conv=notrunc status=none
expect_status 1 prl_img compare "$u" other.raw
out_contains "Content mismatch at offset 5000000"
# A read-only export refuses writers.
expect_status 1 prl_img convert -n -O raw disk.raw "$u"
err_contains "read-only"
stop_pid "$q1"

# ---- writable raw export over TCP: convert -n writes into it ----
port=$(free_port)
truncate -s 16M served.raw
start_qemu_nbd_tcp q2 "$port" -f raw served.raw
t="nbd://127.0.0.1:$port/"
prl_img convert -n -O raw disk.hdd "$t"
expect_status 0 prl_img compare "$t" disk.raw
stop_pid "$q2"
same_file served.raw disk.raw

# Parallels written through qemu-nbd -f parallels: the image file checks
# clean and holds the data.
qemu-img create -q -f parallels target.hdd 16M
start_qemu_nbd q3 q3.sock -f parallels target.hdd
prl_img convert -n -O raw disk.raw "$(img_uri q3.sock)"
stop_pid "$q3"
qemu-img compare -f parallels -F raw target.hdd disk.raw
prl_img check target.hdd
