#!/bin/bash
# SPDX-License-Identifier: MIT
# Bad NBD URIs and unreachable servers: prl-img exits 1 with a message
# that names the part of the URI at fault; nothing is created; check and
# create refuse URIs clearly.
. "$(dirname "$0")/../functions.sh"

bad()
{
    local uri=$1
    shift
    expect_status 1 prl_img info "$uri"
    err_contains "$@"
}

bad 'nbd://h:99999/x' "port '99999' is out of range"
bad 'nbd://h:0/x' "port '0' is out of range"
bad 'nbd://h:12ab/x' "port '12ab' is not a number"
bad 'nbd+unix:///x' "needs the query parameter 'socket=PATH'"
bad 'nbd+unix://host/x?socket=/s' "host 'host' given for a Unix socket"
bad 'nbd://h/x?socket=/s' "'socket' is for nbd+unix://"
bad 'nbd://h/x?bogus=1' "unknown query parameter 'bogus'"
bad 'nbd://h/x?tls-certificates=/d' "'tls-certificates' needs TLS"
bad 'nbds://h/x?tls-verify-peer=maybe' "tls-verify-peer 'maybe' is not 0 or 1"
bad 'nbd://h/a%zzb' "export name 'a%zzb' has a bad percent-escape"
bad 'nbd://h/a b' "must be percent-encoded"
bad 'nbd://h/a%00b' "decodes to a NUL"
bad 'nbd://[::1/x' "lacks the closing ']'"
bad 'nbd://h/x#frag' "fragment '#frag'"
bad 'nbd+vsock://2:10809/x' "scheme 'nbd+vsock' (AF_VSOCK) is not supported"
bad 'nbds://h/?tls-certificates=/a&tls-psk-file=/b' "exclude each other"
bad 'nbd://h/?tls-type=psk' "'tls-type' needs TLS"

# Refused connections: a free port nobody listens on, a missing socket.
port=$(free_port)
bad "nbd://127.0.0.1:$port/" "cannot connect to host '127.0.0.1' port $port" \
    "Connection refused"
bad "nbd+unix:///?socket=$PRL_TMP/none.sock" \
    "cannot connect to socket '$PRL_TMP/none.sock'" "No such file"
bad "nbd://no-such-host.invalid/" "cannot resolve host 'no-such-host.invalid'"

# Every command that opens images fails the same way.
expect_status 1 prl_img map "nbd://127.0.0.1:$port/"
err_contains "Connection refused"
expect_status 2 prl_img compare "nbd://127.0.0.1:$port/" "nbd://127.0.0.1:$port/"
err_contains "Connection refused"
prl_img create -q -f raw src.raw 1M
expect_status 1 prl_img convert -O raw src.raw "nbd://127.0.0.1:$port/"
err_contains "cannot create an NBD export" "convert -n"
[ ! -e "nbd:" ] || fail "convert created a local file for a URI"
expect_status 1 prl_img convert -n -O raw src.raw "nbd://127.0.0.1:$port/"
err_contains "Connection refused"
expect_fail prl_img check "nbd://127.0.0.1:$port/"
err_contains "check is not supported for nbd"
# Snapshots and commit work on Parallels disk directories only.
expect_status 1 prl_img snapshot -l "nbd://127.0.0.1:$port/"
err_contains "is an NBD URI; snapshot works on a Parallels disk directory"
expect_status 1 prl_img commit "nbd+unix:///?socket=/x"
err_contains "is an NBD URI; commit works on a Parallels disk directory"
# A format that needs the image file itself does not fit a URI.
bad_fmt()
{
    expect_status 1 prl_img info -f parallels "nbd://127.0.0.1:$port/"
    err_contains "format 'parallels' cannot be read over NBD"
}
bad_fmt
echo "all bad URIs refused"
