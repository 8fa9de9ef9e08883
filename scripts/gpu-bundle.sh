#!/usr/bin/env bash
# Prepares, on a machine with Debian's package archive in reach, what scripts/gpu-check.sh needs
# on a GPU machine that reaches no network: the Debian packages of doctest and Google Benchmark
# (the tests' and the benchmark's only dependencies beyond CMake, a C++20 compiler and the CUDA
# toolkit), downloaded (not installed) into .gpu-bundle/ (ignored by git). Carry that folder to
# the GPU machine with the working tree; gpu-check.sh unpacks it into its build folder and
# points CMake at it, installing nothing.
#
#   scripts/gpu-bundle.sh            # then, on the GPU machine: scripts/gpu-check.sh
#
# Environment: ZERO_GPU_BUNDLE (default .gpu-bundle), ZERO_GPU_BUNDLE_PACKAGES (the packages).
set -euo pipefail
ZERO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="${ZERO_GPU_BUNDLE:-${ZERO_ROOT}/.gpu-bundle}"
packages="${ZERO_GPU_BUNDLE_PACKAGES:-doctest-dev libbenchmark-dev libbenchmark1debian}"

log() { printf '[gpu-bundle] %s\n' "$*" >&2; }

command -v apt-get >/dev/null 2>&1 || { log "apt-get not found: run this on a Debian or Ubuntu machine"; exit 1; }
mkdir -p "${bundle}"
rm -f "${bundle}"/*.deb
# `apt-get download` needs the package lists; refresh them when this user may
if [[ "$(id -u)" == 0 ]]; then apt-get update -qq || log "apt-get update failed; trying the lists as they are"; fi
# shellcheck disable=SC2086
(cd "${bundle}" && apt-get download -qq ${packages}) || { log "apt-get download ${packages} failed"; exit 1; }
log "in ${bundle}: $(cd "${bundle}" && ls -- *.deb | tr '\n' ' ')($(du -sh "${bundle}" | cut -f1))"
