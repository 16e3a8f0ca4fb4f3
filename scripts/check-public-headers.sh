#!/usr/bin/env bash
# Fails when a public header (include/ispace/*.hpp) includes a private one, or does not compile on its
# own with only include/ on the include path. A user of the installed library has include/ and nothing
# of src/, so what the public headers name must be there. CI runs it through `make lint`.
#
#   scripts/check-public-headers.sh        check every public header
#   CXX=clang++ scripts/check-public-headers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CXX:-g++}
# Only what the command line gives: no CPATH or CPLUS_INCLUDE_PATH sneaking src/ in.
unset CPATH CPLUS_INCLUDE_PATH C_INCLUDE_PATH
flags=(-std=c++20 -fsyntax-only -I include)
# A public header may use fmt (a system package); give its include flags if pkg-config knows them.
if pkg-config --exists fmt 2>/dev/null; then
    read -r -a fmt_flags <<<"$(pkg-config --cflags-only-I fmt)"
    flags+=("${fmt_flags[@]}")
fi
# The first path component of a private include: a folder of src/ ("common/x.hpp", "net/y.hpp", ...).
mapfile -t private_dirs < <(find src -mindepth 1 -maxdepth 1 -type d -printf '%f\n')

headers=(include/ispace/*.hpp)
bad=0
for h in "${headers[@]}"; do
    # 1. Every include of the project's own headers is "ispace/..." and names a file in include/.
    while IFS= read -r inc; do
        [ -n "$inc" ] || continue
        top=${inc%%/*}
        if [ "$top" = ispace ]; then
            if [ ! -f "include/$inc" ]; then
                echo "$h: includes \"$inc\", which is not in include/" >&2
                bad=1
            fi
            continue
        fi
        for d in "${private_dirs[@]}"; do
            if [ "$top" = "$d" ]; then
                echo "$h: includes the private header \"$inc\" (src/$inc); public headers include only ispace/..." >&2
                bad=1
            fi
        done
        if [[ "$inc" != */* && -f "src/$inc" ]]; then
            echo "$h: includes \"$inc\", a private header" >&2
            bad=1
        fi
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]\([^>"]*\)[>"].*/\1/p' "$h")

    # 2. It compiles alone, as the first include of a translation unit.
    if ! out=$(printf '#include "%s"\n' "${h#include/}" | "$cxx" "${flags[@]}" -x c++ - 2>&1); then
        echo "$h: does not compile on its own with ${flags[*]}:" >&2
        printf '%s\n' "$out" | head -20 | sed 's/^/    /' >&2
        bad=1
    fi
done
if [ "$bad" -ne 0 ]; then
    echo "check-public-headers: failed; a public header may include only public headers (include/ispace/)" >&2
    exit 1
fi
echo "check-public-headers: ${#headers[@]} public headers include only public headers and compile alone"
