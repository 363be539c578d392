#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-img map --bitmap on an NBD export: the server's
# qemu:dirty-bitmap:NAME (prl-nbd -B, two bitmaps at once; qemu-nbd -B on
# the same file) gives the same dirty extents as map --bitmap on the
# image itself; a bitmap the server does not offer is an error naming it.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires qemu-nbd nbdkit

prl_img create -q -o cluster_size=64K disk.hdd 8M
prl_io -w -c "write -P 0x11 0 1M" disk.hdd
b1=$(prl_img bitmap --add -g 64K disk.hdd auto)
b2=$(prl_img bitmap --add -g 128K disk.hdd auto)
prl_io -w -c "write -P 0x22 2M 64K" -c "write -P 0x33 5M 300K" disk.hdd
prl_img bitmap --disable disk.hdd "$b2"
prl_io -w -c "write -P 0x44 7M 4K" disk.hdd

prl_img map --output=json --bitmap="$b1" disk.hdd >want1.json
prl_img map --output=json --bitmap="$b2" disk.hdd >want2.json
prl_img map --bitmap="$b1" disk.hdd >want1.txt
grep -qF '"dirty": true' want1.json || fail "the test wrote nothing dirty"

start_nbd p1 log1 -t -r -e 0 -k s.sock -B "$b1" -B "$b2" disk.hdd
u=$(img_uri s.sock)
prl_img map --output=json --bitmap="$b1" "$u" >got1.json
same_file got1.json want1.json
prl_img map --output=json --bitmap="$b2" "$u" >got2.json
same_file got2.json want2.json
prl_img map --bitmap="$b1" "$u" >got1.txt
same_file got1.txt want1.txt
expect_status 1 prl_img map --bitmap=nope "$u"
err_contains "offers no dirty bitmap 'nope'" "qemu:dirty-bitmap:nope"
stop_nbd "$p1" log1

# qemu-nbd names the context after the bitmap's UUID too (on a copy
# without the disabled bitmap, whose feature flags QEMU 7.2 refuses).
cp disk.hdd q.hdd
prl_img bitmap --remove q.hdd "$b2"
start_qemu_nbd q1 q1.sock -r -f parallels -B "$b1" q.hdd
prl_img map --output=json --bitmap="$b1" "$(img_uri q1.sock)" >q1.json
same_file q1.json want1.json
stop_pid "$q1"

# nbdkit has no bitmaps at all.
start_nbdkit k1 -U "$PWD/k1.sock" memory 8M
expect_status 1 prl_img map --bitmap="$b1" "$(img_uri k1.sock)"
err_contains "offers no dirty bitmap"
stop_pid "$k1"
