#!/bin/bash
# SPDX-License-Identifier: MIT
# Several requests in flight on one connection: convert -m 16 reads from
# and writes into exports of prl-nbd (whose workers answer out of order),
# qemu-nbd and nbdkit; the data must come out exactly, in both
# directions, and a server that goes away mid-copy fails every waiting
# request with a message, not a hang.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires qemu-nbd nbdkit cmp

pattern_file src.raw 64
head -c 64M /dev/urandom >new.raw

# copy_both URI FILE: read the export (FILE's data) and write new.raw
# into it, 16 workers each way.
copy_both()
{
    prl_img convert -m 16 -O raw "$1" out.raw
    same_file out.raw "$2"
    prl_img convert -m 16 -O parallels "$1" out.hdd
    expect_status 0 prl_img compare out.hdd "$2"
    prl_img convert -m 16 -n -O raw new.raw "$1"
    expect_status 0 prl_img compare "$1" new.raw
}

cp src.raw a.raw
start_nbd p1 log1 -t -e 0 --threads=8 -k p1.sock a.raw
copy_both "$(img_uri p1.sock)" src.raw
stop_nbd "$p1" log1
same_file a.raw new.raw

cp src.raw b.raw
start_qemu_nbd q1 q1.sock -f raw b.raw
copy_both "$(img_uri q1.sock)" src.raw
stop_pid "$q1"
same_file b.raw new.raw

cp src.raw c.raw
start_nbdkit k1 --threads=8 -U "$PWD/k1.sock" file c.raw
copy_both "$(img_uri k1.sock)" src.raw
stop_pid "$k1"
same_file c.raw new.raw

# The server dies while 16 workers wait on it: convert fails, promptly.
cp src.raw d.raw
start_nbdkit k2 --threads=8 -U "$PWD/k2.sock" --filter=delay file d.raw \
    rdelay=2
( sleep 0.5; stop_pid "$k2" ) &
killer=$!
rc=0
timeout 60 "$PRL_IMG_BIN" convert -m 16 -O raw "$(img_uri k2.sock)" dead.raw \
    2>err || rc=$?
wait "$killer"
cat err
[ "$rc" -ne 124 ] || fail "convert hung after the server died"
[ "$rc" -ne 0 ] || fail "convert succeeded from a server that died"
[ "$rc" -lt 128 ] || fail "convert died of signal $((rc - 128))"
grep -qF "nbd server" err || fail "no message naming the server"
no_sanitizer_report err
