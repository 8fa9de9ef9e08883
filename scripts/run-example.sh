#!/usr/bin/env bash
# Quick start: configures build/ (Release; Ninja if available), builds the training example
# and runs it. Extra arguments go to the example: scripts/run-example.sh --help
# `scripts/run-example.sh libtorch [...]` runs the libtorch version of it instead
# (examples/libtorch/train_charlm.cpp), installing libtorch first (scripts/setup-libtorch.sh).
set -euo pipefail
# shellcheck source=scripts/deps.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/deps.sh"
zero_ensure_deps
cd "${ZERO_ROOT}"

target=zero_example_train
if [[ "${1:-}" == "libtorch" ]]; then
  shift
  target=zero_example_libtorch
  scripts/setup-libtorch.sh
fi
build_dir="${ZERO_BUILD_DIR:-${ZERO_ROOT}/build}"
zero_configure "${build_dir}" "${ZERO_BUILD_TYPE:-Release}"
cmake --build "${build_dir}" --target "${target}" -j "${ZERO_JOBS}"
exec "${build_dir}/examples/${target}" "$@"
