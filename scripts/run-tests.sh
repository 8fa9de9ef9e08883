#!/usr/bin/env bash
# Configures build/ (Release; Ninja if available), builds everything and runs the whole test
# suite. Extra arguments go to ctest: scripts/run-tests.sh -L unit
set -euo pipefail
# shellcheck source=scripts/deps.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/deps.sh"
zero_ensure_deps
cd "${ZERO_ROOT}"

build_dir="${ZERO_BUILD_DIR:-${ZERO_ROOT}/build}"
zero_configure "${build_dir}" "${ZERO_BUILD_TYPE:-Release}"
cmake --build "${build_dir}" -j "${ZERO_JOBS}"
ctest --test-dir "${build_dir}" --output-on-failure "$@"
