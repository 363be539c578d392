#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-img against prl-nbd: extended headers (64-bit block status
# descriptors), export names with percent-escapes, unknown exports,
# a minimum block size, qemu:allocation-depth of a bundle (-A), writes
# through convert -n into a Parallels image, and several exports.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires qemu-img cmp

pattern_file disk.raw 8
prl_img convert -O parallels disk.raw disk.hdd
prl_img create -q -f parallels target.hdd 8M

start_nbd p1 log1 -v -t -e 0 -k s1.sock -x "my disk" --min-block-size=4096 \
    disk.hdd --export "tgt=$PWD/target.hdd"
u=$(img_uri s1.sock 'my%20disk')
expect_status 0 prl_img info "$u"
out_contains "virtual size: 8 MiB"
grep -qF "extended headers" log1 || fail "no extended headers negotiated"
expect_status 0 prl_img map --output=json "$u"
out_contains '"data": false' '"data": true'
prl_img convert -O raw "$u" copy.raw
same_file copy.raw disk.raw
expect_status 1 prl_img info "$(img_uri s1.sock nosuch)"
err_contains "has no export 'nosuch'"
# Into the second export; the image checks clean and holds the data.
prl_img convert -n -O raw disk.raw "$(img_uri s1.sock tgt)"
expect_status 0 prl_img compare "$(img_uri s1.sock tgt)" disk.raw
stop_nbd "$p1" log1
prl_img check target.hdd
expect_status 0 prl_img compare target.hdd disk.raw

# ---- allocation depth of a bundle ----
helper="$PRL_BUILD/tests/bundle/bundle-helper"
if [ -x "$helper" ]; then
    prl_img create -q -f bundle -o cluster_size=64K b.hdd 4M
    prl_io -c "write -P 0x11 0 1M" b.hdd
    "$helper" snapshot b.hdd >/dev/null
    prl_io -c "write -P 0x22 2M 64K" b.hdd
    start_nbd p2 log2 -t -r -A -k s2.sock b.hdd
    prl_img map --output=json "$(img_uri s2.sock)" >map.json
    cat map.json
    grep -qF '"start": 0, "length": 1048576, "depth": 1, "present": true' \
        map.json || fail "snapshot data is not at depth 1 (qemu numbering)"
    grep -qF '"start": 1048576, "length": 1048576, "depth": 0, "present": false' \
        map.json || fail "the gap is not unallocated"
    grep -qF '"start": 2097152, "length": 65536, "depth": 0, "present": true' \
        map.json || fail "top data is not at depth 0"
    prl_img convert -O raw "$(img_uri s2.sock)" b.raw
    prl_img convert -O raw b.hdd b-direct.raw
    same_file b.raw b-direct.raw
    stop_nbd "$p2" log2
fi

# ---- TCP on 127.0.0.1 ----
port=$(free_port)
start_nbd p3 log3 -t -r -b 127.0.0.1 -p "$port" disk.raw
expect_status 0 prl_img compare "nbd://127.0.0.1:$port" disk.raw
stop_nbd "$p3" log3
