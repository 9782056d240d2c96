#!/usr/bin/env bash
# Installs what gemma-train needs on a fresh Debian 12 machine, then configures and builds it.
#   Debian packages: compilers' helpers and C++ libraries (platform.md, "Other packages").
#   .venv/: PyPI's torch wheel (its LibTorch is what we link against) and the reference stack
#           that the Python cross-check tests use. Nothing here is needed at run time but LibTorch.
# Re-running is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.15.0
PY_REFERENCE_PACKAGES=(transformers==5.23.0 safetensors==0.8.0 trl==1.16.0 bitsandbytes==0.50.2 gguf==0.19.0 peft==0.21.2 tensorboard==2.21.0 numpy pytest)
DEBIAN_PACKAGES=(build-essential cmake ninja-build ccache nlohmann-json3-dev libgtest-dev libgmock-dev
                 libbenchmark-dev libsentencepiece-dev sentencepiece libyaml-cpp-dev libre2-dev clang clang-format
                 clang-tidy libopenmpi-dev openmpi-bin)

log() { printf '[setup] %s\n' "$*"; }

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null \
   || ! .venv/bin/python -c "import transformers, safetensors, trl, bitsandbytes, gguf, peft, tensorboard, pytest" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION and the reference stack into .venv (a few GB the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION" "${PY_REFERENCE_PACKAGES[@]}"
fi

TORCH_PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
LAUNCHER=()
command -v ccache >/dev/null && LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
BUILD_TYPE=${BUILD_TYPE:-Release}
log "configuring build/ ($BUILD_TYPE)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DPython3_EXECUTABLE="$PWD/.venv/bin/python" "${LAUNCHER[@]}" >/dev/null
log "building"
cmake --build build -j "$(nproc)"
log "done: build/gemma-train"
