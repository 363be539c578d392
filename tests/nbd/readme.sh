#!/bin/bash
# SPDX-License-Identifier: MIT
# The README's usage examples run as written: every ```sh block after the
# build instructions ("Using prl-img" onwards: prl-img, serving over NBD,
# TLS), in order, as one bash -e script, against this build.  Only what
# a test must not share is changed: /tmp/prl-example and /tmp/prl-tls
# become directories of this test, port 10810 a free port, and the servers
# the examples fork are stopped at the end by the PIDs in their pid files
# (the examples stop them too; this covers a failure half way).
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/lib/nbd-functions.sh"
requires nbdinfo nbdsh qemu-img certtool psktool dd

port=$(free_port)
ex=$PRL_TMP/example
tls=$PRL_TMP/tls
on_exit 'for f in "$ex"/*.pid "$tls"/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done; true'

awk '/^## Using prl-img/ { on = 1 }
     on && /^```sh$/ { f = 1; next }
     f && /^```$/ { f = 0; print ""; next }
     f' "$PRL_SRC/README.md" >blocks.sh
[ "$(grep -c 'prl-img' blocks.sh)" -ge 20 ] ||
    fail "the README's examples were not found ($(wc -l <blocks.sh) lines)"
{
    echo 'set -e -o pipefail'
    # The README's PATH line names build/ in the sources.
    sed -e "s|\$PWD/build/|$PRL_BUILD/|g" \
        -e "s|/tmp/prl-example|$ex|g" -e "s|/tmp/prl-tls|$tls|g" \
        -e "s|10810|$port|g" blocks.sh
} >examples.sh
(cd "$PRL_SRC" && PATH=/usr/bin:$PATH bash "$PRL_TMP/examples.sh") >out.txt 2>&1 ||
    fail "README examples failed: $(tail -20 out.txt)"
grep -q 'Images are identical' out.txt || fail "no compare ran"
grep -q "exports available: 1" out.txt || fail "prl-nbd -L printed nothing"
echo "$(grep -c '' examples.sh) lines of README examples ran"
