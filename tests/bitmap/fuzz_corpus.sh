#!/bin/bash
# SPDX-License-Identifier: MIT
# Replay fuzz/corpus/fuzz_parallels_ext through the standalone build of
# the Format Extension fuzz target, as a regression test (fuzz/run names
# its targets one by one; this one runs here until it is listed there).
. "$(dirname "$0")/../functions.sh"

bin=$PRL_BUILD/fuzz/fuzz_parallels_ext-standalone
corpus=$PRL_SRC/fuzz/corpus/fuzz_parallels_ext
[ -x "$bin" ] || fail "not built: $bin"
[ -d "$corpus" ] || fail "no corpus: $corpus"
n=$(find "$corpus" -maxdepth 1 -type f | wc -l)
[ "$n" -gt 0 ] || fail "empty corpus: $corpus"
FUZZ_VERBOSE=1 expect_status 0 timeout 300 "$bin" "$corpus"
out_contains "standalone: $n inputs run"
