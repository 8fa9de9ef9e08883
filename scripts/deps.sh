#!/usr/bin/env bash
# Checks (and as root, installs) what building and testing zero needs. Sourced by the other
# scripts; `scripts/deps.sh` alone just runs the check.
#
#   cmake (>= 3.20), a C++ compiler with C++20 (g++ >= 12; $CXX is honoured), ninja (optional),
#   and the Debian packages in ZERO_APT_PACKAGES.
#
# Missing packages: as root they are installed with apt-get; otherwise the script prints the
# `sudo apt-get install -y ...` line to run and exits 1.
#
# Sets: ZERO_ROOT (the repository root), ZERO_CMAKE_GENERATOR (Ninja when available, else
# Unix Makefiles), ZERO_JOBS (build parallelism; override with ZERO_JOBS=N). When ccache is
# installed (and ZERO_CCACHE is not 0), the compiler launchers of the builds these scripts
# configure are ccache (its cache stays where ccache keeps it, outside the clone): only this
# project's own builds, never a consumer's.

# The Debian packages the build needs; the one place to add more (e.g. libopenmpi-dev openmpi-bin).
# clang-14 and libclang-rt-14-dev build the libFuzzer targets (cmake/zeroFuzz.cmake).
# An environment value replaces the list (used to test this script). ZERO_APT_EXTRA adds to it
# (.ci/run adds ccache).
ZERO_APT_PACKAGES="${ZERO_APT_PACKAGES:-doctest-dev libeigen3-dev libbenchmark-dev libopenmpi-dev openmpi-bin wamerican clang-14 libclang-rt-14-dev}${ZERO_APT_EXTRA:+ ${ZERO_APT_EXTRA}}"

ZERO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZERO_MIN_GCC=12

zero_log() { printf '[zero] %s\n' "$*" >&2; }

# Prints the packages of ZERO_APT_PACKAGES (plus tools) that are not installed.
zero_missing_packages() {
  local missing=() pkg status
  # Tools first: a bare machine gets them from apt too.
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  if [[ -z "${CXX:-}" ]] && ! command -v g++ >/dev/null 2>&1; then missing+=(g++); fi
  for pkg in ${ZERO_APT_PACKAGES}; do
    status="$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)"
    [[ "${status}" == "install ok installed" ]] || missing+=("${pkg}")
  done
  echo "${missing[*]}"
}

# Major version of a g++ binary, or empty if it cannot be run.
zero_gcc_major() { { "$1" -dumpversion 2>/dev/null || true; } | cut -d. -f1; }

zero_check_compiler() {
  if [[ -n "${CXX:-}" ]]; then
    command -v "${CXX}" >/dev/null 2>&1 || { zero_log "CXX=${CXX} is not an executable"; return 1; }
    zero_log "C++ compiler: ${CXX} (from \$CXX)"
    return 0
  fi
  local major candidate
  major="$(zero_gcc_major g++)"
  if [[ -n "${major}" && "${major}" -ge "${ZERO_MIN_GCC}" ]]; then
    zero_log "C++ compiler: g++ ${major}"
    return 0
  fi
  # An older default g++: use a newer versioned one if installed.
  for candidate in g++-14 g++-13 g++-12; do
    if command -v "${candidate}" >/dev/null 2>&1; then
      export CXX="${candidate}"
      zero_log "C++ compiler: ${candidate} (g++ is ${major:-missing}, zero needs >= ${ZERO_MIN_GCC})"
      return 0
    fi
  done
  zero_log "g++ ${major:-missing} is too old: zero needs g++ >= ${ZERO_MIN_GCC} (C++20), or set CXX"
  return 1
}

zero_check_cmake() {
  local version
  version="$(cmake --version | head -n1 | awk '{print $3}')"
  if [[ "$(printf '%s\n3.20\n' "${version}" | sort -V | head -n1)" != "3.20" ]]; then
    zero_log "cmake ${version} is too old: zero needs cmake >= 3.20"
    return 1
  fi
}

zero_ensure_deps() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    zero_log "not a Debian-like system (no dpkg-query): make sure cmake >= 3.20, g++ >= ${ZERO_MIN_GCC}," \
             "doctest, Eigen 3 and Google Benchmark are installed"
  else
    local missing
    missing="$(zero_missing_packages)"
    if [[ -n "${missing}" ]]; then
      if [[ "$(id -u)" -eq 0 ]]; then
        zero_log "installing missing packages: ${missing}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        # shellcheck disable=SC2086  # the list is word-split on purpose
        apt-get install -y --no-install-recommends ${missing}
      else
        zero_log "missing packages: ${missing}; install them with:"
        echo "sudo apt-get install -y ${missing}"
        exit 1
      fi
    fi
  fi
  command -v cmake >/dev/null 2>&1 || { zero_log "cmake not found"; exit 1; }
  zero_check_cmake || exit 1
  zero_check_compiler || exit 1

  if command -v ninja >/dev/null 2>&1; then
    ZERO_CMAKE_GENERATOR="Ninja"
  else
    ZERO_CMAKE_GENERATOR="Unix Makefiles"
    zero_log "ninja not found (optional): using Unix Makefiles"
  fi
  ZERO_JOBS="${ZERO_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  export ZERO_ROOT ZERO_CMAKE_GENERATOR ZERO_JOBS
  zero_use_ccache
}

# Makes ccache the compiler launcher of the builds configured from here (CMake reads these
# variables when a build directory is first configured). Paths below the clone are hashed
# relative to it, so that two clones in different folders share the cache.
zero_use_ccache() {
  [[ "${ZERO_CCACHE:-1}" != 0 ]] && command -v ccache >/dev/null 2>&1 || return 0
  export CMAKE_CXX_COMPILER_LAUNCHER="${CMAKE_CXX_COMPILER_LAUNCHER:-ccache}"
  export CMAKE_C_COMPILER_LAUNCHER="${CMAKE_C_COMPILER_LAUNCHER:-ccache}"
  export CMAKE_CUDA_COMPILER_LAUNCHER="${CMAKE_CUDA_COMPILER_LAUNCHER:-ccache}"
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-${ZERO_ROOT}}"
  export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
  zero_log "compiler cache: ccache ($(ccache --get-config cache_dir 2>/dev/null || echo '?'))"
}

# Configures build dir $1 (default: build/) with build type $2 (default: Release). An existing
# build dir keeps its generator and compiler.
zero_configure() {
  local dir="${1:-${ZERO_ROOT}/build}" type="${2:-Release}"
  local args=(-S "${ZERO_ROOT}" -B "${dir}" -DCMAKE_BUILD_TYPE="${type}")
  if [[ ! -f "${dir}/CMakeCache.txt" ]]; then
    args+=(-G "${ZERO_CMAKE_GENERATOR}")
    [[ -z "${CXX:-}" ]] || args+=(-DCMAKE_CXX_COMPILER="${CXX}")
  fi
  cmake "${args[@]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  zero_ensure_deps
  zero_log "all dependencies present (generator: ${ZERO_CMAKE_GENERATOR}, jobs: ${ZERO_JOBS})"
fi
