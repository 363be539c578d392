#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-img resize: growing (within the BAT, and far enough that the BAT
# outgrows the space before the data area so data clusters move), relative
# sizes, shrinking refused while it would drop data and allowed with
# --shrink; every result reads back right and qemu-img checks clean.
. "$(dirname "$0")/../functions.sh"
requires qemu-img qemu-io
set -x

M=1048576

# write_both IMG REF CMD...: apply qemu-io style write/zero commands to
# the image through prl-io and to the raw reference through qemu-io.
write_both()
{
    local img=$1 ref=$2 c args=()
    shift 2
    for c in "$@"; do
        args+=(-c "$c")
    done
    prl_io "$img" "${args[@]}"
    qemu-io -f raw "${args[@]}" "$ref" >/dev/null
}

# same IMG REF: the image reads like the raw reference, and checks clean.
same()
{
    qemu-img check -f parallels "$1"
    qemu-img compare -f parallels -F raw "$1" "$2"
    prl_img compare -f parallels -F raw "$1" "$2"
    [ "$(le32 "$1" 44)" = $((0x312e3276)) ] || fail "$1 not marked clean"
}

virtual_size()
{
    prl_img info --output=json "$1" | json_field virtual-size
}

# --- Grow across the data area: 4 KiB clusters, 1 MiB holds a BAT of 256
# entries inside the first cluster; 8 MiB needs 2048 entries (8256
# bytes), so the first two data clusters must move.
prl_img create -f parallels -o cluster_size=4K g.hdd 1M
qemu-img create -f raw g.raw 1M >/dev/null
write_both g.hdd g.raw "write -P 1 0 4096" "write -P 2 4096 100" \
    "write -P 3 $((M - 5000)) 5000" "write -P 4 20000 9000"
doff_before=$(le32 g.hdd 48)
prl_img resize g.hdd 8M
truncate -s 8M g.raw
[ "$(virtual_size g.hdd)" = $((8 * M)) ] || fail "size after grow"
[ "$(le32 g.hdd 32)" = 2048 ] || fail "bat entries after grow"
doff_after=$(le32 g.hdd 48)
[ "$doff_after" -gt "$doff_before" ] ||
    fail "data_off $doff_before -> $doff_after: nothing moved"
[ $((doff_after * 512 % 4096)) = 0 ] || fail "data_off not aligned"
same g.hdd g.raw
write_both g.hdd g.raw "write -P 5 $((8 * M - 4096)) 4096" \
    "write -P 6 $((3 * M + 7)) 10000"
same g.hdd g.raw

# --- Relative sizes, and growth inside the last cluster.
prl_img resize g.hdd +512
truncate -s +512 g.raw
same g.hdd g.raw
prl_img resize g.hdd -- +2M
truncate -s +2M g.raw
same g.hdd g.raw

# --- Shrink: refused while it drops data, the file unchanged.
cp g.hdd g.before
expect_fail prl_img resize g.hdd 2M
same_file g.hdd g.before
expect_fail prl_img resize g.hdd -- -8M
same_file g.hdd g.before
# With --shrink it goes; what is kept reads the same.
prl_img resize --shrink g.hdd 2M
truncate -s 2M g.raw
[ "$(virtual_size g.hdd)" = $((2 * M)) ] || fail "size after shrink"
same g.hdd g.raw
# The dropped space is gone, and growing again shows zeroes there.
prl_img resize g.hdd 8M
truncate -s 8M g.raw
same g.hdd g.raw
prl_io -r g.hdd -c "read -P 0 $((2 * M)) $((6 * M))"

# --- Shrinking an image whose dropped part holds no data needs no data
# loss: with --shrink it always works and keeps the rest.
prl_img create -f parallels -o cluster_size=64K s.hdd 4M
qemu-img create -f raw s.raw 4M >/dev/null
write_both s.hdd s.raw "write -P 9 0 70000"
prl_img resize --shrink s.hdd 1M
truncate -s 1M s.raw
same s.hdd s.raw

# --- Legacy, data_off 0, 63-sector clusters: growth moves clusters and
# sets a data offset.
"$PYTHON" - <<'EOF'
import parimg
im = parimg.Image(100 * 32256, 32256, ext=False, data_off=0)
im.write('l.hdd')
EOF
qemu-img create -f raw l.raw $((100 * 32256)) >/dev/null
write_both l.hdd l.raw "write -P 7 0 40000" "write -P 8 $((50 * 32256)) 1"
prl_img resize l.hdd $((400 * 32256))
truncate -s $((400 * 32256)) l.raw
[ "$(le32 l.hdd 32)" = 400 ] || fail "legacy bat entries"
same l.hdd l.raw

# --- Raw files resize too.
prl_img create -f raw r.raw 1M
prl_img resize -f raw r.raw 3M
[ "$(file_size r.raw)" = $((3 * M)) ] || fail "raw grow"
prl_img resize -f raw --shrink r.raw 1M
[ "$(file_size r.raw)" = $M ] || fail "raw shrink"

# --- Nonsense sizes fail cleanly.
cp g.hdd g.before
expect_fail prl_img resize g.hdd 1Q
expect_fail prl_img resize g.hdd -- -100G
same_file g.hdd g.before
echo OK
