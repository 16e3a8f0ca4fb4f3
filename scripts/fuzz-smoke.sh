#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang and runs each for a set time; fails on a
# finding. `make fuzz` runs it with FUZZ_SECONDS (60; CI: 10) in the ASan tree (build-asan, -O0, shared
# with `make asan`); a build directory that does not exist yet is configured as a separate optimised
# fuzz-only tree, which runs more inputs a second (worth it for long runs).
#
#   scripts/fuzz-smoke.sh [seconds per target] [build dir] [target...]
#   scripts/fuzz-smoke.sh 300 build-fuzz fuzz_login       # one target, five minutes, optimised tree
#
# For each target it first replays the committed regression inputs (tests/fuzz/regressions/<target>/),
# then fuzzes from the seed corpus (tests/fuzz/corpus/<target>/, read only) plus a working corpus kept
# in the build directory (<build>/corpus/<target>/), so repeated runs build on each other. A crash,
# sanitizer report, timeout or leak leaves its reproducer in <build>/findings/<target>/ and fails the
# run; replay one with  <build>/tests/fuzz/<target> <file>.
set -euo pipefail

seconds=${1:-30}
build=${2:-build-fuzz}
shift $(($# > 2 ? 2 : $#))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(fuzz_pdu fuzz_text fuzz_login fuzz_cdb fuzz_label fuzz_thin_page fuzz_checksum_page fuzz_isns fuzz_control fuzz_manager fuzz_initiator fuzz_target)
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ ! -f "$build/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DISPACE_FUZZ=ON -DISPACE_TESTS=OFF -DISPACE_BENCH=OFF >/dev/null
fi
cmake --build "$build" --target "${targets[@]}"

failed=()
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/$t"
  seeds="tests/fuzz/corpus/$t"
  work="$build/corpus/$t"
  findings="$build/findings/$t"
  mkdir -p "$work" "$findings"

  regressions=(tests/fuzz/regressions/"$t"/*)
  if [ -e "${regressions[0]}" ]; then
    if ! "$bin" -rss_limit_mb=2048 "${regressions[@]}" >"$findings/regressions.log" 2>&1; then
      echo "$t: a committed regression input fails again; see $findings/regressions.log" >&2
      failed+=("$t")
      continue
    fi
  fi

  log="$findings/fuzz.log"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb bounds memory as the daemon must.
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$findings/" "$work" "$seeds" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "$t: ${seconds}s, ${runs:-?} inputs, no finding (corpus $(ls "$work" | wc -l) + $(ls "$seeds" | wc -l) seeds)"
  else
    echo "$t: FINDING after at most ${seconds}s; reproducer and log in $findings/" >&2
    grep -m1 -E "ERROR|runtime error|deadly signal|timeout" "$log" >&2 || true
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz-smoke: findings in ${failed[*]}" >&2
  exit 1
fi
