#!/usr/bin/env bash
# Times `gemma-train logits` on 128 tokens of the ~108M-parameter bench config (configs/bench-100m.json)
# in f32 and bf16: the forward time reported by the binary, median of 5 runs after one warm-up.
# Usage: bench/bench_logits.sh [path/to/gemma-train]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/gemma-train}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$bin init --config bench-100m --out "$work/model" --dtype f32 --seed 1 >/dev/null
ids=$(seq -s, 1 128)
for dtype in f32 bf16; do
  times=()
  for run in 0 1 2 3 4 5; do
    line=$($bin logits --model "$work/model" --ids "$ids" --out "$work/logits.bin" --overwrite --dtype "$dtype" 2>&1 >/dev/null)
    ms=$(sed -E 's/.*forward ([0-9.]+) ms.*/\1/' <<<"$line")
    [ "$run" = 0 ] || times+=("$ms")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
  echo "logits 128 tokens, $dtype: median forward ${median} ms over 5 runs (${times[*]})"
done
