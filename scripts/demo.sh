#!/usr/bin/env bash
# The demo of the README: builds gemma-train, makes the bundled demo model (configs/demo.json, a
# small Gemma 4 with every E-model feature: PLE, KV sharing, double-wide MLP, sliding and full
# layers; random weights) in the Hugging Face layout with the bundled tokenizer, and fine-tunes it
# with QLoRA on the bundled chat dataset (recipes/demo.yaml: NF4 double-quantized base, LoRA on
# every projection, paged 8-bit AdamW, activation checkpointing, loss on the model's turns): the
# progress bar, metrics.jsonl, TensorBoard events, loss.svg, checkpoints, the PEFT adapter, the
# merged HF checkpoint and a GGUF, all under out/demo-run. Then it asks the model a question from
# the dataset before and after, to show what it learned.
#   --dpo: QLoRA DPO instead (recipes/demo-dpo.yaml, the bundled preference set: the right capital
#   chosen, another one rejected; the reference model is the NF4 base with the adapter off), under
#   out/demo-dpo-run, and the rewards it logged at the first and the last step (the base has
#   random weights: DPO teaches it which of two sentences to prefer, not to answer).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=sft
case "${1:-}" in
  "") ;;
  --dpo) mode=dpo ;;
  *) echo "usage: scripts/demo.sh [--dpo]" >&2; exit 2 ;;
esac
scripts/setup.sh
bin=build/gemma-train
model=out/demo-model
run=out/demo-run
mkdir -p out
if [ ! -d "$model" ]; then
  $bin init --config demo --out "$model" --seed 0 --dtype bf16
  cp configs/tokenizer/tokenizer.json configs/tokenizer/tokenizer_config.json "$model"/
fi
$bin info --model "$model"
question="What is the capital of Japan?"
if [ "$mode" = dpo ]; then
  echo "--- QLoRA DPO: gemma-train --recipe recipes/demo-dpo.yaml"
  $bin validate-data --recipe recipes/demo-dpo.yaml
  $bin --recipe recipes/demo-dpo.yaml
  echo "--- rewards at the first and the last logged step (out/demo-dpo-run/metrics.jsonl)"
  grep '"rewards/accuracies"' out/demo-dpo-run/metrics.jsonl | grep -v eval_ | sed -n '1p;$p' |
    sed -E 's/.*"rewards\/accuracies":([^,}]*).*"rewards\/margins":([^,}]*).*"step":([0-9]+).*/step \3: rewards\/accuracies \1, rewards\/margins \2/'
  exit 0
fi
echo "--- before training (random weights): $question"
$bin generate --model "$model" --prompt "$question" --max-new-tokens 16 --temperature 0

echo "--- QLoRA fine-tune: gemma-train --recipe recipes/demo.yaml"
$bin validate-data --recipe recipes/demo.yaml
$bin --recipe recipes/demo.yaml

echo "--- after training (the adapter on the NF4 base): $question"
$bin generate --model "$model" --adapter "$run" --load-in-4bit --prompt "$question" \
  --max-new-tokens 16 --temperature 0
echo "--- the merged checkpoint ($run/merged), the same question"
$bin generate --model "$run/merged" --prompt "$question" --max-new-tokens 16 --temperature 0
echo "outputs: $run/{adapter_model.safetensors,metrics.jsonl,loss.svg,runs/,merged/,model-bf16.gguf}"
