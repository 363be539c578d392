#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-img against nbdkit 1.32: the memory and file plugins over TCP
# (127.0.0.1 and ::1) and a Unix socket; the fallbacks to simple replies
# (--no-sr: no structured replies, so no block status) and to the old
# non-fixed handshake with NBD_OPT_EXPORT_NAME (--mask-handshake=0);
# an export without WRITE_ZEROES, where zeroing becomes writes.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires nbdkit cmp

pattern_file disk.raw 8

# ---- memory plugin on ::1: write through convert -n, read back ----
port=$(free_port)
if "$PYTHON" -c 'import socket; socket.socket(socket.AF_INET6).bind(("::1", 0))' \
    2>/dev/null; then
    start_nbdkit k1 -i ::1 -p "$port" memory 8M
    u="nbd://[::1]:$port/"
    prl_img convert -n -O raw disk.raw "$u"
    expect_status 0 prl_img compare "$u" disk.raw
    prl_img convert -O raw "$u" back.raw
    same_file back.raw disk.raw
    stop_pid "$k1"
else
    echo "no IPv6 loopback here: ::1 not tested"
fi

# ---- file plugin on 127.0.0.1, read-only ----
start_nbdkit k2 -r -i 127.0.0.1 -p "$port" file disk.raw
u="nbd://127.0.0.1:$port/"
expect_status 0 prl_img info "$u"
out_contains "virtual size: 8 MiB (8388608 bytes)"
expect_status 0 prl_img map --output=json "$u"
out_contains '"data": false' '"data": true'
prl_img convert -O parallels "$u" copy.hdd
expect_status 0 prl_img compare copy.hdd disk.raw
expect_status 1 prl_img convert -n -O raw disk.raw "$u"
err_contains "read-only"
stop_pid "$k2"

# ---- --no-sr: simple replies only; map says all data ----
start_nbdkit k3 --no-sr -U "$PWD/k3.sock" file disk.raw
u=$(img_uri k3.sock)
expect_status 0 prl_img map --output=json "$u"
[ "$(grep -c start out)" = 1 ] || fail "no-sr map is not one extent"
out_contains '"data": true'
prl_img convert -O raw "$u" back3.raw
same_file back3.raw disk.raw
stop_pid "$k3"

# ---- --mask-handshake=0: no fixed newstyle, only NBD_OPT_EXPORT_NAME ----
cp disk.raw rw.raw
start_nbdkit k4 --mask-handshake=0 -U "$PWD/k4.sock" file rw.raw
u=$(img_uri k4.sock)
expect_status 0 prl_img compare "$u" disk.raw
head -c 1M /dev/urandom >junk.bin
cp disk.raw want.raw
dd if=junk.bin of=want.raw bs=1M seek=3 conv=notrunc status=none
prl_img convert -n -O raw want.raw "$u"
stop_pid "$k4"
same_file rw.raw want.raw

# ---- no WRITE_ZEROES (nozero filter): zero ranges are written ----
start_nbdkit k6 --filter=nozero -U "$PWD/k6.sock" memory 8M
u=$(img_uri k6.sock)
head -c 8M /dev/urandom >full.raw
prl_img convert -n -O raw full.raw "$u"
prl_img convert -n -O raw disk.raw "$u"
expect_status 0 prl_img compare "$u" disk.raw
stop_pid "$k6"

# ---- an export name nbdkit refuses (-e names the only one) ----
start_nbdkit k5 -e only -U "$PWD/k5.sock" memory 1M
expect_status 0 prl_img info "$(img_uri k5.sock only)"
stop_pid "$k5"
