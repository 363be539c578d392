#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-img on bundles: create -f bundle (laid out as Parallels Desktop does),
# convert to and from bundles, compare, info with the chain, map depths,
# snapshot -l/-c/-d, commit, check, and the errors of each.
. "$(dirname "$0")/../functions.sh"
requires qemu-img qemu-io

# create: DIR/DiskDescriptor.xml and DIR/<name>.0.{top GUID}.hds.
top='{5fbaabe3-6958-40ff-92a7-860e329aab41}'
expect_status 0 prl_img create -f bundle -o cluster_size=64K disk.hdd 10M
[ -f disk.hdd/DiskDescriptor.xml ] || fail "no descriptor"
hds="disk.hdd/disk.hdd.0.$top.hds"
[ -f "$hds" ] || fail "no $hds: $(ls disk.hdd)"
expect_status 0 qemu-img check -f parallels "$hds"
expect_status 0 qemu-img info -f parallels "$hds"
out_contains "virtual size: 10 MiB"
d=disk.hdd/DiskDescriptor.xml
grep -q '<Disk_size>20480</Disk_size>' $d || fail "Disk_size"
# Parallels geometry: 16 heads, 63 sectors, cylinders rounded down.
grep -q '<Cylinders>20</Cylinders>' $d || fail "Cylinders"
grep -q '<Blocksize>128</Blocksize>' $d || fail "Blocksize"
grep -q "<GUID>$top</GUID>" $d || fail "top GUID"
expect_fail prl_img create -f bundle disk.hdd 10M
err_contains "already exists"
expect_fail prl_img create -f bundle -o cluster_size=1000 bad.hdd 10M
err_contains "cluster_size"
[ ! -e bad.hdd ] || fail "a refused create left bad.hdd"

# Data written by the guest through the bundle.
expect_status 0 prl_io -c "write -P 0x11 0 1M" -c "write -P 0x22 4M 64K" \
    disk.hdd
expect_status 0 prl_img info disk.hdd
out_contains "file format: bundle" "Snapshot chain" "1: $top"

# snapshot -c, a write into the new top, -l, map depths.
expect_status 0 prl_img snapshot -c disk.hdd
g1=$(cat "$PRL_TMP/out")
[[ $g1 =~ ^\{[0-9a-f-]{36}\}$ ]] || fail "snapshot -c printed '$g1'"
expect_status 0 prl_io -c "write -P 0x33 512K 4K" disk.hdd
expect_status 0 prl_img snapshot -l disk.hdd
out_contains "$g1" "1*" "$top"
expect_status 0 prl_img snapshot -l --output=json disk.hdd
"$PYTHON" -c 'import json,sys; l=json.load(open(sys.argv[1]))
assert [x["depth"] for x in l] == [2, 1], l
assert l[1]["top"] and l[1]["guid"] == sys.argv[2], l' "$PRL_TMP/out" "$g1" ||
    fail "snapshot -l json"
expect_status 0 prl_img map --output=json disk.hdd
"$PYTHON" -c 'import json,sys; m=json.load(open(sys.argv[1]))
def at(o):
    return [e for e in m if e["start"] <= o < e["start"] + e["length"]][0]
assert at(0)["depth"] == 1 and at(0)["present"], m
assert at(512 * 1024)["depth"] == 0 and at(512 * 1024)["present"], m
assert not at(2 << 20)["present"], m' "$PRL_TMP/out" || fail "map depths"
expect_status 0 prl_img info --output=json disk.hdd
out_contains '"type": "bundle"' "\"guid\": \"$g1\""
expect_status 0 prl_io -r -c "read -P 0x11 0 512K" -c "read -P 0x33 512K 4K" \
    -c "read -P 0x11 528384 520192" -c "read -P 0x22 4M 64K" \
    -c "read -P 0 5M 5M" disk.hdd

# Flatten to raw and to Parallels; compare all ways.
expect_status 0 prl_img convert -O raw disk.hdd flat.raw
expect_status 0 prl_img convert -O parallels disk.hdd flat.hds
expect_status 0 prl_img compare disk.hdd flat.raw
expect_status 0 prl_img compare flat.hds disk.hdd
expect_status 0 qemu-img compare -f raw -F parallels flat.raw flat.hds
# A raw source into a new bundle.
expect_status 0 prl_img convert -O bundle -o cluster_size=32K flat.raw \
    copy.hdd
expect_status 0 prl_img compare copy.hdd flat.raw
expect_status 0 prl_img info copy.hdd
out_contains "cluster_size: 32768"
expect_status 0 prl_io -c "write -P 0x44 100 100" copy.hdd
expect_status 1 prl_img compare copy.hdd flat.raw

# check, and repair of an image's leak: through the library, and through
# prl-img check once that command is built.
helper="$PRL_BUILD/tests/bundle/bundle-helper"
expect_status 0 "$helper" check disk.hdd
printf 'junk' >>"$hds"
expect_status 1 "$helper" check disk.hdd
out_contains "$(basename "$hds")" "leak"
if prl_img check --help >/dev/null 2>&1; then
    expect_status 3 prl_img check disk.hdd
    out_contains "$(basename "$hds")"
    expect_status 0 prl_img check -r all disk.hdd
    expect_status 0 prl_img check disk.hdd
