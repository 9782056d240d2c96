#!/usr/bin/env bash
# Decode speed of `gemma-train generate` on the ~108M-parameter bench config
# (configs/bench-100m.json) with the bundled tokenizer: the dense checkpoint in f32 and bf16, and
# its NF4 double-quant copy (`gemma-train quantize`, what a QLoRA user evaluates the base with)
# computing in f32 and bf16. Greedy, 128 new tokens after a short prompt, the decode tokens/s the
# binary reports, median of 3 runs after one warm-up; each through the step decoder (the default)
# and through the LibTorch forward (--no-step-decoder), the two alternating.
# Usage: bench/bench_generate.sh [path/to/gemma-train]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/gemma-train}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$bin init --config bench-100m --out "$work/dense" --dtype bf16 --seed 1 >/dev/null
cp configs/tokenizer/tokenizer.json "$work/dense/"
$bin quantize --model "$work/dense" --out "$work/nf4" >/dev/null
cp configs/tokenizer/tokenizer.json "$work/nf4/"
rate_of() {  # model dtype flags...
  local model=$1 dtype=$2
  shift 2
  $bin generate --model "$work/$model" --prompt "The river runs" --raw --ids --temperature 0 \
    --max-new-tokens 128 --dtype "$dtype" "$@" 2>&1 >/dev/null | grep decode |
    sed -E 's/.*decode [0-9]+ tokens in [0-9.]+ s: ([0-9.]+) tokens\/s.*/\1/'
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$(((${#@} + 1) / 2))p"; }
for model in dense nf4; do
  for dtype in f32 bf16; do
    rate_of "$model" "$dtype" >/dev/null  # warm-up
    fast=(); plain=()
    for _ in 1 2 3; do
      fast+=("$(rate_of "$model" "$dtype")")
      plain+=("$(rate_of "$model" "$dtype" --no-step-decoder)")
    done
    echo "generate 128 tokens, $model weights, $dtype compute: median decode $(median "${fast[@]}") tokens/s (runs ${fast[*]}); --no-step-decoder $(median "${plain[@]}") (runs ${plain[*]})"
  done
done
