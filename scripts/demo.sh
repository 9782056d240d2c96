#!/usr/bin/env bash
# The demo of the README: builds gemma-train, makes the bundled demo model (configs/demo.json, a
# small Gemma 4 with every E-model feature: PLE, KV sharing, double-wide MLP, sliding and full
# layers) in the Hugging Face layout, and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=build/gemma-train
model=out/demo-model
mkdir -p out
[ -d "$model" ] || $bin init --config demo --out "$model" --seed 0 --dtype bf16
$bin info --model "$model"
ids=2,818,1040,7,99,3120,45,1000,17,256,4000,12,9,77,301,2048
for dtype in f32 bf16; do
  $bin logits --model "$model" --ids "$ids" --out "out/demo-logits-$dtype.bin" --dtype "$dtype"
done
echo "logits written to out/demo-logits-{f32,bf16}.bin (float32, [16, 4096])"