else
    expect_status 0 "$helper" repair disk.hdd
fi
expect_status 0 "$helper" check disk.hdd

# Errors: the top cannot be deleted, unknown GUIDs, commit of a root.
expect_fail prl_img snapshot -d "$g1" disk.hdd
err_contains "is the top" "commit"
expect_fail prl_img snapshot -d '{01234567-89ab-cdef-0123-456789abcdef}' \
    disk.hdd
err_contains "has no snapshot"
expect_fail prl_img snapshot -l -c disk.hdd
expect_fail prl_img snapshot disk.hdd
expect_fail prl_img commit copy.hdd
err_contains "has no parent"

# Two more snapshots, delete the middle one and the root, commit.
expect_status 0 prl_img snapshot -c disk.hdd
g2=$(cat "$PRL_TMP/out")
expect_status 0 prl_io -c "write -P 0x55 8M 1M" disk.hdd
expect_status 0 prl_img convert -O raw disk.hdd want.raw
expect_status 0 prl_img snapshot -d "$g1" disk.hdd
expect_status 0 prl_img compare disk.hdd want.raw
expect_status 0 prl_img snapshot -d "$top" disk.hdd
expect_status 0 prl_img compare disk.hdd want.raw
expect_status 0 prl_img snapshot -l disk.hdd
[ "$(grep -c hds "$PRL_TMP/out")" -eq 1 ] || fail "one image should be left"
expect_status 0 prl_img snapshot -c disk.hdd
expect_status 0 prl_io -c "write -P 0x66 0 4K" disk.hdd
expect_status 0 prl_img convert -O raw disk.hdd want2.raw
expect_status 0 prl_img commit disk.hdd
out_contains "Image committed."
expect_status 0 prl_img compare disk.hdd want2.raw
[ "$(ls disk.hdd | grep -c hds)" -eq 1 ] || fail "commit left $(ls disk.hdd)"
for f in disk.hdd/*.hds; do
    expect_status 0 qemu-img check -f parallels "$f"
done

# A Plain root (raw) deleted into its child; -f bundle on the descriptor.
mkdir plain.hdd
head -c 2M /dev/urandom >plain.hdd/root.raw
r='{00000001-0000-4000-8000-000000000001}'
cat >plain.hdd/DiskDescriptor.xml <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Parallels_disk_image Version="1.0">
  <Disk_Parameters><Disk_size>4096</Disk_size><Cylinders>4</Cylinders>
    <Heads>16</Heads><Sectors>63</Sectors><Padding>0</Padding>
  </Disk_Parameters>
  <StorageData><Storage><Start>0</Start><End>4096</End>
    <Blocksize>128</Blocksize>
    <Image><GUID>$r</GUID><Type>Plain</Type><File>root.raw</File></Image>
  </Storage></StorageData>
  <Snapshots><TopGUID>$r</TopGUID><Shot><GUID>$r</GUID>
    <ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID></Shot>
  </Snapshots>
</Parallels_disk_image>
EOF
expect_status 0 prl_img compare -f bundle plain.hdd/DiskDescriptor.xml \
    plain.hdd/root.raw
expect_status 0 prl_img snapshot -c plain.hdd
expect_status 0 prl_io -c "write -P 0x77 1000 3000" plain.hdd
expect_status 0 prl_img convert -O raw plain.hdd want3.raw
expect_status 0 prl_img snapshot -d "$r" plain.hdd
[ ! -e plain.hdd/root.raw ] || fail "root.raw was not removed"
expect_status 0 prl_img compare plain.hdd want3.raw
for f in plain.hdd/*.hds; do
    expect_status 0 qemu-img check -f parallels "$f"
done

# External files need --allow-external-files.
mkdir ext.hdd
cp want3.raw ext-root.raw
cat >ext.hdd/DiskDescriptor.xml <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Parallels_disk_image Version="1.0">
  <Disk_Parameters><Disk_size>4096</Disk_size><Cylinders>4</Cylinders>
    <Heads>16</Heads><Sectors>63</Sectors><Padding>0</Padding>
  </Disk_Parameters>
  <StorageData><Storage><Start>0</Start><End>4096</End>
    <Blocksize>128</Blocksize>
    <Image><GUID>$r</GUID><Type>Plain</Type>
      <File>$PRL_TMP/ext-root.raw</File></Image>
  </Storage></StorageData>
  <Snapshots><TopGUID>$r</TopGUID><Shot><GUID>$r</GUID>
    <ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID></Shot>
  </Snapshots>
</Parallels_disk_image>
EOF
expect_fail prl_img info ext.hdd
err_contains "absolute path" "--allow-external-files"
expect_fail prl_img snapshot -c ext.hdd
expect_status 0 prl_img snapshot --allow-external-files -c ext.hdd
expect_status 0 prl_img commit --allow-external-files ext.hdd
[ -f ext-root.raw ] || fail "the external root was removed"
cmp ext-root.raw want3.raw || fail "commit into an unchanged root changed it"
