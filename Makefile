# ispace — the two commands of the quick start are `make run` and `make test`.
#
#   make run        install what is missing, build, start ispaced on ./var/lun0.img (1 GiB, thin)
#   make test       install, build, run every test (unit, system, interop, conformance)
#   make asan       the same tests built with AddressSanitizer + UndefinedBehaviorSanitizer (clang)
#   make fuzz       run each libFuzzer target for FUZZ_SECONDS (default 60), built in the ASan tree
#   make tsan       the unit tests built with ThreadSanitizer (clang; not in CI: docs/HACKING.md)
#   make bench      ispaced against Debian's tgt (and istgt), side by side (docs/performance.md);
#                   BENCH_QUICK=1 for a two-minute smoke run, BENCH_BASELINE=/old/ispaced to compare builds;
#                   then the attach path against a raw loop device, and a data-space mirror against
#                   `ispace cp`, with fio (docs/dataspaces.md)
#   make lint       source checks CI runs first: clang-format drift, public headers self-contained,
#                   layers that include only layers below them
#   make build      just build (build/)
#   make install    binaries, systemd unit, bash completion and man pages under PREFIX (/usr/local);
#                   DESTDIR stages them elsewhere (docs/operations.md)

BUILD     ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
# The fuzzers are built in the ASan tree: one clang build whose libraries carry both the sanitizers and
# libFuzzer's coverage hooks serves `make asan` and `make fuzz`, so CI compiles the tree twice, not
# three times (a separate optimised fuzz build took ~6.5 of CI's 45 minutes). FUZZ_BUILD=build-fuzz
# makes a separate optimised one (more inputs a second) for long runs.
FUZZ_BUILD ?= $(ASAN_BUILD)
JOBS      ?= $(shell nproc)
PREFIX    ?= /usr/local
PORT      ?= 3260
IQN       ?= iqn.2026-11.org.ispace:default
CMAKE_FLAGS ?=
FUZZ_SECONDS ?= 60
# Under the sanitizers libiscsi runs the suites the target core names, on a file LUN and on a data-space
# export (conformance_core, conformance_space_core); the whole suite on 512-byte and 4 KiB blocks, one
# and two portals, runs in `make test`. This keeps `.ci/run` inside its 45 minutes on two cores (the
# whole suite under ASan took 254 s of a 480 s run); ASAN_CTEST_ARGS= runs everything.
ASAN_CTEST_ARGS ?= -E '^conformance_(all|multipath)_thin(512|4096)$$'
# make bench: rounds, seconds per run, LUN file size, smoke run, an older ispaced to compare, LUN dir.
# Empty means the default (5 rounds, 5 s, 1G; /var/tmp); the environment's values count too.
BENCH_ROUNDS ?=
BENCH_SECONDS ?=
BENCH_SIZE ?=
BENCH_QUICK ?=
BENCH_BASELINE ?=
BENCH_DIR ?=

.PHONY: all deps build run test asan tsan fuzz bench clean lint install

all: build

deps:
	@./scripts/install-deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

run: build
	@mkdir -p var
	@echo "ispaced: serving iscsi://127.0.0.1:$(PORT)/$(IQN)/0 (backing file ./var/lun0.img); Ctrl-C stops it"
	exec $(BUILD)/tools/ispaced --listen 127.0.0.1:$(PORT) --iqn $(IQN) --lun var/lun0.img,size=1G,thin

