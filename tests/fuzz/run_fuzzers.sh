#!/usr/bin/env bash
# Builds the parsers' libFuzzer targets with clang (ASan + UBSan) and runs each for a while.
# Needs Debian's clang (apt-get install clang) and a built tree (scripts/setup.sh).
# Usage: tests/fuzz/run_fuzzers.sh [seconds per target, default 60]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
out=build/fuzz
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. -I/usr/include)
torch_prefix=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
torch_flags=(-I"$torch_prefix/include" -I"$torch_prefix/include/torch/csrc/api/include" -D_GLIBCXX_USE_CXX11_ABI=1
             -L"$torch_prefix/lib" -Wl,-rpath,"$torch_prefix/lib" -ltorch -ltorch_cpu -lc10)
clang++ "${flags[@]}" tests/fuzz/fuzz_gemma4_config.cpp model/gemma4_config.cpp -o "$out/fuzz_gemma4_config"
clang++ "${flags[@]}" tests/fuzz/fuzz_tokenizer_json.cpp data/hf_tokenizer_json.cpp data/sentencepiece_model_proto.cpp \
  -lsentencepiece -o "$out/fuzz_tokenizer_json"
clang++ "${flags[@]}" tests/fuzz/fuzz_chat_request.cpp data/chat_template.cpp data/tokenizer.cpp data/hf_tokenizer_json.cpp \
  data/sentencepiece_model_proto.cpp -lsentencepiece -o "$out/fuzz_chat_request"
clang++ "${flags[@]}" tests/fuzz/fuzz_safetensors.cpp model/safetensors.cpp model/atomic_output.cpp "${torch_flags[@]}" \
  -o "$out/fuzz_safetensors"
clang++ "${flags[@]}" tests/fuzz/fuzz_gguf.cpp model/gguf_reader.cpp model/gguf_writer.cpp model/atomic_output.cpp \
  "${torch_flags[@]}" -o "$out/fuzz_gguf"

# Seed corpora from the project's own files.
mkdir -p "$out/corpus_config" "$out/corpus_tokenizer" "$out/corpus_chat" "$out/corpus_safetensors" "$out/corpus_gguf"
cp configs/*.json "$out/corpus_config/"
head -c 4000 configs/tokenizer/tokenizer.json > "$out/corpus_tokenizer/head.json"
printf '%s' '{"normalizer":{"type":"Replace","pattern":{"String":" "},"content":"\u2581"},"model":{"type":"BPE","unk_token":"<unk>","byte_fallback":true,"vocab":{"<unk>":0,"a":1,"b":2,"ab":3},"merges":["a b"]},"added_tokens":[{"id":0,"content":"<unk>","special":true}]}' \
  > "$out/corpus_tokenizer/small.json"
printf '%s' '{"messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"},{"role":"assistant","tool_calls":[{"id":"1","function":{"name":"f","arguments":{"a":[1,"x",null,true]}}}]},{"role":"tool","tool_call_id":"1","content":"r"}],"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object","properties":{"a":{"type":"array","items":{"type":"string"}}},"required":["a"]}}}],"enable_thinking":true}' \
  > "$out/corpus_chat/tools.json"
.venv/bin/python - "$out/corpus_safetensors" <<'PY'
import sys, torch
from safetensors.torch import save_file
save_file({"a": torch.randn(3, 4), "b": torch.ones(2, dtype=torch.bfloat16), "c": torch.arange(5)}, sys.argv[1] + "/seed.safetensors")
PY
.venv/bin/python - "$out/corpus_gguf" <<'PY'
import sys, numpy as np, gguf
w = gguf.GGUFWriter(sys.argv[1] + "/seed.gguf", "gemma4")
w.add_uint32("gemma4.block_count", 2)
w.add_float32("gemma4.attention.layer_norm_rms_epsilon", 1e-6)
w.add_array("gemma4.attention.sliding_window_pattern", [True, False])
w.add_array("tokenizer.ggml.tokens", ["<pad>", "<eos>", "a"])
w.add_string("tokenizer.chat_template", "{{ messages }}")
w.add_tensor("token_embd.weight", np.arange(96, dtype=np.float32).reshape(3, 32))
w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float16))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
for target in config tokenizer chat safetensors gguf; do
  case $target in
    config) bin=fuzz_gemma4_config ;; tokenizer) bin=fuzz_tokenizer_json ;;
    chat) bin=fuzz_chat_request ;; safetensors) bin=fuzz_safetensors ;; gguf) bin=fuzz_gguf ;;
  esac
  echo "== $bin ($seconds s)"
  "$out/$bin" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 "$out/corpus_$target" 2>&1 | tail -3
done
