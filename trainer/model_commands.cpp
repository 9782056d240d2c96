#include "trainer/model_commands.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include <torch/torch.h>

#include "model/atomic_output.h"
#include "model/bnb_nf4_format.h"
#include "model/checkpoint.h"
#include "model/gemma4_checkpoint.h"
#include "model/gemma4_config.h"
#include "model/input_error.h"
#include "model/linear.h"
#include "model/merged_checkpoint.h"
#include "model/peft_adapter.h"
#include "trainer/cli_flags.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

// `--config` takes a file path or a bundled name ("e4b", "gemma-4-E4B-it", "tiny-e2b").
Gemma4Config resolve_config(const std::string& spec) {
  if (fs::is_regular_file(spec)) return load_gemma4_config(spec);
  std::string name = spec;
  for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (name.rfind("gemma-4-", 0) == 0) name = name.substr(8);
  if (name.size() > 3 && name.compare(name.size() - 3, 3, "-it") == 0) name.resize(name.size() - 3);
  if (const auto text = bundled_config_json(name))
    return parse_gemma4_config(*text, "bundled config " + name);
  std::string known;
  for (const auto& n : bundled_config_names()) known += " " + n;
  throw InputError("--config " + spec +
                   ": no such file, and not a bundled config (bundled:" + known + ")");
}

torch::ScalarType dtype_from_flag(const std::string& name) {
  return name == "bf16" ? torch::kBFloat16 : torch::kFloat32;
}

