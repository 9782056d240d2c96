#!/usr/bin/env bash
# The demo of the README: builds gemma-train, makes the bundled demo model (configs/demo.json, a
# small Gemma 4 with every E-model feature: PLE, KV sharing, double-wide MLP, sliding and full
# layers; random weights) in the Hugging Face layout with the bundled tokenizer, and runs it:
# its summary, a chat-formatted generation, and the logits of a few tokens; then the QLoRA side:
# an NF4 (bitsandbytes) copy, a DoRA adapter on it, the adapter merged into an HF checkpoint and
# exported to GGUF. (Training comes with the trainers.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=build/gemma-train
model=out/demo-model
mkdir -p out
if [ ! -d "$model" ]; then
  $bin init --config demo --out "$model" --seed 0 --dtype bf16
  cp configs/tokenizer/tokenizer.json configs/tokenizer/tokenizer_config.json "$model"/
fi
$bin info --model "$model"
echo "--- generate (random weights: the text is noise; the pipeline is real)"
$bin generate --model "$model" --prompt "Tell me about the river." --max-new-tokens 24 --seed 1
ids=$($bin tokenize --model "$model" --text "The model" --bos)
$bin logits --model "$model" --ids "$ids" --out out/demo-logits.bin
echo "logits of [$ids] written to out/demo-logits.bin (float32, [tokens, 4096])"

echo "--- QLoRA: NF4 base, adapter, merge, GGUF"
rm -rf out/demo-nf4 out/demo-adapter out/demo-merged out/demo.gguf
$bin quantize --model "$model" --out out/demo-nf4
$bin adapter --model out/demo-nf4 --out out/demo-adapter --r 8 --alpha 16 --dora --init random --seed 1
$bin generate --model out/demo-nf4 --adapter out/demo-adapter --prompt "Tell me about the river." \
  --max-new-tokens 12 --seed 1
$bin merge --model out/demo-nf4 --adapter out/demo-adapter --out out/demo-merged
$bin export --format gguf --model out/demo-merged --out out/demo.gguf
