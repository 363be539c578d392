#!/bin/bash
# SPDX-License-Identifier: MIT
# An export with a minimum block size (prl-nbd --min-block-size=4096)
# takes byte ranges that are not multiples of it: reads, writes and
# zeroes go to the server as whole blocks (read-modify-write at the
# ends), status answers for any offset, and a 10000-byte source converts
# into it; the served file then holds exactly what was written.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../nbd/lib/nbd-functions.sh"
. "$(dirname "$0")/lib/client-functions.sh"
requires cmp

head -c 65536 /dev/urandom >un.raw
cp un.raw want.raw
head -c 10000 /dev/urandom >small.raw

start_nbd p1 log1 -v -t -e 0 --min-block-size=4096 -k un.sock un.raw
u=$(img_uri un.sock)
prl_io -w -c "write -P 0x11 1000 3000" -c "write -P 0x22 4095 2" \
    -c "zero 30000 9000" -c "read -P 0x11 1000 3000" \
    -c "read -P 0x22 4095 2" -c "read -P 0 30000 9000" \
    -c "status 1001 100" "$u" >io.txt
cat io.txt
grep -q '^1001 100 data' io.txt || fail "no status at an unaligned offset"
prl_img convert -n -O raw small.raw "$u"
expect_status 0 prl_img map --start-offset=12345 --max-length=1000 \
    --output=json "$u"
out_contains '"start": 12345'
stop_nbd "$p1" log1

"$PYTHON" - <<'PY'
b = bytearray(open('want.raw', 'rb').read())
b[1000:4000] = b'\x11' * 3000
b[4095:4097] = b'\x22' * 2
b[30000:39000] = bytes(9000)
b[0:10000] = open('small.raw', 'rb').read()
open('want.raw', 'wb').write(b)
PY
same_file un.raw want.raw
