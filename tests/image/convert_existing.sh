#!/bin/bash
# SPDX-License-Identifier: MIT
# convert -n into existing local targets that hold other data: after the
# copy each reads as the source, whether the target could be zeroed in
# one fast request first (raw, Parallels: holes punched, clusters freed)
# or not (a bundle whose base snapshot holds data, which the top must
# hide with written zeroes); a raw target larger than the source keeps
# its bytes past the source's end; the Parallels target checks clean.
. "$(dirname "$0")/../functions.sh"
requires cmp

# The source: 8 MiB, data at 1 MiB (1 MiB) and at 5 MiB (512 KiB).
prl_img create -q -f raw src.raw 8M
prl_io -w -f raw -c "write -P 7 1M 1M" -c "write -P 9 5M 512K" src.raw

# Raw, 12 MiB of 0xee: the first 8 MiB become the source, the rest stays.
head -c 12M /dev/zero | tr '\0' '\356' >big.raw
prl_img convert -n -f raw -O raw src.raw big.raw
head -c 8M big.raw >head.raw
same_file head.raw src.raw
tail -c 4M big.raw | cmp -s - <(head -c 4M /dev/zero | tr '\0' '\356') ||
    fail "bytes past the source's end changed"

# Parallels, every cluster written with 0xee.
prl_img create -q -o cluster_size=256K t.hdd 8M
prl_io -w -c "write -P 0xee 0 8M" t.hdd
prl_img convert -n -f raw -O parallels src.raw t.hdd
expect_status 0 prl_img compare -f raw src.raw t.hdd
expect_status 0 prl_img check t.hdd

# A bundle: the base snapshot holds 0xee everywhere, the top is empty.
prl_img create -q -f bundle -o cluster_size=256K vm.hdd 8M
prl_io -w -c "write -P 0xee 0 8M" vm.hdd
prl_img snapshot -c vm.hdd >/dev/null
prl_img convert -n -f raw src.raw vm.hdd
expect_status 0 prl_img compare -f raw src.raw vm.hdd
