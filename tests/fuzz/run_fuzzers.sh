#!/usr/bin/env bash
# Runs the parsers' libFuzzer targets (clang, ASan + UBSan) for longer than ctest does.
# The targets and their seed corpora are built by CMake (tests/fuzz/CMakeLists.txt, target
# `fuzz_targets`, part of the default build when clang++ is installed); this script builds that
# target in an already configured tree (scripts/setup.sh makes build/) and fuzzes each target,
# one at a time and each as a single process, with a corpus that persists between runs
# (<build>/tests/fuzz/long_corpus/<target>; the seeds are read from <build>/tests/fuzz/seeds/<target>
# and never written). Crash reproducers go to <build>/tests/fuzz/artifacts/<target>/, each run's
# output to <build>/tests/fuzz/<target>.log. Per target it prints libFuzzer's last line
# ("Done N runs in S second(s)"), the corpus size and the date, for docs/reliability.md.
# Usage: tests/fuzz/run_fuzzers.sh [seconds per target, default 60] [target...]
#   RUNS=<n>         run each target for n executions (libFuzzer -runs=n); the seconds are then
#                    ignored (give any, e.g. 0, to name targets)
#   BUILD_DIR=<dir>  picks another build tree (default: build)
#   BUILD_JOBS=<n>   parallel jobs for building fuzz_targets (default: the generator's)
# Example, the long runs of docs/reliability.md: RUNS=1100000 tests/fuzz/run_fuzzers.sh 0 fuzz_gguf
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift $(($# > 0 ? 1 : 0))
build=${BUILD_DIR:-build}
targets=("$@")
((${#targets[@]})) ||
  targets=(fuzz_gemma4_config fuzz_tokenizer_json fuzz_chat_request fuzz_sft_rows fuzz_safetensors
           fuzz_gguf fuzz_hf_index fuzz_adapter_config fuzz_recipe_yaml)
if [ -n "${RUNS:-}" ]; then
  [[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "run_fuzzers: RUNS=$RUNS is not a positive count" >&2; exit 2; }
  limit=(-runs="$RUNS") what="$RUNS runs"
else
  [[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "run_fuzzers: $seconds is not a number of seconds" >&2; exit 2; }
  limit=(-max_total_time="$seconds") what="$seconds s"
fi

if [ ! -f "$build/CMakeCache.txt" ]; then
  echo "run_fuzzers: $build is not a configured build tree (run scripts/setup.sh first)" >&2
  exit 2
fi
cmake --build "$build" --target fuzz_targets ${BUILD_JOBS:+-j "$BUILD_JOBS"}
dir=$build/tests/fuzz
for bin in "${targets[@]}"; do
  if [ ! -x "$dir/$bin" ]; then
    echo "run_fuzzers: no $dir/$bin: is clang++ installed (apt-get install clang, then" \
         "reconfigure), and is $bin a target of tests/fuzz/CMakeLists.txt?" >&2
    exit 2
  fi
done

failed=()
for bin in "${targets[@]}"; do
  corpus=$dir/long_corpus/$bin artifacts=$dir/artifacts/$bin
  mkdir -p "$corpus" "$artifacts"
  echo "== $bin ($what, $(date -u +%F))"
  if UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
     "$dir/$bin" "${limit[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
       -artifact_prefix="$artifacts/" "$corpus" "$dir/seeds/$bin" >"$dir/$bin.log" 2>&1; then
    grep -E '^Done [0-9]+ runs in [0-9]+ second' "$dir/$bin.log" | tail -1 || tail -1 "$dir/$bin.log"
    echo "corpus: $(find "$corpus" -type f | wc -l) inputs in $corpus"
  else
    tail -40 "$dir/$bin.log"
    failed+=("$bin")
  fi
done
if ((${#failed[@]})); then
  echo "run_fuzzers: FAILED: ${failed[*]} (logs: $dir/<target>.log, reproducers: $dir/artifacts/)" >&2
  exit 1
fi
echo "run_fuzzers: all ${#targets[@]} targets ran $what each without a finding"
