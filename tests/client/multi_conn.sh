#!/bin/bash
# SPDX-License-Identifier: MIT
# Several connections to a server that allows them
# (NBD_FLAG_CAN_MULTI_CONN): prl-img convert -m 4 from an nbdkit export
# opens more than one (nbdkit's log filter counts them; at most one per
# processor) and copies the data exactly; with the flag taken away
# (nbdkit's multi-conn filter) it keeps to one.  Writes through several
# connections and a flush on one of them: prl-img convert -m 4 into
# prl-nbd -e 0, read back.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires nbdkit cmp nproc

want=$(nproc)
[ "$want" -gt 4 ] && want=4
[ "$want" -ge 2 ] || skip "one processor: no second connection is opened"

head -c 64M /dev/urandom >disk.raw

# count_connects LOG: connections nbdkit's log filter saw.
count_connects()
{
    grep -c ' Connect ' "$1" || true
}

start_nbdkit k1 -r -U "$PWD/k1.sock" --filter=log file disk.raw \
    logfile="$PWD/k1.log"
prl_img convert -m 4 -O raw "$(img_uri k1.sock)" copy.raw
same_file copy.raw disk.raw
n=$(count_connects k1.log)
[ "$n" -ge 2 ] && [ "$n" -le "$want" ] ||
    fail "convert -m 4 opened $n connections (want 2..$want)"
echo "multi-conn export: $n connections"
stop_pid "$k1"

start_nbdkit k2 -r -U "$PWD/k2.sock" --filter=log --filter=multi-conn \
    file disk.raw logfile="$PWD/k2.log" multi-conn-mode=disable
prl_img convert -m 4 -O raw "$(img_uri k2.sock)" copy2.raw
same_file copy2.raw disk.raw
n=$(count_connects k2.log)
[ "$n" -eq 1 ] || fail "without multi-conn, $n connections (want 1)"
stop_pid "$k2"

# Writes spread over connections to prl-nbd, which shares one image
# between them; the flush at close covers them all.
prl_img create -q -f raw target.raw 64M
start_nbd p1 log1 -t -e 0 -f raw -k t.sock target.raw
prl_img convert -n -m 4 -f raw disk.raw "$(img_uri t.sock)"
prl_img convert -m 4 -O raw "$(img_uri t.sock)" back.raw
same_file back.raw disk.raw
stop_nbd "$p1" log1
same_file target.raw disk.raw
