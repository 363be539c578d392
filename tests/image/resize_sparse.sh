#!/bin/bash
# SPDX-License-Identifier: MIT
# Growing an image keeps the new BAT sparse, as creating it at that size
# does: the grown BAT reads as zeroes without occupying disk space.  An
# empty 1 MiB image grown to 16 TiB has a 64 MiB BAT; prl-img create of a
# 16 TiB image occupies a few KiB, so the grown one must not occupy 64 MiB
# either (nor, with 512-byte clusters, write gigabytes of zeroes).
. "$(dirname "$0")/../functions.sh"
requires qemu-img
set -x

prl_img create -f parallels made.hdd 16T
prl_img create -f parallels grown.hdd 1M
prl_img resize grown.hdd 16T
# Same bytes...
cmp made.hdd grown.hdd
made=$(($(stat -c %b made.hdd) * 512))
grown=$(($(stat -c %b grown.hdd) * 512))
# ...and about the same space on disk.
[ $grown -le $((made + 1048576)) ] ||
    fail "grown image occupies $grown bytes, a created one $made"

# With data in it, growth still only costs the clusters that move.
prl_img create -f parallels -o cluster_size=4K data.hdd 1M
prl_io data.hdd -c "write -P 1 0 8192"
before=$(($(stat -c %b data.hdd) * 512))
prl_img resize data.hdd 64G
after=$(($(stat -c %b data.hdd) * 512))
[ $after -le $((before + 1048576)) ] ||
    fail "growing to 64G took the file from $before to $after bytes"
prl_io -r data.hdd -c "read -P 1 0 8192" -c "read -P 0 8192 1M"
echo OK
