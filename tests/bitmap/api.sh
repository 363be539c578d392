#!/bin/bash
# SPDX-License-Identifier: MIT
# Build api.c against the build's libprl.a, with the build's compiler and
# sanitizers, and run it: the bitmap API where prl-img cannot reach it
# (read-only handles, resize, threads, merges both ways at once).
. "$(dirname "$0")/../functions.sh"

lib=$PRL_BUILD/lib/libprl.a
[ -f "$lib" ] || fail "libprl is not built: $lib"
requires pkg-config

# The compiler of the build, from its ninja rule (cc, gcc, clang...).
cc=$(sed -n '/^rule c_COMPILER$/,/^$/s/^ command = \(.*\) \$ARGS.*/\1/p' \
    "$PRL_BUILD/build.ninja" | head -n 1)
cc=${cc:-cc}
san=$("$PYTHON" -c 'import json, sys
for o in json.load(open(sys.argv[1])):
    if o["name"] == "b_sanitize":
        print(o["value"])' "$PRL_BUILD/meson-info/intro-buildoptions.json")
flags=(-std=gnu11 -O1 -g -Wall -Wextra -Werror -Wshadow -Wvla
    -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread)
if [ -n "$san" ] && [ "$san" != none ]; then
    flags+=("-fsanitize=$san" -fno-omit-frame-pointer)
fi
# shellcheck disable=SC2046
$cc "${flags[@]}" -I"$PRL_SRC/include" -I"$PRL_SRC/lib" \
    "$PRL_SRC/tests/bitmap/api.c" "$lib" \
    $(pkg-config --cflags --libs nettle libxml-2.0) -o api ||
    fail "api.c does not build"
expect_status 0 ./api "$PRL_TMP"
out_contains "api: all checks passed"
