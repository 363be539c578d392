#!/bin/bash
# SPDX-License-Identifier: MIT
# Images that prl-img created and prl wrote (writes, zeroes and trims,
# unaligned and across clusters) are what QEMU reads: qemu-img check finds
# no errors, qemu-img compare and qemu-img convert agree with a raw
# reference written by qemu-io; then QEMU writes into them and prl reads
# QEMU's writes back.
. "$(dirname "$0")/../functions.sh"
requires qemu-img qemu-io cmp
set -x

# ops CS SIZE: a fixed mix of requests for clusters of CS bytes, as
# "prl-io command|qemu-io command" pairs (trim reads back as zero in prl,
# so its reference is a write of zeroes).
ops()
{
    local cs=$1 size=$2 c3=$((3 * cs + 100)) c2=$((2 * cs + 5))
    cat <<EOF
write -P 0x11 0 1|write -P 0x11 0 1
write -P 0x12 $((cs - 7)) 14|write -P 0x12 $((cs - 7)) 14
write -P 0x13 $c3 $c2|write -P 0x13 $c3 $c2
write -P 0x14 $((size - 3)) 3|write -P 0x14 $((size - 3)) 3
zero $((3 * cs + 50)) 100|write -z $((3 * cs + 50)) 100
zero $((4 * cs)) $cs|write -z $((4 * cs)) $cs
zero -u $((5 * cs)) 512|write -z $((5 * cs)) 512
trim $((cs - 3)) 6|write -z $((cs - 3)) 6
write -P 0x15 $((7 * cs)) $cs|write -P 0x15 $((7 * cs)) $cs
trim $((7 * cs)) $cs|write -z $((7 * cs)) $cs
write -P 0x16 $((8 * cs + 1)) 1000|write -P 0x16 $((8 * cs + 1)) 1000
write -P 0x17 $((2 * cs)) $((cs / 2))|write -P 0x17 $((2 * cs)) $((cs / 2))
EOF
}

# qemu_cmds CS SIZE: what QEMU writes afterwards, over and beside prl's
# data.
qemu_cmds()
{
    local cs=$1 size=$2
    echo "write -P 0x21 $((cs / 2)) $cs"
    echo "write -P 0x22 $((6 * cs + 3)) $((cs / 2 + 3))"
    echo "write -P 0x23 $((size - cs)) $cs"
}

for cs in 512 4096 32256 65536 262144 1048576; do
    for sub in ext legacy; do
        size=$((10 * cs + 1536))
        img=p-$cs-$sub.hdd
        prl_img create -f parallels -o cluster_size=$cs,subformat=$sub \
            $img $size
        : >ref.raw
        truncate -s $size ref.raw

        prl_args=()
        qemu_args=()
        while IFS='|' read -r p q; do
            prl_args+=(-c "$p")
            qemu_args+=(-c "$q")
        done < <(ops $cs $size)
        prl_io $img "${prl_args[@]}"
        qemu-io -f raw "${qemu_args[@]}" ref.raw >/dev/null

        qemu-img check -f parallels $img
        qemu-img compare -f parallels -F raw $img ref.raw
        qemu-img convert -f parallels -O raw $img conv.raw
        cmp conv.raw ref.raw
        # qemu-io prints "Pattern verification failed" and still exits 0.
        qemu-io -f parallels -r \
            -c "read -P 0x13 $((3 * cs + 150)) $((cs - 150))" \
            -c "read -P 0 $((3 * cs + 50)) 100" \
            -c "read -P 0x14 $((size - 3)) 3" $img >qio.out
        cat qio.out
        ! grep -q "verification failed" qio.out || fail "$img: pattern"
        [ "$(grep -c "^read " qio.out)" = 3 ] || fail "$img: qemu-io read"

        # QEMU writes into prl's image; prl reads it, both check clean.
        qemu_args=()
        while read -r q; do
            qemu_args+=(-c "$q")
        done < <(qemu_cmds $cs $size)
        qemu-io -f parallels "${qemu_args[@]}" $img >/dev/null
        qemu-io -f raw "${qemu_args[@]}" ref.raw >/dev/null
        qemu-img check -f parallels $img
        prl_img check -f parallels $img
        prl_img compare -f parallels -F raw $img ref.raw
        qemu-img compare -f parallels -F raw $img ref.raw
        # And prl writes after QEMU (QEMU left in_use = 0).
        prl_io $img -c "write -P 0x31 $((9 * cs)) 777"
        qemu-io -f raw -c "write -P 0x31 $((9 * cs)) 777" ref.raw >/dev/null
        qemu-img check -f parallels $img
        qemu-img compare -f parallels -F raw $img ref.raw
    done
done
echo OK
