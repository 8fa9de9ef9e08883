#!/usr/bin/env bash
# Installs libtorch for zero's libtorch tests and example (tests/libtorch, examples/libtorch):
# PyPI's torch wheel, which carries the C++ headers and libraries, into the project's own
# virtual environment .venv-libtorch (ignored by git). Nothing else in zero needs torch.
#
# Only the wheel itself is installed (--no-deps): the C++ side needs none of its Python
# dependencies, nor the CUDA libraries of libtorch_cuda (the tests link libtorch_cpu and c10 only;
# libtorch_cpu needs CUDA's runtime, which the CUDA toolkit provides). About 540 MB
# to download and 1.2 GB on disk; CMake finds it at the next configure.
#
#   scripts/setup-libtorch.sh            # installs when missing
#   ZERO_TORCH_VERSION=2.15.0 scripts/setup-libtorch.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${root}/.venv-libtorch"
version="${ZERO_TORCH_VERSION:-2.15.0}"

log() { printf '[zero] %s\n' "$*" >&2; }

if compgen -G "${venv}/lib/python3*/site-packages/torch/include/torch/csrc/api/include/torch/torch.h" >/dev/null; then
  log "libtorch: already in ${venv}"
  exit 0
fi
python="$(command -v python3 || true)"
[[ -n "${python}" ]] || { log "libtorch: python3 is needed to install PyPI's torch wheel"; exit 1; }
start=${SECONDS}
if [[ ! -x "${venv}/bin/pip" ]]; then
  "${python}" -m venv "${venv}" || {
    log "libtorch: python3 -m venv failed (Debian: apt-get install python3-venv)"
    exit 1
  }
fi
log "libtorch: installing torch==${version} from PyPI into ${venv} (about 540 MB)"
"${venv}/bin/pip" install --quiet --disable-pip-version-check --no-deps "torch==${version}"
log "libtorch: installed in $((SECONDS - start)) s"
