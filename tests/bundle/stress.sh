#!/bin/bash
# SPDX-License-Identifier: MIT
# Parallel writers: a bundle declares PRL_CAP_PARALLEL, so threads writing
# disjoint sectors of the same clusters, which the top does not hold yet
# and its parent fills completely, must all land (copy-on-write is
# serialized), for several seeds and cluster sizes.
. "$(dirname "$0")/../functions.sh"
requires qemu-img
helper="$PRL_BUILD/tests/bundle/bundle-helper"

for cs in 4096 65536; do
    prl_img create -q -f bundle -o cluster_size=$cs b$cs.hdd 2M
    head -c 2M /dev/urandom >fill.bin
    prl_io -c "write 0 2097152 fill.bin:0" b$cs.hdd
    for seed in 1 2 3; do
        "$helper" snapshot b$cs.hdd >/dev/null
        expect_status 0 "$helper" stress b$cs.hdd 4 3000 $seed
    done
    for f in b$cs.hdd/*.hds; do
        expect_status 0 qemu-img check -q -f parallels "$f"
    done
done
