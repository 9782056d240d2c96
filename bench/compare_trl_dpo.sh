#!/usr/bin/env bash
# DPO step time and throughput, gemma-train (reference on the fly, and precomputed) vs TRL
# DPOTrainer + PEFT (+ bitsandbytes), on the CPU, side by side: the bundled demo model on the
# bundled preference set, and the ~108M bench-100m config (vocab 4096) on generated plain
# preference rows. Both stacks: NF4 double-quant base, float32 compute, LoRA r=16 alpha=32
# all-linear, paged_adamw_8bit, gradient checkpointing, the base as the reference model, seed 42,
# 2 threads; 2 warm-up steps, 6 measured, 1 more (untimed). Waits (at most 10 minutes) for a
# 1-min load average below 1.0. Prints one table; results in $WORK/results.json.
# Usage: bench/compare_trl_dpo.sh [--work DIR] [--wait-max S] [--warmup N] [--steps N] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/gemma-train ] || { echo "build/gemma-train missing: run scripts/setup.sh first" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo ".venv/bin/python missing: run scripts/setup.sh first" >&2; exit 2; }
echo "[compare] $(date -u +%F); $(lscpu | sed -n 's/^Model name: *//p'); $(nproc) CPUs; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
exec .venv/bin/python -u bench/compare_trl_dpo.py drive "$@"