# The libiscsi conformance runs (tests/conformance) mostly wait: they run all at once in their own ctest,
# in the background, beside the rest of the tree's tests on JOBS slots (-LE conformance); their output
# follows. ctest shows a passing test's output only with -V, so the conformance runs' per-test tables
# (written to conformance/*.txt) are printed afterwards, then their one-line summaries; the two ctest
# statuses decide.
define ctest_with_reports
	rm -rf $(1)/conformance $(1)/conformance-ctest.*
	cd $(1) && { if [ -f tests/conformance/CTestTestfile.cmake ]; then \
	    (cd tests/conformance && $(2) ctest --output-on-failure -j 8 --timeout 1800 $(3) \
	      > ../../conformance-ctest.log 2>&1; echo $$? > ../../conformance-ctest.status) & \
	  fi; \
	  $(2) ctest --output-on-failure -j $(JOBS) --timeout 900 -LE conformance $(3); status=$$?; wait; \
	  if [ -f conformance-ctest.status ]; then \
	    echo; echo "libiscsi conformance (tests/conformance, run beside the tests above):"; \
	    cat conformance-ctest.log; [ "$$(cat conformance-ctest.status)" = 0 ] || status=1; \
	  fi; \
	  if ls conformance/*.txt >/dev/null 2>&1; then \
	    cat conformance/*.txt; echo; echo "libiscsi conformance, per run:"; \
	    grep -h '^conformance .* tests, ' conformance/*.txt; \
	  fi; exit $$status; }
endef

test: build
	$(call ctest_with_reports,$(BUILD),)

# clang at -O0: it compiles this tree about 30 % faster than gcc at -O0 under the sanitizers, and it is
# the compiler libFuzzer needs. A tree configured earlier with another compiler is configured afresh.
define configure_asan
	@if [ -f $(ASAN_BUILD)/CMakeCache.txt ] && ! grep -q '^CMAKE_CXX_COMPILER:.*clang' $(ASAN_BUILD)/CMakeCache.txt; then \
	  echo "$(ASAN_BUILD) was configured with another compiler: configuring it afresh with clang"; \
	  rm -rf $(ASAN_BUILD); fi
	CC=clang CXX=clang++ cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DISPACE_SANITIZE=ON \
	  -DISPACE_FUZZ=ON -DISPACE_TESTS=ON -DISPACE_BENCH=OFF $(CMAKE_FLAGS)
endef

asan: deps
	$(call configure_asan)
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	$(call ctest_with_reports,$(ASAN_BUILD),ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1,$(ASAN_CTEST_ARGS))

# The unit tests only: they run every layer's threads (reactors, FUSE workers, the volume's home and
# I/O reactors, the holder's threads) on memory devices, where ThreadSanitizer's 5-15x slowdown still
# fits in minutes. Any report fails the test that caused it (TSan's exit status 66).
tsan: deps
	@if [ -f $(TSAN_BUILD)/CMakeCache.txt ] && ! grep -q '^CMAKE_CXX_COMPILER:.*clang' $(TSAN_BUILD)/CMakeCache.txt; then \
	  echo "$(TSAN_BUILD) was configured with another compiler: configuring it afresh with clang"; \
	  rm -rf $(TSAN_BUILD); fi
	CC=clang CXX=clang++ cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DISPACE_TSAN=ON \
	  -DISPACE_TESTS=ON -DISPACE_BENCH=OFF $(CMAKE_FLAGS)
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target unit_tests
	cd $(TSAN_BUILD) && TSAN_OPTIONS="second_deadlock_stack=1 $$TSAN_OPTIONS" ctest -L unit -j $(JOBS) --output-on-failure

lint: deps
	./scripts/check-format.sh
	./scripts/check-public-headers.sh
	./scripts/check-layers.py

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD) build-fuzz

# ispaced, tgt and istgt under the same clients in alternating rounds; a table on stdout,
# bench/results/latest.json and latest.png. It starts and stops every server itself (127.0.0.1 only).
bench: build
	BENCH_ROUNDS="$(BENCH_ROUNDS)" BENCH_SECONDS="$(BENCH_SECONDS)" BENCH_SIZE="$(BENCH_SIZE)" \
	  BENCH_QUICK="$(BENCH_QUICK)" BENCH_BASELINE="$(BENCH_BASELINE)" BENCH_DIR="$(BENCH_DIR)" \
	  python3 bench/run_bench.py --build $(BUILD); status=$$?; \
	  BENCH_ROUNDS="$(BENCH_ROUNDS)" BENCH_SECONDS="$(BENCH_SECONDS)" BENCH_SIZE="$(BENCH_SIZE)" \
	  BENCH_QUICK="$(BENCH_QUICK)" BENCH_DIR="$(BENCH_DIR)" python3 bench/attach_bench.py --build $(BUILD) \
	  && BENCH_ROUNDS="$(BENCH_ROUNDS)" BENCH_SECONDS="$(BENCH_SECONDS)" BENCH_SIZE="$(BENCH_SIZE)" \
	  BENCH_QUICK="$(BENCH_QUICK)" BENCH_DIR="$(BENCH_DIR)" python3 bench/space_bench.py --build $(BUILD) \
	  && BENCH_ROUNDS="$(BENCH_ROUNDS)" BENCH_SECONDS="$(BENCH_SECONDS)" BENCH_QUICK="$(BENCH_QUICK)" \
	  BENCH_DIR="$(BENCH_DIR)" python3 bench/thin_bench.py --build $(BUILD) \
	  && exit $$status

# Each libFuzzer target for FUZZ_SECONDS (clang, ASan+UBSan, in $(FUZZ_BUILD)); fails on a finding.
fuzz: deps
	$(if $(filter $(ASAN_BUILD),$(FUZZ_BUILD)),$(call configure_asan))
	CC=clang CXX=clang++ ./scripts/fuzz-smoke.sh $(FUZZ_SECONDS) $(FUZZ_BUILD)
