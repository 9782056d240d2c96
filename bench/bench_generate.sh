#!/usr/bin/env bash
# Decode speed of `gemma-train generate` on the ~108M-parameter bench config
# (configs/bench-100m.json) with the bundled tokenizer: the dense checkpoint in f32 and bf16, and
# its NF4 double-quant copy (`gemma-train quantize`, what a QLoRA user evaluates the base with)
# computing in f32 and bf16. Greedy, 128 new tokens after a short prompt, the decode tokens/s the
# binary reports, median of 3 runs after one warm-up.
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
for model in dense nf4; do
  for dtype in f32 bf16; do
    rates=()
    for run in 0 1 2 3; do
      line=$($bin generate --model "$work/$model" --prompt "The river runs" --raw --ids \
        --temperature 0 --max-new-tokens 128 --dtype "$dtype" 2>&1 >/dev/null | grep decode)
      rate=$(sed -E 's/.*decode [0-9]+ tokens in [0-9.]+ s: ([0-9.]+) tokens\/s.*/\1/' <<<"$line")
      prefill=$(sed -E 's/.*prefill [0-9]+ tokens in [0-9.]+ s: ([0-9.]+) tokens\/s.*/\1/' <<<"$line")
      [ "$run" = 0 ] || rates+=("$rate")
    done
    median=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)
    echo "generate 128 tokens, $model weights, $dtype compute: median decode ${median} tokens/s over 3 runs (${rates[*]}); last prefill ${prefill} tokens/s"
  done
done
