#include "cli/model_commands.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include <torch/torch.h>

#include "cli/cli_flags.h"
#include "io/atomic_output.h"
#include "io/bnb_nf4_format.h"
#include "io/hf_checkpoint.h"
#include "io/input_error.h"
#include "io/safetensors.h"
#include "io/string_match.h"
#include "model/forward_trace.h"
#include "model/gemma4_config.h"
#include "model/gemma4_hf_checkpoint.h"
#include "model/linear.h"
#include "peft/merged_checkpoint.h"
#include "peft/peft_adapter.h"
#include "peft/target_regex.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

// `--config` takes a file path or a bundled name ("e4b", "gemma-4-E4B-it", "tiny-e2b").
Gemma4Config resolve_config(const std::string& spec) {
  if (fs::is_regular_file(spec)) return load_gemma4_config(spec);
  std::string name = ascii_lower(spec);
  if (name.rfind("gemma-4-", 0) == 0) name = name.substr(8);
  if (name.size() > 3 && name.compare(name.size() - 3, 3, "-it") == 0) name.resize(name.size() - 3);
  if (const auto text = bundled_config_json(name))
    return parse_gemma4_config(*text, "bundled config " + name);
  std::string known;
  for (const auto& n : bundled_config_names()) known += " " + n;
  throw InputError("--config " + spec +
                   ": no such file, and not a bundled config (bundled:" + known + ")");
}

}  // namespace

int run_init_command(const CliFlags& flags) {
  const Gemma4Config config = resolve_config(flags.required("config"));
  const fs::path out = flags.required("out");
  const auto dtype = flags.dtype("dtype");
  const uint64_t shard_bytes = flags.bytes("shard-size", uint64_t{1000} * 1000);
  const auto seed = static_cast<uint64_t>(flags.integer("seed"));
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
  save.shard_bytes = shard_bytes;
  save.seed_for_unused = seed;
  save_gemma4(model, out, save);
  std::cout << "wrote " << out.string() << " (" << config.num_hidden_layers << " layers, "
            << (save.text_only ? "text-only" : "multimodal") << " layout)\n";
  return 0;
}

