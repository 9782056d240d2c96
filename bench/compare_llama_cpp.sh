#!/usr/bin/env bash
# Prefill and decode speed of `gemma-train generate` beside llama.cpp's `llama-bench`, on the same
# weights, in the same run, at the same thread count:
#   - a bf16 model (`gemma-train init --dtype bf16`, as a merged model is written): ours computing
#     in bf16 against llama.cpp on the bf16 GGUF that `gemma-train export` writes from it;
#   - its NF4 double-quant copy (`gemma-train quantize`, the QLoRA base a user evaluates with),
#     ours in f32 and bf16, against llama.cpp's Q4_0 of the same GGUF (`llama-quantize`), and
#     ours in bf16 against a Q4_0 whose output head stays bf16 as in the NF4 base.
# The model's vocab_size and the GGUF's token table agree (the tokenizer is padded, see below),
# so that both programs multiply by the whole output head.
# llama.cpp is built from source outside the repository (nothing of it is committed): from
# LLAMA_CPP_SRC when given, otherwise from the llama.cpp that PyPI's llama-cpp-python sdist
# vendors (downloaded with pip into the work folder; PyPI is the registry this machine reaches).
#
# Both sides: 128 prompt tokens, then 128 greedy new tokens, timed in a warm process.
# llama-bench runs its warm-up prompt in the process first, then reports pp128 (the prompt, from
# an empty context) and tg128 at depth 128 (`-d 128`: generation with 128 tokens already in the
# cache) as the mean of its repetitions; ours is the median of 3
# `generate --warmup` runs (the same: the prompt once untimed first), decoding after the 128-token
# prompt. WARMUP=0 times our first forward of the process instead (about 0.1 s more on bench-100m
# at 2 threads). Runs alternate between the two programs so that a slow moment of the machine
# falls on both.
#
# Usage: bench/compare_llama_cpp.sh [path/to/gemma-train]
#   BENCH_CONFIG  model config name or path (default bench-100m, ~108M parameters)
#   THREADS       threads for both programs (default 2)
#   BENCH_WORK    work folder outside the repo (default ~/.cache/gemma-train-bench); llama.cpp's
#                 build is kept there between runs
#   LLAMA_CPP_SRC a llama.cpp source tree to build instead of the vendored one
#   OURS_FLAGS    more flags for our `generate` (e.g. --no-step-decoder for the LibTorch path)
#   WARMUP        0: no --warmup for ours (a cold first forward against llama-bench's warm one)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin=$(realpath "${1:-build/gemma-train}")
config=${BENCH_CONFIG:-bench-100m}
threads=${THREADS:-2}
work=${BENCH_WORK:-$HOME/.cache/gemma-train-bench}
llama_py_version=0.3.36
warmup_flag=--warmup
[ "${WARMUP:-1}" = 0 ] && warmup_flag=
mkdir -p "$work"
case "$(realpath "$work")/" in
  "$repo"/*) echo "BENCH_WORK must be outside the repository" >&2; exit 2 ;;
esac
log() { printf '[compare_llama_cpp] %s\n' "$*" >&2; }

# --- llama.cpp, built outside the repo ------------------------------------------------------
src=${LLAMA_CPP_SRC:-}
if [ -z "$src" ]; then
  src=$work/llama_cpp_python-$llama_py_version/vendor/llama.cpp
  if [ ! -f "$src/CMakeLists.txt" ]; then
    log "downloading llama-cpp-python $llama_py_version's sdist (it vendors llama.cpp)"
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_py_version" \
      -d "$work"
    tar xzf "$work/llama_cpp_python-$llama_py_version.tar.gz" -C "$work"
  fi
fi
lbuild=$work/llama-build
if [ ! -x "$lbuild/bin/llama-bench" ] || [ ! -x "$lbuild/bin/llama-quantize" ]; then
  log "building llama-bench and llama-quantize from $src (a few minutes)"
  cmake -S "$src" -B "$lbuild" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >"$work/llama-cmake.log"
  cmake --build "$lbuild" -j "$(nproc)" --target llama-bench llama-quantize >"$work/llama-build.log"
fi
llama_commit=$(sed -nE 's/.*LLAMA_COMMIT = "(.*)".*/\1/p' "$lbuild/common/build-info.cpp" \
  2>/dev/null | head -1)

# --- the same weights for both -------------------------------------------------------------
models=$(mktemp -d "$work/models.XXXXXX")
trap 'rm -rf "$models"' EXIT
"$bin" init --config "$config" --out "$models/dense" --dtype bf16 --seed 1 >/dev/null
# The bundled tokenizer has 4,096 tokens and the bench configs a larger vocab_size (32,768 for
# bench-100m, as Gemma 4's 262,144-token head is a large share of its weights). A GGUF's token
# table sizes its embedding (the converter and our export keep the tokenizer's rows only), so
# with the bundled tokenizer llama.cpp would multiply by an eighth of the output head that we
# multiply by. The tokenizer is padded with never-produced `<unusedN>` tokens to the config's
# vocab_size, as Gemma's own tokenizers are: both programs then hold every row of the same head.
vocab_size=$(python3 - configs/tokenizer/tokenizer.json "$models/dense/config.json" \
  "$models/tokenizer.json" <<'PY'
import json, sys
tok = json.load(open(sys.argv[1], encoding="utf-8"))
config = json.load(open(sys.argv[2], encoding="utf-8"))
vocab_size = config.get("text_config", config)["vocab_size"]
vocab = tok["model"]["vocab"]
base = len(vocab)
assert sorted(vocab.values()) == list(range(base)), "tokenizer ids are not 0..N-1"
for token_id in range(base, vocab_size):
    vocab[f"<unused{token_id - base}>"] = token_id
json.dump(tok, open(sys.argv[3], "w", encoding="utf-8"), ensure_ascii=False)
print(vocab_size)
PY
)
cp "$models/tokenizer.json" "$models/dense/"
"$bin" quantize --model "$models/dense" --out "$models/nf4" >/dev/null
cp "$models/tokenizer.json" "$models/nf4/"
"$bin" export --format gguf --model "$models/dense" --out "$models/bf16.gguf" --dtype bf16 \
  >"$models/export.log"
