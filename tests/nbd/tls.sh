#!/bin/bash
# SPDX-License-Identifier: MIT
# TLS with real clients: nbdinfo, nbdcopy, qemu-img, qemu-io and fio over
# nbds:// and nbds+unix:// with X.509 certificates and pre-shared keys
# (credentials made here by certtool and psktool); clients without TLS,
# with an untrusted CA, without a certificate, with a wrong or unknown key,
# or with an identity --tls-authz does not admit are refused with a log
# line saying why, write nothing, and leave the server serving; -r holds
# over TLS; bad credentials stop prl-nbd at start-up with the file named.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires certtool psktool nbdinfo nbdcopy qemu-img qemu-io cmp fio

"$(dirname "$0")/lib/make-tls-creds" "$PRL_TMP/c"
c=$PRL_TMP/c
dn=$(cat "$c/client-dn")

pattern_file disk.img 8
cp disk.img expect.img
head -c 1M /dev/urandom >junk.bin
# What a refused client tries to write: it must never land.
head -c 8M /dev/urandom >evil.img

x509=(--object "tls-creds-x509,id=tls0,dir=$c/server,endpoint=server")
psk=(--object "tls-creds-psk,id=tls0,dir=$c/psk,endpoint=server")
authz=(--object "authz-simple,id=auth0,identity=${dn//,/,,}")

# qemu_opts TYPE TRANSPORT DIR [USER]: --object and --image-opts for
# QEMU's NBD client over TLS to the server started last.
qemu_obj()
{
    if [ "$1" = x509 ]; then
        echo "tls-creds-x509,id=tls0,endpoint=client,dir=$2"
    else
        echo "tls-creds-psk,id=tls0,endpoint=client,dir=$2,username=$3"
    fi
}
qemu_inet() { echo "driver=nbd,server.type=inet,server.host=$1,server.port=$port,tls-creds=tls0"; }
qemu_unix() { echo "driver=nbd,server.type=unix,server.path=$PRL_TMP/s.sock,tls-creds=tls0,tls-hostname=localhost"; }

# refused WHY CMD...: CMD must fail, and the server's log must gain a
# line containing WHY.
refused()
{
    local why=$1 before
    shift
    before=$(wc -l <log)
    expect_fail "$@"
    wait_for 10 "log line '$why'" \
        sh -c "tail -n +$((before + 1)) log | grep -qF -- \"\$1\"" _ "$why"
    kill -0 "$nbd_pid" || fail "prl-nbd died after: $*"
}

port=$(free_port)

# ---- X.509, verify-peer=on (the default), TCP and a Unix socket ----
start_nbd nbd_pid log -v -t -e 0 -k s.sock -b 127.0.0.1 -p "$port" \
    "${x509[@]}" --tls-creds=tls0 disk.img
wait_for_port "$port"
tcp="nbds://127.0.0.1:$port/?tls-certificates=$c/client"
unx="nbds+unix:///?socket=s.sock&tls-certificates=$c/client"

expect_status 0 nbdinfo "$tcp"
out_contains "with TLS" "export-size: 8388608"
expect_status 0 nbdinfo --json "$unx"
grep -qF "TLS (X.509, " log || fail "no X.509 log line"
grep -qF "established for '$dn'" log || fail "no TLS log line for $dn"

nbdcopy "$tcp" copy-tcp.img
same_file copy-tcp.img expect.img
nbdcopy "$unx" copy-unix.img
same_file copy-unix.img expect.img

# Writes through TLS: nbdcopy, then qemu-io, each checked in the file.
dd if=junk.bin of=expect.img bs=1M seek=2 conv=notrunc status=none
nbdcopy expect.img "$unx"
nbdcopy "$tcp" copy-tcp.img
same_file copy-tcp.img expect.img
same_file disk.img expect.img

obj=$(qemu_obj x509 "$c/client")
expect_status 0 qemu-img info --object "$obj" --image-opts \
    "$(qemu_inet 127.0.0.1)"
out_contains "virtual size: 8 MiB"
expect_status 0 qemu-io --object "$obj" --image-opts "$(qemu_inet localhost)" \
    -c 'write -P 0xa5 5M 512k' -c 'read -P 0xa5 5M 512k' -c 'flush'
head -c 524288 /dev/zero | tr '\0' '\245' |
    dd of=expect.img bs=512k seek=10 conv=notrunc status=none
expect_status 0 qemu-io --object "$obj" --image-opts "$(qemu_unix)" \
    -c 'read -P 0xa5 5M 512k'
qemu-img convert --object "$obj" --image-opts "$(qemu_unix)" -O raw q.img
same_file q.img expect.img
expect_status 0 qemu-img compare --object "$obj" --image-opts \
    "$(qemu_inet 127.0.0.1)" "driver=file,filename=$PRL_TMP/expect.img"
same_file disk.img expect.img

