# SPDX-License-Identifier: MIT
# Short commands over meson/ninja: build, demo, the full check (normal and
# ASan+UBSan builds, every suite), libFuzzer runs and the format check.

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
# Seconds of libFuzzer per target in `make fuzz`.
FUZZ_TIME  ?= 60

# Settings for the sanitizer run: leaks count, the first report stops.
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
           PRL_SANITIZED=1

.PHONY: all build deps demo check check-build check-asan fuzz fuzz-merge \
        format-check \
        clean help

all: build

help:
	@echo "make              build into $(BUILD)/"
	@echo "make demo         install deps, build, run scripts/demo"
	@echo "make check        install deps; format check; build and run every suite, then"
	@echo "                  the same in an ASan+UBSan build ($(ASAN_BUILD)/)"
	@echo "make fuzz         libFuzzer build ($(FUZZ_BUILD)/, clang), each"
	@echo "                  target for FUZZ_TIME=$(FUZZ_TIME) seconds"
	@echo "make fuzz-merge   add new-coverage inputs to fuzz/corpus/"
	@echo "make format-check clang-format --dry-run over the C sources"

# Configure only once; ninja re-runs meson itself when meson.build changes.
build:
	@test -f $(BUILD)/build.ninja || meson setup $(BUILD)
	ninja -C $(BUILD)

deps:
	scripts/install-deps

# deps before build even under make -j.
demo: deps
	@$(MAKE) --no-print-directory build
	scripts/demo $(BUILD)

# Both builds run their suites even when the first fails, so one CI run
# reports everything; the target fails if either did.
check: deps
	@st=0; \
	scripts/format-check || st=1; \
	$(MAKE) --no-print-directory check-build || st=1; \
	$(MAKE) --no-print-directory check-asan || st=1; \
	if [ $$st -ne 0 ]; then echo "make check: FAILED"; else \
	echo "make check: all suites passed in $(BUILD) and $(ASAN_BUILD)"; fi; \
	exit $$st

check-build: build
	scripts/run-tests $(BUILD)

check-asan:
	@test -f $(ASAN_BUILD)/build.ninja || meson setup $(ASAN_BUILD) \
	    -Db_sanitize=address,undefined -Db_lundef=false
	ninja -C $(ASAN_BUILD)
	$(ASAN_ENV) scripts/run-tests $(ASAN_BUILD)

# A clang build with the libFuzzer binaries (plus ASan and UBSan, which
# turn silent memory errors into findings).  -Dwerror=false: a warning
# only clang emits must not stop a fuzzing session.
fuzz:
	@test -f $(FUZZ_BUILD)/build.ninja || CC=clang meson setup \
	    $(FUZZ_BUILD) -Dfuzz=true -Dtests=false -Dwerror=false \
	    -Db_sanitize=address,undefined -Db_lundef=false
	ninja -C $(FUZZ_BUILD)
	fuzz/libfuzzer $(FUZZ_BUILD) $(FUZZ_TIME)

# Add what `make fuzz` found that reaches new code to fuzz/corpus/.
fuzz-merge:
	fuzz/libfuzzer --merge $(FUZZ_BUILD)

format-check:
	scripts/format-check

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
