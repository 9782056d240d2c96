#!/usr/bin/env bash
# The GPU check: on a CUDA machine with PyTorch installed and no network, build gemma-train
# against that machine's LibTorch, run the CUDA tests (none may skip), then take QLoRA steps on
# randomly initialised E2B- and E4B-shaped models at 2,048 tokens and print each run's measured
# device peak beside the memory plan's prediction. Bounded: every stage has a deadline and the
# whole check stops at --budget seconds (600 by default).
#
# The Debian libraries the build needs (yaml-cpp, SentencePiece, RE2, nlohmann-json, GoogleTest,
# Google Benchmark, Open MPI, pkg-config) come as .deb files when the machine lacks them: fetch
# them on a Debian 12 machine that has a build (the runtime libraries are the ones build/
# gemma-train actually loads), carry the folder over, and the check unpacks them into a private
# prefix (no root, nothing installed):
#   scripts/gpu-check.sh --download-debs DIR            # on the Debian machine, with the archive
#   scripts/gpu-check.sh [--debs DIR] [--models e2b,e4b] [--seq 2048] [--budget 600] [--work DIR]
#                        [--build DIR]
#   scripts/gpu-check.sh --cpu-smoke --build build     # the script's own stages on a CPU machine:
#                                                      # tiny models on the CPU, CUDA tests may skip
# Needs on the GPU machine: bash, g++ (C++17), nvcc (the CUDA toolkit, for kernels/*.cu), a Python
# with torch (PYTHON=..., default python3). Results: a table on stdout and $WORK/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf '[gpu-check %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

dev_packages=(libyaml-cpp-dev libsentencepiece-dev libre2-dev nlohmann-json3-dev libgtest-dev
  libgmock-dev libbenchmark-dev libopenmpi-dev pkgconf pkgconf-bin libpkgconf3 cmake cmake-data
  ninja-build)

# --download-debs DIR: the -dev packages above, plus every Debian package owning a shared library
# that build/gemma-train or build/tests/gemma_tests loads from the system (outside LibTorch's
# wheel and the C runtime every machine has).
download_debs() {
  local dir=$1
  [ -x build/gemma-train ] && [ -x build/tests/gemma_tests ] && [ -x build/bench/nf4_bench ] ||
    die "--download-debs reads the libraries of build/gemma-train: run scripts/setup.sh first"
  command -v apt-get >/dev/null || die "--download-debs needs apt-get (Debian 12)"
  mkdir -p "$dir"
  local libs pkgs=("${dev_packages[@]}")
  libs=$(ldd build/gemma-train build/tests/gemma_tests build/bench/nf4_bench | awk '/=> \//{print $3}' | sort -u |
    grep -v -e '/site-packages/' -e '/libc\.so' -e '/libm\.so' -e '/libgcc_s' -e '/libstdc++' \
      -e '/ld-linux' -e '/libdl\.so' -e '/librt\.so' -e '/libpthread' || true)
  # dpkg knows a file by the path its package installed (/lib or /usr/lib: usrmerge)
  owner_of() {
    local real candidate
    real=$(readlink -f "$1")
    for candidate in "$1" "$real" "${real#/usr}" "/usr$real"; do
      dpkg -S "$candidate" 2>/dev/null | head -1 | cut -d: -f1 && return 0
    done
    log "no Debian package owns $1 (left out)"
  }
  for lib in $libs; do
    pkgs+=("$(owner_of "$lib" || true)")
  done
  # cmake's own libraries, for a machine without cmake
  pkgs+=(libjsoncpp25 librhash0 libuv1 libarchive13 libcurl4 libnghttp2-14 librtmp1 libssh2-1
    libpsl5 libbrotli1 libldap-2.5-0 libsasl2-2 libnettle8 libhogweed6 libgnutls30 libidn2-0
    libunistring2 libtasn1-6 libp11-kit0 libffi8 libgmp10 libxml2 libicu72 liblzma5 libzstd1
    libbz2-1.0 liblz4-1 libacl1 libexpat1 libkrb5-3 libk5crypto3 libkrb5support0 libgssapi-krb5-2
    libcom-err2 libkeyutils1 libssl3)
  # never the C runtime: the GPU machine's own must stay the only one
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | grep -v -x -e '' -e libc6 -e libgcc-s1 -e 'libstdc++6' |
    sort -u)
  (cd "$dir" && apt-get download -q "${pkgs[@]}" >/dev/null) || die "apt-get download failed"
  log "$(ls "$dir"/*.deb | wc -l) packages, $(du -sh "$dir" | cut -f1) in $dir"
}

