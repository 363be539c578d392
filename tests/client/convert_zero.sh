#!/bin/bash
# SPDX-License-Identifier: MIT
# convert -n into a target that already holds data: the target is first
# made to read as zeroes by one fast zero request when it can (nbdkit's
# log filter sees one WRITE_ZEROES with FAST_ZERO over the whole range,
# then only the source's data is written); when it cannot (nbdkit's
# nozero filter: no WRITE_ZEROES), the source's zero runs are zeroed one
# by one.  Either way the target ends up equal to the source: checked on
# nbdkit, qemu-nbd and a local raw file, each filled with 0xff first.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires nbdkit qemu-nbd

# The source: data at 1 MiB (1 MiB) and 5 MiB (512 KiB), holes between.
truncate -s 8M src.raw
prl_io -w -f raw -c "write -P 7 1M 1M" -c "write -P 9 5M 512K" src.raw
head -c 8M /dev/zero | tr '\0' '\377' >ff.raw

# fill_and_convert URI: 0xff everywhere, then convert -n src.raw into it.
fill_and_convert()
{
    prl_img convert -n -f raw ff.raw "$1"
    prl_img convert -n -f raw src.raw "$1"
    expect_status 0 prl_img compare -f raw src.raw "$1"
}

start_nbdkit k1 -U "$PWD/k1.sock" --filter=log memory 8M \
    logfile="$PWD/k1.log"
fill_and_convert "$(img_uri k1.sock)"
stop_pid "$k1"
# The second connection (the convert of src.raw) zeroed once, fast.
conn=$(grep ' Zero ' k1.log | head -1 | sed 's/.*connection=\([0-9]*\).*/\1/')
[ -n "$conn" ] || fail "no zero request at all: $(cut -c28- k1.log)"
zeroes=$(grep -c "connection=$conn Zero " k1.log)
[ "$zeroes" -eq 1 ] || fail "$zeroes zero requests, want 1"
grep -q "connection=$conn Zero id=[0-9]* offset=0x0 count=0x800000 .*fast=1" \
    k1.log || fail "not one fast zero of the whole export: $(grep Zero k1.log)"
writes=$(grep -c "connection=$conn Write " k1.log)
[ "$writes" -eq 2 ] || fail "$writes writes, want the 2 data runs"

# No WRITE_ZEROES at all: zero runs become written zeroes.
start_nbdkit k2 -U "$PWD/k2.sock" --filter=nozero memory 8M zeromode=none
fill_and_convert "$(img_uri k2.sock)"
stop_pid "$k2"

# qemu-nbd on a raw file.
cp ff.raw q.raw
start_qemu_nbd q1 q1.sock -f raw q.raw
fill_and_convert "$(img_uri q1.sock)"
stop_pid "$q1"
same_file q.raw src.raw

# A local raw file.
cp ff.raw local.raw
prl_img convert -n -f raw -O raw src.raw local.raw
same_file local.raw src.raw
