#!/usr/bin/env bash
# Runs the parsers' libFuzzer targets (clang, ASan + UBSan) for longer than ctest does.
# The targets and their seed corpora are built by CMake (tests/fuzz/CMakeLists.txt, target
# `fuzz_targets`, part of the default build when clang++ is installed); this script builds that
# target in an already configured tree (scripts/setup.sh makes build/) and fuzzes each target with
# a corpus that persists between runs (<build>/tests/fuzz/long_corpus/<target>; the seeds are read
# from <build>/tests/fuzz/seeds/<target> and never written). Crash reproducers go to
# <build>/tests/fuzz/artifacts/<target>/.
# Usage: tests/fuzz/run_fuzzers.sh [seconds per target, default 60] [target...]
#   BUILD_DIR=<dir> picks another build tree (default: build).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift $(($# > 0 ? 1 : 0))
build=${BUILD_DIR:-build}
targets=("$@")
((${#targets[@]})) ||
  targets=(fuzz_gemma4_config fuzz_tokenizer_json fuzz_chat_request fuzz_safetensors fuzz_gguf)

if [ ! -f "$build/CMakeCache.txt" ]; then
  echo "run_fuzzers: $build is not a configured build tree (run scripts/setup.sh first)" >&2
  exit 2
fi
cmake --build "$build" --target fuzz_targets
dir=$build/tests/fuzz
if [ ! -x "$dir/${targets[0]}" ]; then
  echo "run_fuzzers: no $dir/${targets[0]}: is clang++ installed? (apt-get install clang," \
       "then reconfigure)" >&2
  exit 2
fi

failed=()
for bin in "${targets[@]}"; do
  corpus=$dir/long_corpus/$bin artifacts=$dir/artifacts/$bin
  mkdir -p "$corpus" "$artifacts"
  echo "== $bin ($seconds s)"
  if "$dir/$bin" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
       -artifact_prefix="$artifacts/" "$corpus" "$dir/seeds/$bin" >"$dir/$bin.log" 2>&1; then
    tail -1 "$dir/$bin.log"
  else
    tail -40 "$dir/$bin.log"
    failed+=("$bin")
  fi
done
if ((${#failed[@]})); then
  echo "run_fuzzers: FAILED: ${failed[*]} (logs: $dir/<target>.log, reproducers: $dir/artifacts/)" >&2
  exit 1
fi
echo "run_fuzzers: all ${#targets[@]} targets ran $seconds s without a finding"