debs="" models="e2b,e4b" seq=2048 budget=600 work="" build="" cpu_smoke=false
while [ $# -gt 0 ]; do
  case $1 in
    --download-debs)
      download_debs "${2:?--download-debs DIR}"
      exit 0
      ;;
    --debs) debs=$(realpath "${2:?--debs DIR}") && shift ;;
    --models) models=${2:?--models e2b,e4b} && shift ;;
    --seq) seq=${2:?--seq N} && shift ;;
    --budget) budget=${2:?--budget SECONDS} && shift ;;
    --work) work=${2:?--work DIR} && shift ;;
    --build) build=$(realpath "${2:?--build DIR}") && shift ;;
    --cpu-smoke) cpu_smoke=true ;;
    -h | --help)
      sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ $seq =~ ^[0-9]+$ ]] || die "--seq: a number of tokens, not '$seq'"
[[ $budget =~ ^[0-9]+$ ]] || die "--budget: seconds, not '$budget'"
work=${work:-$(mktemp -d /tmp/gemma-gpu-check.XXXXXX)}
mkdir -p "$work"
work=$(realpath "$work")
deadline=$((SECONDS + budget))
# run_bounded SECONDS CMD...: CMD with at most SECONDS, and never past the whole check's deadline.
run_bounded() {
  local limit=$1 left=$((deadline - SECONDS))
  shift
  [ "$left" -gt 5 ] || die "out of time (--budget $budget) before: $*"
  [ "$limit" -le "$left" ] || limit=$left
  timeout --kill-after=10 "$limit" "$@"
}

# --- the machine -----------------------------------------------------------------------------
python=${PYTHON:-python3}
"$python" -c 'import torch' 2>/dev/null || die "no torch in $python (set PYTHON=/path/to/python)"
torch_info=$("$python" -c '
import torch
print(torch.__version__, torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0,
      sep="|")')
IFS='|' read -r torch_version torch_cuda cuda_ok gpu_name gpu_bytes <<<"$torch_info"
log "torch $torch_version (CUDA $torch_cuda), GPU: $gpu_name ($gpu_bytes bytes), $(nproc) CPUs"
device=cuda
if $cpu_smoke; then
  device=cpu
  [ "$models" = "e2b,e4b" ] && models=demo
  [ "$seq" = 2048 ] && seq=256
  log "--cpu-smoke: $models at $seq tokens on the CPU; CUDA tests may skip"
else
  [ "$cuda_ok" = True ] || die "torch sees no CUDA device"
fi
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')

# --- Debian libraries from .deb files, unpacked into a private prefix ----------------------------
prefix_paths=""
if [ -n "$debs" ]; then
  prefix=$work/debs
  mkdir -p "$prefix"
  for deb in "$debs"/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$prefix"
    else # ar + tar: a .deb is an ar archive holding data.tar.*
      (cd "$work" && rm -rf deb-x && mkdir deb-x && cd deb-x && ar x "$deb" &&
        tar -xf data.tar.* -C "$prefix")
    fi
  done
  # .pc files and some CMake configs name /usr: point them at the prefix
  find "$prefix"/usr/lib/x86_64-linux-gnu/pkgconfig "$prefix"/usr/share/pkgconfig -name '*.pc' \
    -print0 2>/dev/null | xargs -0 -r sed -i "s#\([= ]\)/usr/#\1$prefix/usr/#g; s#^prefix=/usr\$#prefix=$prefix/usr#"
  export PATH=$prefix/usr/bin:$PATH
  export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu:$prefix/usr/lib/x86_64-linux-gnu/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PKG_CONFIG_PATH=$prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$prefix/usr/share/pkgconfig
  export OPAL_PREFIX=$prefix/usr/lib/x86_64-linux-gnu/openmpi
  prefix_paths=";$prefix/usr"
  log "unpacked $(ls "$debs"/*.deb | wc -l) .deb files into $prefix"
fi
for tool in cmake g++ nvcc; do
  command -v "$tool" >/dev/null || [ -x /usr/local/cuda/bin/$tool ] ||
    die "$tool not found (nvcc: put the CUDA toolkit's bin on PATH; others: --debs)"
done
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH

# --- build -----------------------------------------------------------------------------------
build=${build:-$work/build}
arch_args=(-DCMAKE_CUDA_ARCHITECTURES=native) # nvcc asks the GPU
$cpu_smoke && arch_args=()
mpi_args=()
if ! command -v mpicxx >/dev/null && [ -n "$debs" ]; then
  # Open MPI's wrapper names its own install paths: give CMake the library and headers directly.
  ompi=$prefix/usr/lib/x86_64-linux-gnu
  mpi_args=(-DMPI_SKIP_COMPILER_WRAPPER=ON "-DMPI_CXX_ADDITIONAL_INCLUDE_DIRS=$ompi/openmpi/include"
    -DMPI_CXX_LIB_NAMES=mpi "-DMPI_mpi_LIBRARY=$(ls "$ompi"/libmpi.so* | head -1)")
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
log "configuring in $build"
run_bounded 120 cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_PREFIX_PATH=$torch_prefix$prefix_paths" "${arch_args[@]}" "${mpi_args[@]}" >"$work/configure.log" 2>&1 || {
  tail -30 "$work/configure.log" >&2
  die "configure (log: $work/configure.log)"
}
grep -q "CUDA kernels linked in: ON" "$work/configure.log" ||
  die "the build would not link the CUDA kernels (see $work/configure.log)"