grep -q " $vocab_size tokens" "$models/export.log" || {
  log "the GGUF does not hold all $vocab_size rows of the output head: $(cat "$models/export.log")"
  exit 1
}
"$lbuild/bin/llama-quantize" "$models/bf16.gguf" "$models/q4_0.gguf" Q4_0 "$threads" \
  >"$models/quantize.log" 2>&1
# llama-quantize stores the (tied) output head as Q6_K; our NF4 base keeps it bf16, as
# bitsandbytes and PEFT do. A second Q4_0 file keeps it bf16 too, so that one row compares the
# two programs' 4-bit products with the same head.
"$lbuild/bin/llama-quantize" --token-embedding-type bf16 --output-tensor-type bf16 \
  "$models/bf16.gguf" "$models/q4_0_head_bf16.gguf" Q4_0 "$threads" \
  >"$models/quantize_head_bf16.log" 2>&1

# A raw prompt of exactly 128 tokens: <bos>, "river" (two tokens at the start of a text) and
# 125 more " river" (one each).
prompt="river"
for _ in $(seq 2 126); do prompt+=" river"; done

# One `generate` run: prints "prefill_rate decode_rate".
ours_once() {  # model dtype
  local line
  line=$(OMP_NUM_THREADS=$threads "$bin" generate --model "$models/$1" --prompt "$prompt" --raw \
    --ids --temperature 0 --max-new-tokens 128 --dtype "$2" $warmup_flag ${OURS_FLAGS:-} 2>&1 >/dev/null |
    grep decode)
  local ptoks
  ptoks=$(sed -E 's/.*prefill ([0-9]+) tokens.*/\1/' <<<"$line")
  [ "$ptoks" = 128 ] || { log "the prompt is $ptoks tokens, not 128"; exit 1; }
  sed -E 's/.*prefill [0-9]+ tokens in [0-9.]+ s: ([0-9.]+) tokens\/s; decode [0-9]+ tokens in [0-9.]+ s: ([0-9.]+) tokens\/s.*/\1 \2/' \
    <<<"$line"
}
# One llama-bench run (3 repetitions): prints "pp_rate tg_rate": the prompt from an empty
# context, the generation at depth 128 (after 128 tokens in the cache, as ours decodes).
llama_once() {  # gguf
  "$lbuild/bin/llama-bench" -m "$models/$1" -t "$threads" -p 128 -n 128 -d 0,128 -r 3 -o csv \
    2>/dev/null | python3 -c '
import csv, sys
rows = {(int(r["n_prompt"]), int(r["n_gen"]), int(r["n_depth"])): float(r["avg_ts"])
        for r in csv.DictReader(sys.stdin)}
print(rows[(128, 0, 0)], rows[(0, 128, 128)])'
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$(((${#@} + 1) / 2))p"; }

# Rows: label, our model, our dtype, llama.cpp's file.
rows=("bf16 model|dense|bf16|bf16.gguf"
      "NF4 base (ours f32) vs Q4_0|nf4|f32|q4_0.gguf"
      "NF4 base (ours bf16) vs Q4_0|nf4|bf16|q4_0.gguf"
      "NF4 (bf16) vs Q4_0, bf16 head|nf4|bf16|q4_0_head_bf16.gguf")
printf '\nconfig %s, %s threads, %s (%s), llama.cpp %s (%s), ours: generate %s\n' "$config" \
  "$threads" "$(lscpu | sed -nE 's/^Model name: *//p')" \
  "$(grep -o -E 'avx512_?bf16|avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')" \
  "${llama_commit:-unknown commit}" "$src" "${warmup_flag:-(no --warmup)} ${OURS_FLAGS:-}"
printf '| %-30s | %-14s | %-14s | %-6s | %-14s | %-14s | %-6s |\n' row "ours prefill" \
  "llama prefill" ratio "ours decode" "llama decode" ratio
for row in "${rows[@]}"; do
  IFS='|' read -r label model dtype gguf <<<"$row"
  ours_once "$model" "$dtype" >/dev/null  # warm-up
  llama_once "$gguf" >/dev/null
  op=(); od=(); lp=(); ld=()
  for _ in 1 2 3; do
    read -r p d < <(ours_once "$model" "$dtype"); op+=("$p"); od+=("$d")
    read -r p d < <(llama_once "$gguf"); lp+=("$p"); ld+=("$d")
  done
  mop=$(median "${op[@]}"); mod=$(median "${od[@]}")
  mlp=$(median "${lp[@]}"); mld=$(median "${ld[@]}")
  printf '| %-30s | %-14.1f | %-14.1f | %-6.2f | %-14.1f | %-14.1f | %-6.2f |\n' "$label" "$mop" \
    "$mlp" "$(python3 -c "print($mop / $mlp)")" "$mod" "$mld" "$(python3 -c "print($mod / $mld)")"
done
