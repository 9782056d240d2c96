#!/usr/bin/env bash
# Time from `gemma-train --recipe` starting to its first QLoRA training step, on a ~1 GB
# checkpoint: configs/mem-300m.json (315M parameters) initialised in float32 (1.26 GB of
# safetensors). The run reads the recipe and data, plans memory, streams the checkpoint while
# quantizing every decoder projection to NF4, builds LoRA r=16 on all linear layers and 8-bit
# AdamW, then takes one step of 512 tokens. Reported: the whole run's wall time, the step itself
# (metrics.jsonl's train_runtime) and their difference, the start-up (which includes writing the
# adapter at the end, a few MB). The checkpoint was just written, so it is in the page cache, as
# on a second run; median of 3 runs.
# Usage: bench/time_to_first_step.sh [path/to/gemma-train]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/gemma-train}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" init --config mem-300m --out "$work/model" --dtype f32 --seed 1 >/dev/null
cp configs/tokenizer/tokenizer.json configs/tokenizer/tokenizer_config.json "$work/model/"
bytes=$(du -cb "$work"/model/*.safetensors | tail -1 | cut -f1)
# 512-token rows: each demo conversation repeated into one long user turn.
python3 - "$work/data.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(8):
        text = " ".join(["the river runs to the sea"] * 120)
        f.write(json.dumps({"messages": [{"role": "user", "content": text},
                                         {"role": "assistant", "content": "yes " * 20}]}) + "\n")
PY
cat > "$work/recipe.yaml" <<YAML
model:
  name_or_path: $work/model
  load_in_4bit: true
  bnb_4bit_quant_type: nf4
  bnb_4bit_use_double_quant: true
  bnb_4bit_compute_dtype: float32
  device: cpu
peft:
  r: 16
  lora_alpha: 32
  target_modules: all-linear
data:
  train_files: $work/data.jsonl
training:
  method: sft
  per_device_train_batch_size: 1
  max_steps: 1
  optim: paged_adamw_8bit
  gradient_checkpointing: true
  max_length: 512
  logging_steps: 1
  output_dir: $work/run
  overwrite_output_dir: true
YAML
walls=(); steps=(); starts=()
for _ in 1 2 3; do
  t0=$(date +%s.%N)
  "$bin" --recipe "$work/recipe.yaml" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
  t1=$(date +%s.%N)
  step=$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(next(r["train_runtime"] for r in rows if "train_runtime" in r))' "$work/run/metrics.jsonl")
  walls+=("$(python3 -c "print($t1 - $t0)")"); steps+=("$step")
  starts+=("$(python3 -c "print($t1 - $t0 - $step)")")
done
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
printf 'checkpoint %.2f GB (mem-300m, float32): start-up %.2f s (runs: %s), one 512-token step %.2f s, whole run %.2f s (medians of 3)\n' \
  "$(python3 -c "print($bytes / 1e9)")" "$(median "${starts[@]}")" "${starts[*]}" \
  "$(median "${steps[@]}")" "$(median "${walls[@]}")"