# Refused: no TLS at all, another CA, no client certificate, a client
# certificate of another CA.  None of them writes.
refused "connected" nbdinfo "nbd://127.0.0.1:$port/"
refused "connected" nbdcopy evil.img "nbd+unix:///?socket=s.sock"
refused "hung up during the handshake" nbdcopy evil.img \
    "nbds://127.0.0.1:$port/?tls-certificates=$c/otherca"
# QEMU checks the server after its side of the handshake is done, having
# sent no certificate (its own is of a CA the server does not name).
refused "sent no certificate" qemu-img info --object \
    "$(qemu_obj x509 "$c/otherca")" --image-opts "$(qemu_inet 127.0.0.1)"
err_contains "known issuer"
refused "sent no certificate" nbdcopy evil.img \
    "nbds+unix:///?socket=s.sock&tls-certificates=$c/noclient"
# GnuTLS clients offer only a certificate of a CA the server names, so a
# certificate of another CA is not even sent (tls.py has a client that
# sends one anyway).
refused "sent no certificate" nbdcopy evil.img \
    "nbds://127.0.0.1:$port/?tls-certificates=$c/otherclient"
refused "sent no certificate" qemu-io --object \
    "$(qemu_obj x509 "$c/noclient")" --image-opts \
    "$(qemu_inet 127.0.0.1)" -c 'write -P 1 0 64k'
nbdcopy "$tcp" after.img
same_file after.img expect.img
same_file disk.img expect.img

# fio over TLS: its engine takes the URI only, and libnbd lets a URI name
# no certificate files, so the client cannot present one; fio runs
# encrypted against a server that does not ask (verify-peer=off) below.
stop_nbd "$nbd_pid" log

# ---- X.509, verify-peer=off: no client certificate needed ----
start_nbd nbd_pid log -v -t -e 0 -k s.sock -b 127.0.0.1 -p "$port" \
    --object "tls-creds-x509,id=tls0,dir=$c/server,endpoint=server,verify-peer=off" \
    --tls-creds=tls0 disk.img
expect_status 0 nbdinfo --size \
    "nbds+unix:///?socket=s.sock&tls-certificates=$c/noclient"
fio --enghelp >fio-engines 2>&1 || true
grep -qw nbd fio-engines || fail "fio has no nbd engine"
fio --name=tls --ioengine=nbd \
    --uri="nbds://127.0.0.1:$port/?tls-verify-peer=false" \
    --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=2M \
    --offset_increment=2M --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --group_reporting --output=fio.out ||
    { cat fio.out >&2; fail "fio over TLS"; }
grep -q 'err= 0' fio.out || { cat fio.out >&2; fail "fio errors"; }
grep -q "TLS (X.509" log || fail "fio did not use TLS"
stop_nbd "$nbd_pid" log
cp disk.img expect.img

# ---- --tls-authz with X.509: the matching DN only ----
start_nbd nbd_pid log -v -t -e 0 -k s.sock "${x509[@]}" --tls-creds=tls0 \
    "${authz[@]}" --tls-authz=auth0 disk.img
expect_status 0 nbdinfo --size "$unx"
stop_nbd "$nbd_pid" log
start_nbd nbd_pid log -v -t -e 0 -k s.sock "${x509[@]}" --tls-creds=tls0 \
    --object "authz-simple,id=auth0,identity=CN=someone else" \
    --tls-authz=auth0 disk.img
refused "identity '$dn' is not authorized" nbdcopy evil.img "$unx"
stop_nbd "$nbd_pid" log
same_file disk.img expect.img

# ---- PSK, read-only ----
start_nbd nbd_pid log -v -t -e 0 -r -k s.sock -b 127.0.0.1 -p "$port" \
    "${psk[@]}" --tls-creds=tls0 disk.img
wait_for_port "$port"
ptcp="nbds://alice@127.0.0.1:$port/?tls-psk-file=$c/psk/keys.psk"
punx="nbds+unix://alice@/?socket=s.sock&tls-psk-file=$c/psk/keys.psk"
expect_status 0 nbdinfo --json "$ptcp"
[ "$(json_field exports 0 is_read_only <"$PRL_TMP/out")" = true ] ||
    fail "not read-only over TLS"
grep -qF "TLS (PSK, " log || fail "no PSK log line"
grep -qF "established for 'alice'" log || fail "no PSK user in the log"
nbdcopy "$punx" copy-psk.img
same_file copy-psk.img expect.img
expect_fail nbdcopy evil.img "$punx"
obj=$(qemu_obj psk "$c/psk" alice)
expect_status 0 qemu-img info --object "$obj" --image-opts \
    "$(qemu_inet 127.0.0.1)"
out_contains "virtual size: 8 MiB"
expect_fail qemu-io --object "$obj" --image-opts "$(qemu_unix)" \
    -c 'write -P 1 0 64k'
