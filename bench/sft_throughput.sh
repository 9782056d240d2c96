#!/usr/bin/env bash
# QLoRA SFT throughput of `gemma-train --recipe` on a ~300M-parameter Gemma-4-shaped config
# (configs/mem-300m.json, 315M parameters: hidden 1024, 18 layers, vocab 32768) at 512 and 2,048
# tokens a step, and its model-FLOPs utilisation against this machine's measured matmul rate.
#   - Recipe: NF4 double-quant base (f32 compute), LoRA r=16 on all linear layers, 8-bit AdamW,
#     gradient checkpointing, micro-batch 1, one packed-free row of exactly T tokens.
#   - Step time: (train_runtime of a 3-step run - that of a 1-step run) / 2, so that the first
#     step's warm-up and the start-up are left out.
#   - Model FLOPs of a step: the base's matmuls forward (2·N·T) and their input gradient (2·N·T),
#     N the matmul weights (decoder projections and the tied lm_head); the adapters' forward and
#     backward (6·N_lora·T); attention's two products forward and backward (3 × 4·T·S·heads·d, S
#     the keys a query sees on average: causal, or the sliding window). Recomputation under
#     checkpointing is not counted (it is the price of the memory saved, not useful work), as in
#     the PaLM definition of MFU.
#   - Matmul rate: LibTorch's float32 matmul of 2048×2048 by 2048×2048 at the same threads (the
#     .venv's torch, the same LibTorch the binary links), best of 5.
# Usage: bench/sft_throughput.sh [path/to/gemma-train]     THREADS (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/gemma-train}")
threads=${THREADS:-2}
py=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" init --config mem-300m --out "$work/model" --dtype bf16 --seed 1 >/dev/null
cp configs/tokenizer/tokenizer.json configs/tokenizer/tokenizer_config.json "$work/model/"

matmul_rate=$($py - "$threads" <<'PY'
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
best = 1e9
for _ in range(6):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
print(2 * 2048 ** 3 / best)
PY
)

step_seconds() {  # tokens steps
  python3 - "$work/data-$1.jsonl" "$1" <<'PY'
import json, sys
# One user turn of single-token words, long enough to be cut at max_length.
with open(sys.argv[1], "w") as f:
    for _ in range(4):
        text = " ".join(["river"] * int(sys.argv[2]))
        f.write(json.dumps({"messages": [{"role": "user", "content": text},
                                         {"role": "assistant", "content": "sea"}]}) + "\n")
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
  train_files: $work/data-$1.jsonl
training:
  method: sft
  per_device_train_batch_size: 1
  max_steps: $2
  optim: paged_adamw_8bit
  gradient_checkpointing: true
  max_length: $1
  truncation_mode: keep_start
  logging_steps: 1
  output_dir: $work/run
  overwrite_output_dir: true
YAML
  OMP_NUM_THREADS=$threads "$bin" --recipe "$work/recipe.yaml" >"$work/log" 2>&1 ||
    { cat "$work/log" >&2; exit 1; }
  python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(next(r["train_runtime"] for r in rows if "train_runtime" in r))' "$work/run/metrics.jsonl"
}

model_flops() {  # tokens -> FLOPs of one step
  python3 - configs/mem-300m.json "$1" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["text_config"]
T, H, I, V, r = int(sys.argv[2]), c["hidden_size"], c["intermediate_size"], c["vocab_size"], 16
nh, kvh = c["num_attention_heads"], c["num_key_value_heads"]
n_base = n_lora = attn = 0
for kind in c["layer_types"]:
    d = c["head_dim"] if kind == "sliding_attention" else c["global_head_dim"]
    shapes = [(H, nh * d), (H, kvh * d), (H, kvh * d), (nh * d, H), (H, I), (H, I), (I, H)]
    n_base += sum(i * o for i, o in shapes)
    n_lora += sum(r * (i + o) for i, o in shapes)
    # keys seen per query, averaged over the T queries
    w = c["sliding_window"]
    seen = (T + 1) / 2 if kind == "full_attention" or T <= w else (w * (w + 1) / 2 + (T - w) * w) / T
    attn += 3 * 4 * T * seen * nh * d
n_base += V * H  # tied lm_head
print(4 * n_base * T + 6 * n_lora * T + attn)
PY
}

printf 'mem-300m QLoRA SFT, %s threads, %s; float32 matmul rate %.1f GFLOP/s\n' "$threads" \
  "$(lscpu | sed -nE 's/^Model name: *//p')" "$(python3 -c "print($matmul_rate / 1e9)")"
printf '| tokens | step | tokens/s | model TFLOP a step | MFU |\n|---|---|---|---|---|\n'
for T in 512 2048; do
  one=$(step_seconds "$T" 1)
  three=$(step_seconds "$T" 3)
  flops=$(model_flops "$T")
  python3 -c "
step = ($three - $one) / 2
print(f'| $T | {step:.2f} s | {$T / step:.0f} | {$flops / 1e12:.3f} | {$flops / step / $matmul_rate * 100:.0f}% |')"
done
