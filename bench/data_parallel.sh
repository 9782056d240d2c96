#!/usr/bin/env bash
# One process with every core against one rank per core (mpirun through `gemma-train launch`), the
# same QLoRA SFT run of the demo recipe (recipes/demo.yaml on out/demo-model, which
# scripts/demo.sh makes), the same global batch: train samples/s and tokens/s, and per optimizer
# step the all-reduce time and bytes of the ranks. Usage: bench/data_parallel.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20}
bin=build/gemma-train
cores=$(nproc)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--recipe recipes/demo.yaml --set training.max_steps="$steps" --set training.eval_strategy=no
  --set training.eval_on_start=false --set training.save_steps=100000 --set training.logging_steps=1
  --set training.report_to=none --set export.merged=false --set export.gguf=false)
per_rank=$((8 / cores))
[ "$per_rank" -ge 1 ] || per_rank=1
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $cores cores; demo recipe, $steps steps, global batch $((per_rank * cores))"
$bin "${common[@]}" --set training.per_device_train_batch_size=$((per_rank * cores)) \
  --set training.output_dir="$out/one" > /dev/null 2>&1
$bin launch --nproc "$cores" -- "${common[@]}" --set training.per_device_train_batch_size=$per_rank \
  --set training.output_dir="$out/many" > /dev/null 2>&1
report() {
  python3 - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
steps = [r for r in rows if "loss" in r]
end = [r for r in rows if "train_runtime" in r][-1]
tokens = steps[-1]["num_tokens"]
line = f"{sys.argv[2]:>28}: {end['train_samples_per_second']:.2f} samples/s, {tokens / end['train_runtime']:.0f} tokens/s"
if "all_reduce_bytes" in steps[-1]:
    n = len(steps)
    line += (f", all-reduce {1000 * steps[-1]['all_reduce_seconds'] / n:.1f} ms and "
             f"{steps[-1]['all_reduce_bytes'] / n / 2**20:.2f} MiB per step")
print(line)
PY
}
report "$out/one" "1 process, $cores threads"
report "$out/many" "$cores ranks, 1 thread each"
