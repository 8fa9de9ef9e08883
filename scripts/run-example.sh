#!/usr/bin/env bash
# Quick start: configures build/ (Release; Ninja if available), builds the training example
# and runs it. Extra arguments go to the example: scripts/run-example.sh --help
set -euo pipefail
# shellcheck source=scripts/deps.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/deps.sh"
zero_ensure_deps
cd "${ZERO_ROOT}"

build_dir="${ZERO_BUILD_DIR:-${ZERO_ROOT}/build}"
zero_configure "${build_dir}" "${ZERO_BUILD_TYPE:-Release}"
cmake --build "${build_dir}" --target zero_example_train -j "${ZERO_JOBS}"
exec "${build_dir}/examples/zero_example_train" "$@"
