#!/bin/bash
# SPDX-License-Identifier: MIT
# prl-nbd -L (--list) against qemu-nbd -L: the same lines for the same
# server, whether that is prl-nbd (several exports, descriptions,
# allocation depth, a dirty bitmap, read-only), qemu-nbd or nbdkit (no
# block sizes), over a Unix socket, TCP, an NBD URI and TLS with a
# pre-shared key and with X.509 certificates.  prl-nbd negotiates
# extended headers where qemu-nbd 7.2 cannot, and says so in one more
# line ("transaction size: 64-bit"), left out of the comparison.  A server
# that is not there, a FILE that is not a URI and credentials for the
# wrong endpoint are errors.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires qemu-nbd qemu-img nbdkit certtool psktool

"$(dirname "$0")/lib/make-tls-creds" "$PRL_TMP/c"
c=$PRL_TMP/c

pattern_file disk.img 8
prl_img create -q small.hdd 4M
bm=$(prl_img bitmap --add small.hdd auto)

# same_list NAME PRL-ARGS -- QEMU-ARGS: both listings, compared.
same_list()
{
    local name=$1 a=() q=()
    shift
    while [ "$1" != -- ]; do a+=("$1"); shift; done
    shift
    q=("$@")
    "$PRL_NBD_BIN" -L "${a[@]}" >"$name.prl" 2>"$name.err" ||
        fail "$name: prl-nbd -L failed: $(cat "$name.err")"
    qemu-nbd -L "${q[@]}" >"$name.qemu" 2>&1 ||
        fail "$name: qemu-nbd -L failed: $(cat "$name.qemu")"
    grep -v '^  transaction size: ' "$name.prl" >"$name.cmp"
    diff -u "$name.qemu" "$name.cmp" >"$name.diff" ||
        fail "$name: listings differ: $(cat "$name.diff")"
    echo "$name: $(head -1 "$name.prl")"
}

# prl-nbd with three exports.
start_nbd p1 log1 -t -e 0 -k s.sock -A -D "the first disk" disk.img \
    --export "small=small.hdd,ro,description=with a bitmap,bitmap=$bm" \
    --export "plain=disk.img"
same_list prl-unix -k s.sock -- -k "$PWD/s.sock"
same_list prl-uri "nbd+unix:///?socket=$PWD/s.sock" -- -k "$PWD/s.sock"
grep -q "   qemu:dirty-bitmap:$bm" prl-unix.prl || fail "no bitmap context"
grep -q "  transaction size: 64-bit" prl-unix.prl ||
    fail "extended headers not negotiated"
stop_nbd "$p1" log1

port=$(free_port)
start_nbd p2 log2 -t -e 0 -b 127.0.0.1 -p "$port" -x tcp disk.img
same_list prl-tcp -b 127.0.0.1 -p "$port" -- -b 127.0.0.1 -p "$port"
same_list prl-tcp-uri "nbd://127.0.0.1:$port" -- -b 127.0.0.1 -p "$port"
stop_nbd "$p2" log2

# qemu-nbd and nbdkit as the servers.
start_bg q1 qemu-nbd -t -k "$PWD/q.sock" -x qname -D "qemu's" -f raw disk.img
wait_for_socket "$PWD/q.sock"
same_list qemu -k q.sock -- -k "$PWD/q.sock"
stop_pid "$q1"
pidf=$PWD/nbdkit.pid
start_bg k1 nbdkit -f --pidfile "$pidf" -U "$PWD/k.sock" memory 1M
wait_for_file "$pidf"
same_list nbdkit -k k.sock -- -k "$PWD/k.sock"
stop_pid "$k1"

# TLS: PSK and X.509, client credentials as qemu-nbd takes them.
start_nbd p3 log3 -t -e 0 -k t.sock \
    --object "tls-creds-psk,id=tls0,dir=$c/psk,endpoint=server" \
    --tls-creds tls0 disk.img
psk=(--object "tls-creds-psk,id=tls0,dir=$c/psk,endpoint=client,username=alice"
    --tls-creds tls0)
same_list psk -k t.sock "${psk[@]}" -- -k "$PWD/t.sock" "${psk[@]}"
expect_status 1 "$PRL_NBD_BIN" -L -k t.sock
err_contains "TLS"
stop_nbd "$p3" log3

start_nbd p4 log4 -t -e 0 -k x.sock \
    --object "tls-creds-x509,id=tls0,dir=$c/server,endpoint=server" \
    --tls-creds tls0 disk.img
x509=(--object "tls-creds-x509,id=tls0,dir=$c/client,endpoint=client"
    --tls-creds tls0 --tls-hostname localhost)
same_list x509 -k x.sock "${x509[@]}" -- -k "$PWD/x.sock" "${x509[@]}"
stop_nbd "$p4" log4

# Errors.
expect_status 1 "$PRL_NBD_BIN" -L -k nothere.sock
err_contains "nothere.sock"
expect_status 1 "$PRL_NBD_BIN" -L disk.img
err_contains "is not an NBD URI"
expect_status 1 "$PRL_NBD_BIN" -L -k s.sock \
    --object "tls-creds-psk,id=t,dir=$c/psk,endpoint=server" --tls-creds t
err_contains "needs endpoint=client"
expect_status 1 "$PRL_NBD_BIN" -k s.sock \
    --object "tls-creds-psk,id=t,dir=$c/psk,endpoint=client" --tls-creds t \
    disk.img
err_contains "needs endpoint=server"
