#!/bin/bash
# SPDX-License-Identifier: MIT
# fio's nbd engine against prl-nbd: random writes verified with crc32c at
# iodepth 32 from 4 connections at once, on a raw export over a Unix
# socket and a Parallels export over TCP; a sequential read pass too.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires fio qemu-img
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio lacks the nbd engine"

truncate -s 64M raw.img
qemu-img create -q -f parallels par.hdd 64M
port=$(free_port)
start_nbd nbd_pid log -t -e 0 -k s.sock -b 127.0.0.1 -p "$port" \
    --export raw=raw.img --export par=par.hdd

run_fio()
{
    local uri=$1 rw=$2 bs=$3
    # Each job is its own connection and writes its own quarter, so the
    # verify pass of one never sees another's blocks.
    fio --name=prl --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
        --iodepth=32 --numjobs=4 --size=16M --offset_increment=16M \
        --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --group_reporting --output=fio.out ||
        { cat fio.out >&2; fail "fio $rw $bs on $uri"; }
    grep -q 'err= 0' fio.out || { cat fio.out >&2; fail "fio errors"; }
}

run_fio "$(nbd_uri s.sock raw)" randwrite 4k
run_fio "nbd://127.0.0.1:$port/par" randwrite 4k
run_fio "nbd://127.0.0.1:$port/raw" write 1M
fio --name=seq --ioengine=nbd --uri="$(nbd_uri s.sock par)" --rw=read \
    --bs=256k --iodepth=16 --numjobs=2 --size=32M --offset_increment=32M \
    --output=fio.out || { cat fio.out >&2; fail "fio read"; }

stop_nbd "$nbd_pid" log
qemu-img check -q -f parallels par.hdd
