#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: configures build-gpu/ for the GPU's architecture
# (from nvidia-smi), builds the CUDA tests and benchmark (target zero_cuda_all), runs
# `ctest -L cuda`, runs the fused-update benchmark with JSON output, prints a summary table (card,
# tests passed/failed/skipped, kernel GB/s, ratio to the device-to-device copy measured in the same
# run) and appends it, with the date and the card, to bench/RESULTS-cuda.md.
#
#   scripts/gpu-check.sh                 # everything
#   ZERO_GPU_BENCH_FILTER=fp32 scripts/gpu-check.sh
#
# On a GPU machine that reaches no network (this workplace's), first run scripts/gpu-bundle.sh
# where Debian's archive is in reach, and carry .gpu-bundle/ along: its doctest and Google
# Benchmark packages are unpacked into the build folder and nothing is installed. Only the CUDA
# subjects are configured (ZERO_TEST_SUBJECTS=cuda, no examples, no fuzzers): no Eigen, MPI or
# clang is needed there. NCCL comes from the toolkit, /usr/include, NCCL_HOME, or else the
# nvidia-nccl Python wheel when python3 has one.
#
# Environment: ZERO_GPU_BUILD_DIR (default build-gpu), ZERO_JOBS (default: all cores),
# ZERO_GPU_NO_DEPS=1 (do not check/install the Debian packages, e.g. on a machine without network;
# implied by a bundle), ZERO_GPU_BUNDLE (default .gpu-bundle), ZERO_GPU_BENCH_FILTER (a
# --benchmark_filter), ZERO_GPU_NO_RESULTS=1 (do not append to RESULTS-cuda.md),
# ZERO_GPU_ARCH=NN (skip nvidia-smi and build for sm_NN) with ZERO_GPU_CONFIGURE_ONLY=1 (stop after
# configuring: checks the configuration on a machine without a GPU).
# Exit status: 0 when every CUDA test passed (none failed, none skipped) and the benchmark ran.
set -euo pipefail
ZERO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ZERO_ROOT}"

