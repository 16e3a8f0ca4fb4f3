#!/usr/bin/env bash
# Fails when a C++ file in the tree differs from what clang-format makes of it (.clang-format at the
# top). `scripts/check-format.sh --fix` rewrites the files instead. CI runs it through `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.h')
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    bad+=("$f")
  fi
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "check-format: ${#bad[@]} file(s) differ from clang-format ($(clang-format --version | head -1)):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "run scripts/check-format.sh --fix (or clang-format -i FILE) and commit the result" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files clean"
