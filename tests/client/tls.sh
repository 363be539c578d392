#!/bin/bash
# SPDX-License-Identifier: MIT
# nbds:// and nbds+unix:// with X.509 certificates and pre-shared keys
# (made by tests/nbd/lib/make-tls-creds) against prl-nbd, qemu-nbd and
# nbdkit: reads, writes, tls-verify-peer=0, and the refusals (untrusted
# CA, no client certificate, wrong or unknown PSK, plain nbd:// to a
# TLS-only server) with messages that say why.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires certtool psktool qemu-nbd nbdkit cmp

"$PRL_SRC/tests/nbd/lib/make-tls-creds" "$PRL_TMP/c"
c=$PRL_TMP/c
pattern_file disk.raw 8
cp disk.raw rw.raw
x509=(--object "tls-creds-x509,id=tls0,dir=$c/server,endpoint=server")
psk=(--object "tls-creds-psk,id=tls0,dir=$c/psk,endpoint=server")

# ---- prl-nbd, X.509 with client certificates required ----
port=$(free_port)
start_nbd p1 log1 -t -e 0 -k s.sock -b 127.0.0.1 -p "$port" "${x509[@]}" \
    --tls-creds=tls0 rw.raw
wait_for_port "$port"
tcp="nbds://127.0.0.1:$port/?tls-certificates=$c/client"
unx="nbds+unix:///?socket=$PWD/s.sock&tls-certificates=$c/client"
expect_status 0 prl_img compare "$tcp" disk.raw
expect_status 0 prl_img compare "$unx" disk.raw
# By name: the certificate is for localhost.
expect_status 0 prl_img info "nbds://localhost:$port/?tls-certificates=$c/client"
head -c 1M /dev/urandom >junk.bin
cp disk.raw want.raw
dd if=junk.bin of=want.raw bs=1M seek=5 conv=notrunc status=none
prl_img convert -n -O raw want.raw "$tcp"
expect_status 0 prl_img compare "$unx" want.raw

expect_status 1 prl_img info "nbds://127.0.0.1:$port/?tls-certificates=$c/otherca"
err_contains "the server certificate is not trusted"
expect_status 1 prl_img info "nbds://127.0.0.1:$port/?tls-certificates=$c/noclient"
err_contains "TLS" "client certificate"
expect_status 1 prl_img info "nbd://127.0.0.1:$port/"
err_contains "requires TLS: use an nbds://"
# The wrong name: the certificate is not for 127.0.0.2.
expect_status 1 prl_img info \
    "nbds://127.0.0.1:$port/?tls-certificates=$c/client&tls-hostname=example.org"
err_contains "not trusted"
expect_status 0 prl_img info \
    "nbds://127.0.0.1:$port/?tls-certificates=$c/client&tls-hostname=localhost"
stop_nbd "$p1" log1
same_file rw.raw want.raw

# ---- prl-nbd, PSK ----
start_nbd p2 log2 -t -e 0 -k p.sock "${psk[@]}" --tls-creds=tls0 disk.raw
expect_status 0 prl_img compare \
    "nbds+unix:///?socket=$PWD/p.sock&tls-psk-file=$c/psk/keys.psk&tls-username=alice" \
    disk.raw
expect_status 0 prl_img compare \
    "nbds+unix://alice@/?socket=$PWD/p.sock&tls-psk-file=$c/psk/keys.psk" \
    disk.raw
expect_status 1 prl_img info \
    "nbds+unix:///?socket=$PWD/p.sock&tls-psk-file=$c/psk-wrong/keys.psk&tls-username=alice"
err_contains "TLS" "PSK"
expect_status 1 prl_img info \
    "nbds+unix:///?socket=$PWD/p.sock&tls-psk-file=$c/psk/keys.psk&tls-username=carol"
err_contains "has no key for user 'carol'"
stop_nbd "$p2" log2

# ---- qemu-nbd, X.509 (verify-peer on) and PSK ----
start_qemu_nbd q1 q1.sock -r -f raw \
    --object "tls-creds-x509,id=tls0,dir=$c/server,endpoint=server,verify-peer=on" \
    --tls-creds=tls0 disk.raw
expect_status 0 prl_img compare \
    "nbds+unix:///?socket=$PWD/q1.sock&tls-certificates=$c/client&tls-hostname=localhost" \
    disk.raw
stop_pid "$q1"
qemu-img convert -f raw -O parallels disk.raw disk.hdd
start_qemu_nbd q2 q2.sock -r -f parallels "${psk[@]}" --tls-creds=tls0 disk.hdd
expect_status 0 prl_img compare \
    "nbds+unix:///?socket=$PWD/q2.sock&tls-psk-file=$c/psk/keys.psk&tls-username=alice" \
    disk.raw
prl_img convert -O parallels \
    "nbds+unix:///?socket=$PWD/q2.sock&tls-psk-file=$c/psk/keys.psk&tls-username=alice" \
    copy.hdd
expect_status 0 prl_img compare copy.hdd disk.raw
stop_pid "$q2"

# ---- tls-verify-peer=0: a server no CA of ours vouches for ----
start_nbd p3 log3 -t -e 0 -k v.sock \
    --object "tls-creds-x509,id=tls0,dir=$c/server,endpoint=server,verify-peer=off" \
    --tls-creds=tls0 disk.raw
expect_status 1 prl_img info "nbds+unix:///?socket=$PWD/v.sock&tls-certificates=$c/otherca"
err_contains "not trusted"
expect_status 0 prl_img compare \
    "nbds+unix:///?socket=$PWD/v.sock&tls-certificates=$c/otherca&tls-verify-peer=0" \
    disk.raw
stop_nbd "$p3" log3

# ---- nbdkit with --tls=require, PSK and X.509 ----
start_nbdkit k1 --tls=require --tls-psk="$c/psk/keys.psk" \
    -U "$PWD/k1.sock" file disk.raw
expect_status 0 prl_img compare \
    "nbds+unix://alice@/?socket=$PWD/k1.sock&tls-psk-file=$c/psk/keys.psk" \
    disk.raw
expect_status 1 prl_img info "nbd+unix:///?socket=$PWD/k1.sock"
err_contains "requires TLS"
stop_pid "$k1"
start_nbdkit k2 --tls=require --tls-certificates="$c/server" \
    --tls-verify-peer -U "$PWD/k2.sock" file disk.raw
expect_status 0 prl_img compare \
    "nbds+unix:///?socket=$PWD/k2.sock&tls-certificates=$c/client&tls-hostname=localhost" \
    disk.raw
stop_pid "$k2"
