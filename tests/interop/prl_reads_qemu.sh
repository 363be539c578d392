#!/bin/bash
# SPDX-License-Identifier: MIT
# Images that qemu-img created and qemu-io wrote read back identically
# through prl: prl-img compare against the raw reference, prl-img convert
# -O raw byte-equal to qemu-img convert -O raw, prl-io pattern reads,
# prl-img check and info; then prl writes into QEMU's image and QEMU
# still checks it clean and reads prl's data.
. "$(dirname "$0")/../functions.sh"
requires qemu-img qemu-io cmp
set -x

M=1048576

for cs in 4096 32256 65536 262144 1048576 2097152; do
    size=$((12 * cs + 512))
    img=q-$cs.hdd
    qemu-img create -f parallels -o cluster_size=$cs $img $size >/dev/null
    : >ref.raw
    truncate -s $size ref.raw
    cmds=(-c "write -P 0x41 0 $((cs + 1))"
          -c "write -P 0x42 $((3 * cs - 1)) 2"
          -c "write -P 0x43 $((5 * cs + 300)) $((2 * cs))"
          -c "write -z $((5 * cs + 400)) 1000"
          -c "write -P 0x44 $((size - 512)) 512"
          -c "write -P 0x45 $((10 * cs)) $((cs / 2))"
          -c "write -P 0x46 $((9 * cs + 7)) 9")
    qemu-io -f parallels "${cmds[@]}" $img >/dev/null
    qemu-io -f raw "${cmds[@]}" ref.raw >/dev/null
    qemu-img check -f parallels $img

    prl_img compare -f parallels -F raw $img ref.raw
    prl_img compare $img ref.raw
    prl_img convert -f parallels -O raw $img prl.raw
    qemu-img convert -f parallels -O raw $img qemu.raw
    cmp prl.raw qemu.raw
    cmp prl.raw ref.raw
    prl_io -r $img -c "read -P 0x41 0 $((cs + 1))" \
        -c "read -P 0 $((cs + 1)) $((2 * cs - 2))" \
        -c "read -P 0x42 $((3 * cs - 1)) 2" \
        -c "read -P 0x43 $((5 * cs + 300)) 100" \
        -c "read -P 0 $((5 * cs + 400)) 1000" \
        -c "read -P 0x43 $((5 * cs + 1400)) $((2 * cs - 1100))" \
        -c "read -P 0x44 $((size - 512)) 512"
    prl_img check -f parallels $img

    # Sizes and formats agree.
    qemu-img info --output=json $img >q.json
    prl_img info --output=json $img >p.json
    q=$(json_field virtual-size <q.json)
    p="$(json_field virtual-size <p.json) $(json_field format <p.json)"
    p="$p $(json_field cluster-size <p.json)"
    [ "$p" = "$q parallels $cs" ] || fail "$img: info says '$p', qemu $q"

    # prl writes into QEMU's image.
    wcmds=(-c "write -P 0x51 $((cs / 2)) $cs"
           -c "write -P 0x52 $((11 * cs)) $((cs + 512))")
    prl_io $img "${wcmds[@]}" -c "zero $((10 * cs)) $cs"
    qemu-io -f raw "${wcmds[@]}" -c "write -z $((10 * cs)) $cs" ref.raw \
        >/dev/null
    qemu-img check -f parallels $img
    qemu-img compare -f parallels -F raw $img ref.raw
    prl_img compare -f parallels -F raw $img ref.raw
done

# Preallocated QEMU images (every cluster allocated up front).
qemu-img create -f parallels -o cluster_size=64K,preallocation=full pf.hdd \
    2M >/dev/null
qemu-io -f parallels -c "write -P 0x61 70000 5000" pf.hdd >/dev/null
prl_io -r pf.hdd -c "read -P 0 0 70000" -c "read -P 0x61 70000 5000" \
    -c "read -P 0 75000 $((2 * M - 75000))"
prl_img check pf.hdd
echo OK