torch::Device device_from_flag(const std::string& name) {
  if (name == "cuda") {
    if (!torch::cuda::is_available())
      throw InputError("--device cuda: no CUDA device is available");
    return torch::Device(torch::kCUDA);
  }
  return torch::Device(torch::kCPU);
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

int run_init_command(const std::vector<std::string>& args) {
  const CliFlags flags("init", args, {"config", "out", "seed", "dtype", "shard-size"},
                       {"text-only"});
  const Gemma4Config config = resolve_config(flags.required("config"));
  const fs::path out = flags.required("out");
  const auto dtype = dtype_from_flag(flags.choice_or("dtype", "bf16", {"bf16", "f32"}));
  const int64_t shard_mb = flags.integer_or("shard-size", 5000);
  if (shard_mb <= 0) throw InputError("init: --shard-size expects a positive number of MB");
  const auto seed = static_cast<uint64_t>(flags.integer_or("seed", 0));
  if (fs::exists(out))
    throw InputError(out.string() + ": output folder already exists; choose a new path");

  Gemma4ForCausalLM model{nullptr};
  {
    DefaultDtypeGuard dtype_guard(dtype);
    model = Gemma4ForCausalLM(config);
  }
  randomize_gemma4(model, seed);
  Gemma4SaveOptions save;
  save.text_only = flags.has("text-only");
  save.dtype = dtype;
  save.shard_bytes = static_cast<uint64_t>(shard_mb) * 1000 * 1000;
  save.seed_for_unused = seed;
  save_gemma4(model, out, save);
  std::cout << "wrote " << out.string() << " (" << config.num_hidden_layers << " layers, "
            << (save.text_only ? "text-only" : "multimodal") << " layout)\n";
  return 0;
}

int run_logits_command(const std::vector<std::string>& args) {
  const CliFlags flags("logits", args, {"model", "ids", "out", "dtype", "device", "adapter"},
                       {"load-in-4bit"});
  const fs::path model_dir = flags.required("model");
  const std::vector<int64_t> ids = parse_id_list(flags.required("ids"), "--ids");
  const fs::path out = flags.required("out");
  Gemma4LoadOptions options;
  options.dtype = dtype_from_flag(flags.choice_or("dtype", "f32", {"f32", "bf16"}));
  options.device = device_from_flag(flags.choice_or("device", "cpu", {"cpu", "cuda"}));
  options.nf4_base = flags.has("load-in-4bit") ? Nf4Base::kAlways : Nf4Base::kAsStored;

  const auto t0 = std::chrono::steady_clock::now();
  LoadedGemma4 loaded = load_gemma4(model_dir, options);
  if (const auto adapter = flags.optional("adapter"))
    load_peft_adapter(loaded.model, loaded.report.prefix, *adapter);
  for (int64_t id : ids) {
    if (id >= loaded.config.vocab_size) {
      throw InputError("--ids: token id " + std::to_string(id) +
                       " is outside the vocabulary (size " +
                       std::to_string(loaded.config.vocab_size) + ")");
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  torch::Tensor logits;
  {
    torch::InferenceMode inference;
    Gemma4Input input;
    input.input_ids = torch::tensor(ids, torch::kInt64).unsqueeze(0);
    logits = loaded.model->forward(input).squeeze(0).to(torch::kCPU, torch::kFloat32).contiguous();
  }
  const auto t2 = std::chrono::steady_clock::now();
  write_file_atomically(out, std::string(static_cast<const char*>(logits.data_ptr()),
                                         logits.numel() * sizeof(float)));
  const auto ms = [](auto a, auto b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  std::fprintf(stderr,
               "logits: %zu tokens, vocab %lld, load %.1f ms, forward %.1f ms (%.1f tokens/s)\n",
               ids.size(), static_cast<long long>(loaded.config.vocab_size), ms(t0, t1), ms(t1, t2),
               1000.0 * static_cast<double>(ids.size()) / ms(t1, t2));
  return 0;
}

int run_quantize_command(const std::vector<std::string>& args) {
  const CliFlags flags("quantize", args, {"model", "out", "shard-size"});
  const int64_t shard_mb = flags.integer_or("shard-size", 5000);
  if (shard_mb <= 0) throw InputError("quantize: --shard-size expects a positive number of MB");
  const fs::path out = flags.required("out");
  quantize_gemma4_checkpoint(flags.required("model"), out,
                             static_cast<uint64_t>(shard_mb) * 1000 * 1000);
  std::cout << "wrote " << out.string() << " (NF4 double-quant, bitsandbytes layout)\n";
  return 0;
}

int run_adapter_command(const std::vector<std::string>& args) {
  const CliFlags flags(
      "adapter", args,
      {"model", "out", "r", "alpha", "dropout", "target-modules", "target-regex", "seed", "init"},
      {"dora", "rslora"});
  const fs::path model_dir = flags.required("model");
  const fs::path out = flags.required("out");
  AdapterSpec spec;
  spec.lora.r = flags.integer_or("r", 8);
  if (spec.lora.r <= 0) throw InputError("adapter: --r expects a positive rank");
  spec.lora.alpha = flags.number_or("alpha", static_cast<double>(spec.lora.r));
  spec.lora.dropout = flags.number_or("dropout", 0.0);
  if (spec.lora.dropout < 0 || spec.lora.dropout >= 1)
    throw InputError("adapter: --dropout expects a probability in [0, 1)");
  spec.lora.use_dora = flags.has("dora");
  spec.lora.use_rslora = flags.has("rslora");
  spec.lora.init_lora_weights = flags.choice_or("init", "peft", {"peft", "random"}) == "peft";
  spec.seed = static_cast<uint64_t>(flags.integer_or("seed", 0));
  if (flags.has("target-modules") && flags.has("target-regex"))
    throw InputError("adapter: give --target-modules or --target-regex, not both");
  if (const auto list = flags.optional("target-modules")) {
    spec.target_modules.clear();
    size_t start = 0;
    while (start <= list->size()) {
      const size_t comma = std::min(list->find(',', start), list->size());
      const std::string name = list->substr(start, comma - start);
      if (name.empty()) throw InputError("--target-modules: an empty name in \"" + *list + "\"");
      spec.target_modules.push_back(name);
      start = comma + 1;
    }
  }
  spec.target_regex = flags.value_or("target-regex", "");
  if (fs::exists(out))
    throw InputError(out.string() + ": output folder already exists; choose a new path");

  Gemma4LoadOptions options;
  options.nf4_base = Nf4Base::kAsStored;  // DoRA magnitudes from the weights training will see
  LoadedGemma4 loaded = load_gemma4(model_dir, options);
  const std::vector<std::string> paths = attach_adapters(loaded.model, spec);
  save_peft_adapter(loaded.model, spec, loaded.report.prefix, model_dir.string(), out);
  std::cout << "wrote " << out.string() << " (" << (spec.lora.use_dora ? "DoRA" : "LoRA")
            << " r=" << spec.lora.r << " on " << paths.size() << " modules)\n";
  return 0;
}

int run_merge_command(const std::vector<std::string>& args) {
  const CliFlags flags("merge", args, {"model", "adapter", "out", "dtype", "shard-size"});
  const fs::path model_dir = flags.required("model");
  const fs::path adapter = flags.required("adapter");
  const fs::path out = flags.required("out");
  const auto dtype = dtype_from_flag(flags.choice_or("dtype", "bf16", {"bf16", "f32"}));
  const int64_t shard_mb = flags.integer_or("shard-size", 5000);
  if (shard_mb <= 0) throw InputError("merge: --shard-size expects a positive number of MB");
  if (fs::exists(out))
    throw InputError(out.string() + ": output folder already exists; choose a new path");
  const MergedCheckpoint checkpoint(model_dir, adapter);
  if (!checkpoint.ignored_adapter_modules().empty()) {
    std::cerr
        << "merge: " << checkpoint.ignored_adapter_modules().size()
        << " adapted modules of other towers are not in the checkpoint and were skipped (e.g. "
        << checkpoint.ignored_adapter_modules().front() << ")\n";
  }
  write_merged_checkpoint(checkpoint, out, dtype, static_cast<uint64_t>(shard_mb) * 1000 * 1000);
  std::cout << "wrote " << out.string() << " (" << checkpoint.keys().size() << " tensors, adapter "
            << "merged in float32, stored as " << (dtype == torch::kBFloat16 ? "bf16" : "f32")
            << ")\n";
  return 0;
}

int run_info_command(const std::vector<std::string>& args) {
  const CliFlags flags("info", args, {"model"});
  const fs::path dir = flags.required("model");
  const Gemma4Config c = load_gemma4_config((dir / "config.json").string());
  const CheckpointReader reader(dir);
  const std::string prefix = detect_gemma4_prefix(reader, dir);

  int n_sliding = 0, n_full = 0, n_shared = 0;
  for (const auto& s : c.layers) {
    (s.type == LayerType::kSliding ? n_sliding : n_full)++;
    n_shared += s.kv_shared;
  }
  std::cout << "config: hidden " << c.hidden_size << ", layers " << c.num_hidden_layers << " ("
            << n_sliding << " sliding, " << n_full << " full, " << n_shared << " KV-shared), heads "
            << c.num_attention_heads << ", vocab " << c.vocab_size << ", sliding window "
            << c.sliding_window << "\n";
  std::cout << "features: PLE " << (c.has_ple() ? "yes" : "no") << ", K=V "
            << (c.attention_k_eq_v ? "yes" : "no") << ", double-wide MLP "
            << (c.use_double_wide_mlp ? "yes" : "no") << ", MoE "
            << (c.enable_moe_block ? std::to_string(c.num_experts) + " experts top-" +
                                         std::to_string(c.top_k_experts)
                                   : std::string("no"))
            << ", final softcap "
            << (c.final_logit_softcapping ? std::to_string(*c.final_logit_softcapping)
                                          : std::string("none"))
            << "\n";

  std::set<std::string> used;
  int64_t total = 0, embeddings = 0, ple = 0, quantized = 0;
  for (const Gemma4TensorInfo& info : gemma4_checkpoint_layout(c)) {
    if (!info.used) continue;
    const std::string key = prefix + info.name;
    if (has_bnb_nf4(reader, key)) {
      for (const std::string& part : bnb_nf4_keys(key)) used.insert(part);
      ++quantized;
    } else if (reader.contains(key)) {
      used.insert(key);
    } else {
      throw InputError(dir.string() + ": missing tensor \"" + key + "\"");
    }
    const int64_t n = numel_of(info.shape);
    total += n;
    if (info.name == "embed_tokens.weight") embeddings += n;
    if (info.name == "embed_tokens_per_layer.weight") ple += n;
  }
  if (reader.contains("lm_head.weight")) {
    used.insert("lm_head.weight");
    total += numel_of(reader.entry("lm_head.weight").shape);
  }
  std::cout << "parameters: total " << total << ", embeddings " << embeddings << ", PLE " << ple
            << ", decoder excluding both " << (total - embeddings - ple) << "\n";
  std::cout << "checkpoint: prefix \"" << prefix << "\", "
            << (reader.sharded() ? "sharded" : "single file") << ", lm_head "
            << (reader.contains("lm_head.weight") ? "from file" : "tied to embed_tokens")
            << (quantized ? ", " + std::to_string(quantized) + " Linear weights in bitsandbytes NF4"
                          : std::string())
            << "\n";
  std::map<std::string, int> ignored;  // by the key's first two components
  for (const std::string& key : reader.keys()) {
    if (used.count(key)) continue;
    const size_t a = key.find('.');
    const size_t b = a == std::string::npos ? a : key.find('.', a + 1);
    std::string group = key.substr(0, b);
    if (key.rfind(prefix + "layers.", 0) == 0)
      group = "unused K/V of KV-shared layers and other layer tensors";
    ignored[group]++;
  }
  std::cout << "tensors: " << used.size() << " used, " << (reader.keys().size() - used.size())
            << " ignored\n";
  for (const auto& [group, count] : ignored)
    std::cout << "  ignored: " << group << " (" << count << ")\n";
  return 0;
}

}  // namespace gemma