log() { printf '[gpu-check] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

if [[ -n "${ZERO_GPU_ARCH:-}" ]]; then
  gpu="(not queried),${ZERO_GPU_ARCH:0:-1}.${ZERO_GPU_ARCH: -1},(not queried),(not queried)"
else
  command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this script needs an NVIDIA GPU and its driver"
  gpu="$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | head -n1)" ||
    die "nvidia-smi cannot query the GPU"
fi
IFS=',' read -r card capability driver memory <<<"${gpu}"
card="$(echo "${card}" | xargs)"
capability="$(echo "${capability}" | xargs)"
driver="$(echo "${driver}" | xargs)"
memory="$(echo "${memory}" | xargs)"
arch="${capability/./}"
[[ "${arch}" =~ ^[0-9]+$ ]] || die "cannot read the compute capability from nvidia-smi: '${gpu}'"
log "GPU: ${card} (compute capability ${capability}, sm_${arch}), driver ${driver}, ${memory}"

if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:${PATH}"; fi
command -v nvcc >/dev/null 2>&1 || die "nvcc not found (install the CUDA toolkit or put it on PATH)"
toolkit="$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"

generator="Unix Makefiles"
command -v ninja >/dev/null 2>&1 && generator="Ninja"
jobs="${ZERO_JOBS:-$(nproc 2>/dev/null || echo 4)}"
build="${ZERO_GPU_BUILD_DIR:-${ZERO_ROOT}/build-gpu}"
mkdir -p "${build}"
build="$(cd "${build}" && pwd)"

bundle="${ZERO_GPU_BUNDLE:-${ZERO_ROOT}/.gpu-bundle}"
if compgen -G "${bundle}/*.deb" >/dev/null; then
  # the dependencies, unpacked (not installed) where CMake and the loader will look first
  deps="${build}/deps"
  rm -rf "${deps}"
  mkdir -p "${deps}"
  for deb in "${bundle}"/*.deb; do
    if command -v dpkg-deb >/dev/null 2>&1; then
      dpkg-deb -x "${deb}" "${deps}" || die "cannot unpack ${deb}"
    else  # a .deb is an ar archive holding data.tar.*
      member="$(ar t "${deb}" | grep '^data\.tar')" || die "cannot read ${deb}"
      ar p "${deb}" "${member}" >"${deps}/${member}" && tar -x -f "${deps}/${member}" -C "${deps}" && rm -f "${deps}/${member}" ||
        die "cannot unpack ${deb}"
    fi
  done
  export CMAKE_PREFIX_PATH="${deps}/usr${CMAKE_PREFIX_PATH:+:${CMAKE_PREFIX_PATH}}"
  export LD_LIBRARY_PATH="${deps}/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
  log "dependencies from ${bundle}: $(cd "${bundle}" && ls -- *.deb | tr '\n' ' ')"
elif [[ "${ZERO_GPU_NO_DEPS:-0}" != 1 ]]; then
  # shellcheck source=scripts/deps.sh
  source "${ZERO_ROOT}/scripts/deps.sh"
  zero_ensure_deps
fi

# NCCL: the toolkit's, the system's, NCCL_HOME, or the nvidia-nccl wheel of python3
toolkit_include="$(dirname "$(command -v nvcc)")/../include"
if [[ -z "${NCCL_HOME:-}" && ! -f "${toolkit_include}/nccl.h" && ! -f /usr/include/nccl.h ]] && command -v python3 >/dev/null 2>&1; then
  wheel="$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)"
  if [[ -n "${wheel}" && -f "${wheel}/include/nccl.h" ]]; then
    export NCCL_HOME="${wheel}"
    log "NCCL from python3's nvidia-nccl wheel: ${wheel}"
  fi
fi

configure=(-S "${ZERO_ROOT}" -B "${build}" -DCMAKE_BUILD_TYPE=Release -DZERO_WITH_CUDA=ON
           -DZERO_CUDA_ARCHITECTURES="${arch}" -DCMAKE_CUDA_ARCHITECTURES="${arch}"
           -DZERO_TEST_SUBJECTS=cuda -DZERO_BUILD_EXAMPLES=OFF -DZERO_BUILD_FUZZERS=OFF)
[[ -f "${build}/CMakeCache.txt" ]] || configure+=(-G "${generator}")
log "configuring ${build} for sm_${arch}"
cmake "${configure[@]}" >"${build}.configure.log" 2>&1 || { cat "${build}.configure.log"; die "configure failed"; }
grep -E "zero: CUDA backend" "${build}.configure.log" >&2 || true
if [[ "${ZERO_GPU_CONFIGURE_ONLY:-0}" == 1 ]]; then
  log "configured (ZERO_GPU_CONFIGURE_ONLY=1): stopping here"
  exit 0
fi
log "building the CUDA tests and benchmark (-j ${jobs})"
start=$(date +%s)
cmake --build "${build}" -j "${jobs}" --target zero_cuda_all || die "build failed"
log "built in $(( $(date +%s) - start )) s"

log "running ctest -L cuda"
test_log="${build}/cuda-tests.log"
set +e
ctest --test-dir "${build}" -L cuda --output-on-failure 2>&1 | tee "${test_log}"
set -e
total="$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "${test_log}" | tail -n1)"
failed="$(sed -n 's/.*, \([0-9]*\) tests failed out of.*/\1/p' "${test_log}" | tail -n1)"
skipped="$(grep -c '(Skipped)' "${test_log}" || true)"
total="${total:-0}"
failed="${failed:-${total}}"
passed=$(( total - failed - skipped ))

bench_json="${build}/cuda-update-bench.json"
bench_status=0
log "running the fused-update benchmark"
"${build}/bench/cuda/zero_bench_cuda_update" ${ZERO_GPU_BENCH_FILTER:+--benchmark_filter="${ZERO_GPU_BENCH_FILTER}"} \
  --benchmark_out="${bench_json}" --benchmark_out_format=json || bench_status=$?

today="$(date -u +%Y-%m-%d)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=""
[[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] || dirty=" (with uncommitted changes)"
summary="$(mktemp)"
{
  echo "## ${today}: ${card} (sm_${arch}, driver ${driver}, CUDA ${toolkit}), commit ${commit}${dirty}"
  echo
  echo "\`scripts/gpu-check.sh\`: \`ctest -L cuda\`: ${passed} passed, ${failed} failed, ${skipped} skipped (of ${total})."
  echo
  if [[ ${bench_status} -ne 0 || ! -s "${bench_json}" ]]; then
    echo "The benchmark did not run (exit ${bench_status})."
  elif command -v python3 >/dev/null 2>&1; then
    python3 - "${bench_json}" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
print("| benchmark | parameters | bytes/param | kernel GB/s | copy GB/s | ratio to copy | ms per step |")
print("|---|---:|---:|---:|---:|---:|---:|")
for b in data.get("benchmarks", []):
    if b.get("run_type") == "aggregate" or "bytes_per_second" not in b:
        continue
    name, _, params = b["name"].partition("/")
    params = params.split("/")[0]
    print(f"| {name} | {int(params):,} | {b['bytes_per_param']:.0f} | {b['bytes_per_second'] / 1e9:.0f} | "
          f"{b['copy_bytes_per_second'] / 1e9:.0f} | {b['copy_ratio']:.2f} | {b['real_time']:.3f} |")
EOF
  else
    echo "(python3 not found: the figures are in ${bench_json})"
  fi
  echo
} >"${summary}"

echo
cat "${summary}"
if [[ "${ZERO_GPU_NO_RESULTS:-0}" != 1 ]]; then
  cat "${summary}" >>"${ZERO_ROOT}/bench/RESULTS-cuda.md"
  log "appended to bench/RESULTS-cuda.md (commit it with the card's name and the date)"
fi
rm -f "${summary}"

[[ "${failed}" == 0 && "${skipped}" == 0 && "${total}" != 0 && ${bench_status} -eq 0 ]]
