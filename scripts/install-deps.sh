#!/usr/bin/env bash
# Installs the Debian 12 packages ispace builds and tests with. Idempotent: it asks apt only for what
# is missing, and does nothing (not even `apt-get update`) when everything is there.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev clang-format
  liburing-dev libisal-dev libssl-dev libfuse3-dev fuse3 nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # peers for conformance and interop tests
  libiscsi-bin qemu-utils qemu-block-extra tgt e2fsprogs iproute2 procps python3
  # iSNS (RFC 4171) system tests: Debian's open-isns server and its isnsadm as an independent client
  open-isns-server open-isns-utils
  # make bench: the loopback bandwidth limit, the plot, the page-cache check (fincore); fio for the
  # attach path against a raw loop device
  iperf3 gnuplot-nox util-linux fio
)

# A third target for make bench, wanted but not needed: Debian 12 ships istgt, and make bench runs
# without it (saying so) wherever it is missing or would not install.
optional=(istgt)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

missing_optional=()
for p in "${optional[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing_optional+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ] && [ ${#missing_optional[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]} ${missing_optional[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for p in "${missing_optional[@]}"; do
  if ! $sudo apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1; then
    echo "install-deps: optional package $p did not install; make bench runs without it" >&2
  fi
done