log "building gemma-train and the tests with $(nproc) jobs"
run_bounded 360 cmake --build "$build" -j "$(nproc)" --target gemma-train gemma_tests \
  >"$work/build.log" 2>&1 || {
  grep -E "error|FAILED" "$work/build.log" | head -20 >&2
  die "build (log: $work/build.log)"
}
bin=$build/gemma-train

# --- the CUDA tests: every one must run ------------------------------------------------------
filter='*Cuda*:PleOnHost.*'
log "CUDA tests ($filter)"
run_bounded 120 "$build/tests/gemma_tests" --gtest_filter="$filter" >"$work/tests.log" 2>&1 || {
  tail -40 "$work/tests.log" >&2
  die "CUDA tests (log: $work/tests.log)"
}
tests_passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$work/tests.log")
if grep -q '^\[  SKIPPED \]' "$work/tests.log" && ! $cpu_smoke; then
  grep '^\[  SKIPPED \]' "$work/tests.log" >&2
  die "CUDA tests skipped on a CUDA machine"
fi
tests_skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$work/tests.log")
log "CUDA tests: ${tests_passed:-0} passed, ${tests_skipped:-0} skipped"

# --- QLoRA steps on E2B- and E4B-shaped models -------------------------------------------------
# 2,048-token rows of plain text; the bundled tokenizer (4,096 ids) is enough for random weights.
"$python" - "$work/data.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(4):
        text = " ".join(f"the river {i} runs to the sea and back again" for _ in range(600))
        f.write(json.dumps({"text": text}) + "\n")
PY
results=()
for name in ${models//,/ }; do
  model=$work/model-$name
  log "$name: a random bf16 checkpoint"
  run_bounded 240 "$bin" init --config "$name" --out "$model" --dtype bf16 --seed 1 \
    >"$work/init-$name.log" 2>&1 || die "init $name (log: $work/init-$name.log)"
  cp "$root"/configs/tokenizer/tokenizer.json "$root"/configs/tokenizer/tokenizer_config.json "$model/"
  sets=(--set "model.name_or_path=$model" --set "data.train_files=$work/data.jsonl"
    --set data.eval_split=0 --set training.eval_strategy=no --set training.max_steps=2 --set training.gradient_accumulation_steps=1
    --set "training.max_length=$seq" --set training.packing=false --set training.logging_steps=1
    --set training.save_steps=1000 --set training.report_to=none --set export.merged=false
    --set "training.output_dir=$work/run-$name" --set training.overwrite_output_dir=true
    --set "model.device=$device")
  "$bin" plan --recipe recipes/qlora.yaml "${sets[@]}" --json >"$work/plan-$name.json" ||
    die "plan $name"
  log "$name: two QLoRA steps at $seq tokens (recipes/qlora.yaml)"
  run_bounded 300 "$bin" --recipe recipes/qlora.yaml "${sets[@]}" >"$work/train-$name.log" 2>&1 || {
    tail -20 "$work/train-$name.log" >&2
    die "training $name (log: $work/train-$name.log)"
  }
  results+=("$name")
  rm -rf "$model"
done

"$python" - "$work" "$gpu_name" "$torch_version" "$tests_passed" "$seq" "${results[@]}" <<'PY'
import json, sys
work, gpu, torch_version, tests, seq, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:]
rows = []
for name in names:
    plan = json.load(open(f"{work}/plan-{name}.json"))
    metrics = [json.loads(l) for l in open(f"{work}/run-{name}/metrics.jsonl")]
    steps = [m for m in metrics if "peak_memory_bytes" in m]
    summary = next(m for m in metrics if "train_runtime" in m)
    rows.append(dict(model=name, seq=seq, predicted_peak_bytes=plan["device_peak_bytes"],
                     measured_peak_bytes=max(m["peak_memory_bytes"] for m in steps),
                     train_runtime_s=summary["train_runtime"],
                     losses=[m["loss"] for m in steps]))
gib = 1024 ** 3
print(f"GPU {gpu}, torch {torch_version}; CUDA tests: {tests} passed")
print(f"{'model':6} {'tokens':>6} {'planned GiB':>12} {'measured GiB':>13} {'measured/plan':>14} {'2 steps s':>10}")
for r in rows:
    print(f"{r['model']:6} {r['seq']:6d} {r['predicted_peak_bytes'] / gib:12.2f} "
          f"{r['measured_peak_bytes'] / gib:13.2f} {r['measured_peak_bytes'] / r['predicted_peak_bytes']:14.3f} "
          f"{r['train_runtime_s']:10.1f}")
json.dump(dict(gpu=gpu, torch=torch_version, cuda_tests_passed=tests, runs=rows),
          open(f"{work}/results.json", "w"), indent=1)
PY
log "done: $work/results.json"