refused "wrong key" nbdinfo \
    "nbds://alice@127.0.0.1:$port/?tls-psk-file=$c/psk-wrong/keys.psk"
refused "unknown PSK user 'bob'" nbdinfo \
    "nbds+unix://bob@/?socket=s.sock&tls-psk-file=$c/psk-bob/keys.psk"
refused "wrong key" qemu-img info --object \
    "$(qemu_obj psk "$c/psk-wrong" alice)" --image-opts "$(qemu_unix)"
expect_status 0 nbdinfo --size "$ptcp"
stop_nbd "$nbd_pid" log
same_file disk.img expect.img

# ---- PSK, read-write, --tls-authz admits alice and not bob ----
start_nbd nbd_pid log -v -t -e 0 -k s.sock \
    --object "tls-creds-psk,id=tls0,dir=$c/psk-two,endpoint=server" \
    --tls-creds=tls0 --object authz-simple,id=a,identity=alice \
    --tls-authz=a disk.img
refused "identity 'bob' is not authorized" nbdcopy evil.img \
    "nbds+unix://bob@/?socket=s.sock&tls-psk-file=$c/psk-bob/keys.psk"
same_file disk.img expect.img
expect_status 0 qemu-io --object "$(qemu_obj psk "$c/psk" alice)" \
    --image-opts "$(qemu_unix)" -c 'write -P 0x3c 0 64k' -c 'flush'
head -c 65536 /dev/zero | tr '\0' '\074' |
    dd of=expect.img conv=notrunc status=none
nbdcopy "$punx" copy-psk.img
same_file copy-psk.img expect.img
stop_nbd "$nbd_pid" log
same_file disk.img expect.img

# ---- credentials checked at start-up: exit 1, the file named ----
prl_nbd_start_fails()
{
    expect_status 1 "$PRL_NBD_BIN" -k never.sock "$@" disk.img
    [ ! -e never.sock ] || fail "prl-nbd listened with bad TLS options"
}
mkdir bad
cp "$c"/server/*.pem bad/
rm bad/server-key.pem
prl_nbd_start_fails --object "tls-creds-x509,id=t,dir=bad,endpoint=server" \
    --tls-creds=t
err_contains "bad/server-key.pem" "No such file"
cp "$c/client/client-key.pem" bad/server-key.pem
prl_nbd_start_fails --object "tls-creds-x509,id=t,dir=bad,endpoint=server" \
    --tls-creds=t
err_contains "bad/server-key.pem is not the key of the certificate"
cp "$c/server/server-key.pem" bad/server-key.pem
cp "$c/otherca/ca-cert.pem" bad/ca-cert.pem
prl_nbd_start_fails --object "tls-creds-x509,id=t,dir=bad,endpoint=server" \
    --tls-creds=t
err_contains "bad/server-cert.pem is not valid against" "sanity-check=off"
echo 'not a certificate' >bad/ca-cert.pem
prl_nbd_start_fails --object "tls-creds-x509,id=t,dir=bad,endpoint=server" \
    --tls-creds=t
err_contains "bad/ca-cert.pem"
mkdir badpsk
printf 'alice:abc\n' >badpsk/keys.psk
prl_nbd_start_fails --object "tls-creds-psk,id=t,dir=badpsk,endpoint=server" \
    --tls-creds=t
err_contains "badpsk/keys.psk line 1" "hex digits"
printf 'alice:00ff\nnocolon\n' >badpsk/keys.psk
prl_nbd_start_fails --object "tls-creds-psk,id=t,dir=badpsk,endpoint=server" \
    --tls-creds=t
err_contains "badpsk/keys.psk line 2"
prl_nbd_start_fails --object "tls-creds-psk,id=t,dir=nodir,endpoint=server" \
    --tls-creds=t
err_contains "nodir/keys.psk"
prl_nbd_start_fails --object "tls-creds-x509,id=t,dir=$c/server" --tls-creds=t
err_contains "endpoint=server"
prl_nbd_start_fails --object "tls-creds-anon,id=t,endpoint=server" \
    --tls-creds=t
err_contains "unknown object type 'tls-creds-anon'"
prl_nbd_start_fails "${x509[@]}" --tls-creds=nope
err_contains "--tls-creds=nope"
prl_nbd_start_fails --object \
    "tls-creds-x509,id=tls0,dir=$c/server,endpoint=server,verify-peer=off" \
    --tls-creds=tls0 "${authz[@]}" --tls-authz=auth0
err_contains "verify-peer=on"
prl_nbd_start_fails "${authz[@]}" --tls-authz=auth0
err_contains "--tls-authz needs --tls-creds"
# An unused credentials object is loaded (and checked) too, as in QEMU.
prl_nbd_start_fails --object "tls-creds-psk,id=t,dir=badpsk,endpoint=server"
err_contains "badpsk/keys.psk"
same_file disk.img expect.img
