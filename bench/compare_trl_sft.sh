#!/usr/bin/env bash
# SFT throughput and peak memory, gemma-train vs TRL SFTTrainer + PEFT (+ bitsandbytes), on the CPU,
# side by side: the bundled demo model on the bundled chat data, and the ~108M bench-100m config
# (vocab 4096 for the bundled tokenizer) on generated 512-token text rows. Both stacks: NF4
# double-quant base, float32 compute (or --dtype bfloat16), LoRA r=16 alpha=32 all-linear dropout 0, paged_adamw_8bit,
# gradient checkpointing, batch 4, max_length 512, no packing, seed 42, 2 threads; 2 warm-up steps,
# 6 measured, 1 more (untimed). Waits (at most 10 minutes) for a 1-min load average below 1.0.
# Prints one table: model, stack, tokens/s, peak RSS, ratio. Results in $WORK/results.json.
# Usage: bench/compare_trl_sft.sh [--work DIR] [--wait-max S] [--warmup N] [--steps N] [--threads N]
#        [--no-4bit] [--save-matmuls] [--dtype float32|bfloat16]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/gemma-train ] || { echo "build/gemma-train missing: run scripts/setup.sh first" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo ".venv/bin/python missing: run scripts/setup.sh first" >&2; exit 2; }
echo "[compare] $(date -u +%F); $(lscpu | sed -n 's/^Model name: *//p'); $(nproc) CPUs; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
exec .venv/bin/python -u bench/compare_trl_sft.py drive "$@"
