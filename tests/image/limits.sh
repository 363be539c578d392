#!/bin/bash
# SPDX-License-Identifier: MIT
# The largest file offset a BAT entry can hold: a legacy image whose data
# area starts just below 2 TiB (entries count 512-byte sectors in 32 bits)
# takes three 4 KiB clusters, then refuses the fourth with ENOSPC and a
# message naming the limit; the data written stays and the image checks
# clean.  The file is sparse, so this costs a few KiB.
. "$(dirname "$0")/../functions.sh"
requires qemu-img
set -x

"$PYTHON" - <<'PY'
import parimg
# data_off = 2^32 - 21 sectors: clusters at sectors 2^32-21, -13, -5 fit a
# 32-bit entry; the next, at 2^32+3, does not.
im = parimg.Image(64 * 4096, 4096, ext=False, data_off=(1 << 32) - 21)
im.write('edge.hdd')
PY
prl_io edge.hdd -c "write -P 1 0 4096" -c "write -P 2 4096 4096" \
    -c "write -P 3 8192 10"
expect_fail prl_io edge.hdd -c "write -P 4 12288 1"
err_contains "2199023255040"
[ "$(le32 edge.hdd $((64 + 12)))" = 0 ] || fail "entry 3 was set"
[ "$(le32 edge.hdd $((64 + 8)))" = $((2 ** 32 - 5)) ] || fail "entry 2"
prl_io -r edge.hdd -c "read -P 1 0 4096" -c "read -P 2 4096 4096" \
    -c "read -P 3 8192 10" -c "read -P 0 8202 $((64 * 4096 - 8202))"
qemu-img check -f parallels edge.hdd
prl_img check edge.hdd
# Freeing a cluster makes room again.
prl_io edge.hdd -c "trim 4096 4096" -c "write -P 5 12288 1"
prl_io -r edge.hdd -c "read -P 0 4096 4096" -c "read -P 5 12288 1"
qemu-img check -f parallels edge.hdd

# Ext entries count clusters: with 512-byte clusters the limit is the same
# 2^32 - 1 units; a data area at unit 2^32 - 2 takes exactly two.
"$PYTHON" - <<'PY'
import parimg
im = parimg.Image(16 * 512, 512, ext=True, data_off=(1 << 32) - 2)
im.write('edge-ext.hdd')
PY
prl_io edge-ext.hdd -c "write -P 6 0 512" -c "write -P 7 512 512"
expect_fail prl_io edge-ext.hdd -c "write -P 8 1024 512"
prl_io -r edge-ext.hdd -c "read -P 6 0 512" -c "read -P 7 512 512" \
    -c "read -P 0 1024 $((14 * 512))"
qemu-img check -f parallels edge-ext.hdd
echo OK