int run_logits_command(const CliFlags& flags) {
  const fs::path model_dir = flags.required("model");
  const std::vector<int64_t> ids = parse_id_list(flags.required("ids"), "--ids");
  const fs::path out = flags.required("out");
  Gemma4LoadOptions options;
  options.dtype = flags.dtype("dtype");
  options.device = flags.device("device");
  options.nf4_base = flags.has("load-in-4bit") ? Nf4Base::kAlways : Nf4Base::kAsStored;
  options.attn_implementation = attention_implementation_from_name(
      flags.value("attn-implementation"), "--attn-implementation");

  const auto t0 = std::chrono::steady_clock::now();
  LoadedGemma4 loaded = load_gemma4(model_dir, options);
  if (const auto adapter = flags.optional("adapter"))
    load_peft_adapter(loaded.model, loaded.report.prefix, *adapter);
  loaded.model->eval();  // inference: no adapter dropout
  for (int64_t id : ids) {
    if (id >= loaded.config.vocab_size) {
      throw InputError("--ids: token id " + std::to_string(id) +
                       " is outside the vocabulary (size " +
                       std::to_string(loaded.config.vocab_size) + ")");
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  const std::optional<std::string> trace_dir = flags.optional("trace");
  const int64_t trace_layer = flags.integer("trace-layer");
  if (trace_dir) {
    if (trace_layer < 0 || trace_layer >= loaded.config.num_hidden_layers)
      throw InputError("logits: --trace-layer expects a layer in [0, " +
                       std::to_string(loaded.config.num_hidden_layers) + ")");
    if (fs::exists(*trace_dir))
      throw InputError(*trace_dir + ": output folder already exists; choose a new path");
  }
  torch::Tensor logits;
  std::unique_ptr<ForwardTrace> trace;
  if (trace_dir) trace = std::make_unique<ForwardTrace>(trace_layer);
  {
    torch::InferenceMode inference;
    Gemma4Input input;
    input.input_ids = torch::tensor(ids, torch::kInt64).unsqueeze(0);
    logits = loaded.model->forward(input).squeeze(0).to(torch::kCPU, torch::kFloat32).contiguous();
  }
  if (trace) {
    // trace.safetensors (float32, [1, T, ...] per step) and steps.txt, the names in forward order.
    write_folder_atomically(*trace_dir, [&](const fs::path& tmp) {
      std::string order;
      for (const auto& [name, t] : trace->steps()) order += name + "\n";
      write_safetensors(tmp / "trace.safetensors", trace->steps());
      write_file_atomically(tmp / "steps.txt", order);
    });
    std::cerr << "logits: traced " << trace->steps().size() << " steps of layer " << trace_layer
              << " to " << *trace_dir << "\n";
  }
  const auto t2 = std::chrono::steady_clock::now();
  write_file_atomically(
      out, std::string(static_cast<const char*>(logits.data_ptr()), logits.numel() * sizeof(float)),
      flags.existing_output());
  const auto ms = [](auto a, auto b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  std::fprintf(stderr,
               "logits: %zu tokens, vocab %lld, load %.1f ms, forward %.1f ms (%.1f tokens/s)\n",
               ids.size(), static_cast<long long>(loaded.config.vocab_size), ms(t0, t1), ms(t1, t2),
               1000.0 * static_cast<double>(ids.size()) / ms(t1, t2));
  return 0;
}

int run_quantize_command(const CliFlags& flags) {
  const uint64_t shard_bytes = flags.bytes("shard-size", uint64_t{1000} * 1000);
  const fs::path out = flags.required("out");
  quantize_gemma4_checkpoint(flags.required("model"), out, shard_bytes);
  std::cout << "wrote " << out.string() << " (NF4 double-quant, bitsandbytes layout)\n";
  return 0;
}

int run_adapter_command(const CliFlags& flags) {
  const fs::path model_dir = flags.required("model");
  const fs::path out = flags.required("out");
  AdapterSpec spec;
  spec.lora.r = flags.integer("r");
  if (spec.lora.r <= 0) throw InputError("adapter: --r expects a positive rank");
  spec.lora.alpha = flags.has("alpha") ? flags.number("alpha") : static_cast<double>(spec.lora.r);
  spec.lora.dropout = flags.number("dropout");
  if (spec.lora.dropout < 0 || spec.lora.dropout >= 1)
    throw InputError("adapter: --dropout expects a probability in [0, 1)");
  spec.lora.use_dora = flags.has("dora");
  spec.lora.use_rslora = flags.has("rslora");
  spec.lora.init_lora_weights = flags.value("init") == "peft";
  spec.seed = static_cast<uint64_t>(flags.integer("seed"));
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
  spec.target_regex = flags.value("target-regex");
  if (!spec.target_regex.empty()) check_target_regex(spec.target_regex, "--target-regex");
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

int run_merge_command(const CliFlags& flags) {
  const fs::path model_dir = flags.required("model");
  const fs::path adapter = flags.required("adapter");
  const fs::path out = flags.required("out");
  const auto dtype = flags.dtype("dtype");
  const uint64_t shard_bytes = flags.bytes("shard-size", uint64_t{1000} * 1000);
  if (fs::exists(out))
    throw InputError(out.string() + ": output folder already exists; choose a new path");
  const MergedCheckpoint checkpoint(model_dir, adapter);
  if (!checkpoint.ignored_adapter_modules().empty()) {
    std::cerr
        << "merge: " << checkpoint.ignored_adapter_modules().size()
        << " adapted modules of other towers are not in the checkpoint and were skipped (e.g. "
        << checkpoint.ignored_adapter_modules().front() << ")\n";
  }
  write_merged_checkpoint(checkpoint, out, dtype, shard_bytes);
  std::cout << "wrote " << out.string() << " (" << checkpoint.keys().size() << " tensors, adapter "
            << "merged in float32, stored as " << (dtype == torch::kBFloat16 ? "bf16" : "f32")
            << ")\n";
  return 0;
}

int run_info_command(const CliFlags& flags) {
  const fs::path dir = flags.required("model");
  const Gemma4Config c = load_gemma4_config((dir / "config.json").string());
  const Gemma4CheckpointSummary s = summarize_gemma4_checkpoint(dir, c);

  int n_sliding = 0, n_full = 0, n_shared = 0;
  for (const auto& layer : c.layers) {
    (layer.type == LayerType::kSliding ? n_sliding : n_full)++;
    n_shared += layer.kv_shared;
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
  std::cout << "parameters: total " << s.total_parameters << ", embeddings "
            << s.embedding_parameters << ", PLE " << s.ple_parameters << ", decoder excluding both "
            << (s.total_parameters - s.embedding_parameters - s.ple_parameters) << "\n";
  std::cout << "checkpoint: prefix \"" << s.prefix << "\", "
            << (s.sharded ? "sharded" : "single file") << ", lm_head "
            << (s.lm_head_from_file ? "from file" : "tied to embed_tokens")
            << (s.nf4_weights
                    ? ", " + std::to_string(s.nf4_weights) + " Linear weights in bitsandbytes NF4"
                    : std::string())
            << "\n";
  std::cout << "tensors: " << s.used_tensors << " used, " << s.ignored_tensors << " ignored\n";
  for (const auto& [group, count] : s.ignored_groups)
    std::cout << "  ignored: " << group << " (" << count << ")\n";
  return 0;
}

}  // namespace gemma
