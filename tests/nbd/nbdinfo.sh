#!/bin/bash
# SPDX-License-Identifier: MIT
# nbdinfo against prl-nbd: --list with several exports and descriptions,
# --json with every advertised flag and block size (qemu:allocation-depth
# only with -A), --map for raw and Parallels exports, over a Unix socket
# and TCP together.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires nbdinfo jq qemu-img

pattern_file raw.img 8
qemu-img create -q -f parallels -o cluster_size=65536 par.hdd 16M
qemu-io -f parallels -c 'write -P 7 1M 128k' par.hdd >/dev/null
truncate -s 1M small.img
port=$(free_port)

start_nbd nbd_pid log -t -e 4 -k s.sock -b 127.0.0.1 -p "$port" \
    -x raw -D "raw image" -A raw.img \
    --export "par=par.hdd,description=a parallels,,disk,allocation-depth" \
    --export ro=small.img,ro
wait_for_port "$port"

# --list: every export, name and description.
nbdinfo --list --json "$(nbd_uri s.sock)" >list.json
[ "$(jq '.exports | length' list.json)" = 3 ] || fail "not 3 exports"
[ "$(jq -r '.exports[] | select(.["export-name"]=="raw") | .description' \
    list.json)" = "raw image" ] || fail "raw description"
[ "$(jq -r '.exports[] | select(.["export-name"]=="par") | .description' \
    list.json)" = "a parallels,disk" ] || fail "par description"

# --json of each export: flags and block sizes as advertised.
check_export()
{
    local uri=$1 size=$2 ro=$3 pref=$4 depth=$5
    nbdinfo --json "$uri" >info.json
    cat info.json
    local e='.exports[0]'
    [ "$(jq "$e.\"export-size\"" info.json)" = "$size" ] || fail "size"
    [ "$(jq "$e.is_read_only" info.json)" = "$ro" ] || fail "read-only"
    [ "$(jq "$e.can_flush" info.json)" = true ] || fail "flush"
    [ "$(jq "$e.can_cache" info.json)" = true ] || fail "cache"
    [ "$(jq "$e.can_df" info.json)" = true ] || fail "df"
    [ "$(jq "$e.can_multi_conn" info.json)" = true ] || fail "multi-conn"
    [ "$(jq "$e.is_rotational" info.json)" = false ] || fail "rotational"
    local w=true
    [ "$ro" = true ] && w=false
    for f in can_fua can_trim can_zero can_fast_zero; do
        [ "$(jq "$e.$f" info.json)" = "$w" ] || fail "$f should be $w"
    done
    [ "$(jq "$e.block_size_minimum" info.json)" = 1 ] || fail "minimum"
    [ "$(jq "$e.block_size_preferred" info.json)" = "$pref" ] ||
        fail "preferred"
    [ "$(jq "$e.block_size_maximum" info.json)" = 33554432 ] ||
        fail "maximum"
    jq -e "$e.contexts | index(\"base:allocation\")" info.json >/dev/null ||
        fail "no base:allocation"
    # qemu:allocation-depth only on exports served with -A.
    [ "$(jq "$e.contexts | index(\"qemu:allocation-depth\") != null" \
        info.json)" = "$depth" ] || fail "qemu:allocation-depth offered: !$depth"
}
check_export "$(nbd_uri s.sock raw)" 8388608 false 4096 true
check_export "nbd://127.0.0.1:$port/par" 16777216 false 65536 true
check_export "$(nbd_uri s.sock ro)" 1048576 true 4096 false

# The empty name is the first export.
nbdinfo --size "$(nbd_uri s.sock)" | grep -qx 8388608 || fail "default export"

# --map: raw holes are holes; Parallels unallocated clusters too, with
# depth 0 there and 1 where data is.
nbdinfo --map "$(nbd_uri s.sock raw)" >map.txt
cat map.txt
grep -qE '^ +0 +1048576 +0 +data' map.txt || fail "raw data extent"
grep -qE '^ +1048576 +2097152 +3 +hole,zero' map.txt || fail "raw hole"
nbdinfo --map "$(nbd_uri s.sock par)" >map.txt
cat map.txt
grep -qE '^ +0 +1048576 +3 +hole,zero' map.txt || fail "par hole"
grep -qE '^ +1048576 +131072 +0 +data' map.txt || fail "par data"
nbdinfo --map=qemu:allocation-depth "$(nbd_uri s.sock par)" >map.txt
cat map.txt
grep -qE '^ +0 +1048576 +0 +absent' map.txt || fail "depth 0"
grep -qE '^ +1048576 +131072 +1 +local' map.txt || fail "depth 1"

stop_nbd "$nbd_pid" log
# The Parallels image was closed cleanly.
[ "$(le32 par.hdd 44)" = $((0x312e3276)) ] || [ "$(le32 par.hdd 44)" = 0 ] ||
    fail "in_use left at $(le32 par.hdd 44)"
qemu-img check -q -f parallels par.hdd

# -e 1 (the default) does not offer multi-conn.
start_nbd nbd_pid log -t -k one.sock -r raw.img
nbdinfo --json "$(nbd_uri one.sock)" >info.json
[ "$(jq '.exports[0].can_multi_conn' info.json)" = false ] ||
    fail "multi-conn with -e 1"
stop_nbd "$nbd_pid" log
