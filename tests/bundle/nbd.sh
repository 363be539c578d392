#!/bin/bash
# SPDX-License-Identifier: MIT
# A bundle served by prl-nbd (probed by its directory): QEMU writes into it
# over NBD, partial clusters over snapshot data included, reads back what
# a raw reference holds, and the bundle keeps it after the server stops.
. "$(dirname "$0")/../functions.sh"
requires qemu-img qemu-io
nbd="$PRL_BUILD/tools/prl-nbd/prl-nbd"
[ -x "$nbd" ] || fail "prl-nbd is not built: $nbd"

prl_img create -q -f bundle -o cluster_size=64K disk.hdd 4M
prl_io -c "write -P 0x11 0 4M" disk.hdd
"$PRL_BUILD/tests/bundle/bundle-helper" snapshot disk.hdd >/dev/null
prl_io -c "write -P 0x22 1M 64K" disk.hdd
prl_img convert -O raw disk.hdd want.raw

start_bg srv "$nbd" -k "$PRL_TMP/sock" -t disk.hdd
wait_for_socket "$PRL_TMP/sock"
uri="nbd+unix:///?socket=$PRL_TMP/sock"
expect_status 0 qemu-io -f raw -c "write -P 0x5a 100000 9000" \
    -c "write -P 0x6b 1070000 500" -c "write -z 2M 4096" "$uri"
qemu-io -f raw -c "write -P 0x5a 100000 9000" -c "write -P 0x6b 1070000 500" \
    -c "write -z 2M 4096" want.raw >/dev/null
expect_status 0 qemu-img compare -f raw -F raw "$uri" want.raw
# While served read-write the bundle can be listed, not changed.
expect_status 0 prl_img snapshot -l disk.hdd
expect_fail prl_img snapshot -c disk.hdd
err_contains "in use by another process"
expect_fail prl_img commit disk.hdd
err_contains "in use by another process"
stop_pid "$srv"

expect_status 0 prl_img compare disk.hdd want.raw
for f in disk.hdd/*.hds; do
    expect_status 0 qemu-img check -f parallels "$f"
done

# Read-only export of the same bundle.
start_bg srv "$nbd" -k "$PRL_TMP/sock2" -r -t disk.hdd
wait_for_socket "$PRL_TMP/sock2"
expect_status 0 qemu-img compare -f raw -F raw \
    "nbd+unix:///?socket=$PRL_TMP/sock2" want.raw
expect_fail qemu-io -f raw -c "write 0 512" \
    "nbd+unix:///?socket=$PRL_TMP/sock2"
stop_pid "$srv"
