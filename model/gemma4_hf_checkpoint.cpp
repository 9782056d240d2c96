#include "model/gemma4_hf_checkpoint.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/atomic_output.h"
#include "io/bnb_nf4_format.h"
#include "io/bounded_json.h"
#include "io/hf_checkpoint.h"
#include "io/input_error.h"
#include "io/string_match.h"
#include "model/gemma4_feed_forward.h"
#include "model/linear.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

constexpr const char* kPleTableName = "model.embed_tokens_per_layer.weight";

std::vector<std::pair<std::string, torch::Tensor>> state_of(Gemma4ForCausalLM& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value());
  for (const auto& b : model->named_buffers()) {
    if (!is_nf4_buffer_name(b.key())) out.emplace_back(b.key(), b.value());
  }
  return out;
}

// What a QLoRA load holds in NF4, by parameter name. The two expert tensors of a layer are
// collected (gate_up_proj first, as the state lists them) and handed over together.
struct Nf4Targets {
  std::map<std::string, LinearImpl*> linears;
  std::map<std::string,
           std::pair<Gemma4ExpertsImpl*, std::shared_ptr<std::vector<std::vector<Nf4Weight>>>>>
      experts;
};

Nf4Targets nf4_targets(Gemma4ForCausalLM& model, const Gemma4LoadOptions& options,
                       const HfCheckpointReader& reader, const std::string& prefix) {
  Nf4Targets out;
  if (options.nf4_base == Nf4Base::kNever) return out;
  const bool always = options.nf4_base == Nf4Base::kAlways;
  for (const auto& m : model->named_modules()) {
    const std::string& path = m.key();
    if (auto* linear = m.value()->as<LinearImpl>()) {
      const std::string name = path + ".weight";
      if (!always) {
        if (has_bnb_nf4(reader, hf_checkpoint_key(name, prefix))) out.linears[name] = linear;
        continue;
      }
      if (path == "lm_head" || (ends_with(path, "router.proj") && !options.nf4_router)) continue;
      out.linears[name] = linear;
    } else if (auto* experts = m.value()->as<Gemma4ExpertsImpl>();
               experts && always && options.nf4_experts) {
      auto lists = std::make_shared<std::vector<std::vector<Nf4Weight>>>();
      out.experts[path + ".gate_up_proj"] = {experts, lists};
      out.experts[path + ".down_proj"] = {experts, lists};
    }
  }
  return out;
}

// The two ways a checkpoint tensor fails its config, worded once for check_gemma4_tensors (info)
// and load_gemma4 alike.
[[noreturn]] void throw_missing_tensor(const fs::path& dir, const std::string& key,
                                       const std::vector<int64_t>& expected) {
  throw InputError(dir.string() + ": missing tensor \"" + key + "\" (expected shape " +
                   shape_text(expected) + ")");
}

void require_tensor_shape(const fs::path& dir, const std::string& key,
                          const std::vector<int64_t>& found, const std::vector<int64_t>& expected) {
  if (found != expected) {
    throw InputError(dir.string() + ": tensor \"" + key + "\" has shape " + shape_text(found) +
                     ", expected " + shape_text(expected));
  }
}

}  // namespace

int64_t nf4_base_bytes(Gemma4ForCausalLM& model) {
  int64_t n = 0;
  for (const auto& m : model->named_modules()) {
    if (const auto* linear = m.value()->as<LinearImpl>(); linear && linear->is_nf4()) {
      n += linear->nf4_weight()->nbytes();
    } else if (const auto* experts = m.value()->as<Gemma4ExpertsImpl>(); experts) {
      n += experts->nf4_bytes();
    }
  }
  return n;
}

std::vector<Gemma4TensorInfo> gemma4_hf_checkpoint_layout(const Gemma4Config& c) {
  std::vector<Gemma4TensorInfo> out;
  const int64_t H = c.hidden_size, L = c.num_hidden_layers, P = c.hidden_size_per_layer_input;
  const auto add = [&](std::string name, std::vector<int64_t> shape, bool used = true) {
    out.push_back({std::move(name), std::move(shape), used});
  };
  add("embed_tokens.weight", {c.vocab_size, H});
  if (c.has_ple()) {
    add("embed_tokens_per_layer.weight", {c.vocab_size_per_layer_input, L * P});
    add("per_layer_model_projection.weight", {L * P, H});
    add("per_layer_projection_norm.weight", {P});
  }
  for (int64_t i = 0; i < L; ++i) {
    const Gemma4LayerSpec& s = c.layers[i];
    const std::string l = "layers." + std::to_string(i) + ".";
    const int64_t q = c.num_attention_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    for (const char* n : {"input_layernorm", "post_attention_layernorm",
                          "pre_feedforward_layernorm", "post_feedforward_layernorm"}) {
      add(l + n + ".weight", {H});
    }
    add(l + "layer_scalar", {1});
    add(l + "self_attn.q_proj.weight", {q, H});
    add(l + "self_attn.q_norm.weight", {s.head_dim});
    add(l + "self_attn.k_proj.weight", {kv, H}, !s.kv_shared);
    add(l + "self_attn.k_norm.weight", {s.head_dim}, !s.kv_shared);
    if (s.has_v_proj) add(l + "self_attn.v_proj.weight", {kv, H}, !s.kv_shared);
    add(l + "self_attn.o_proj.weight", {H, q});
    add(l + "mlp.gate_proj.weight", {s.intermediate_size, H});
    add(l + "mlp.up_proj.weight", {s.intermediate_size, H});
    add(l + "mlp.down_proj.weight", {H, s.intermediate_size});
    if (c.has_ple()) {
      add(l + "per_layer_input_gate.weight", {P, H});
      add(l + "per_layer_projection.weight", {H, P});
      add(l + "post_per_layer_input_norm.weight", {H});
    }
    if (c.enable_moe_block) {
      const int64_t E = c.num_experts, I = c.moe_intermediate_size;
      add(l + "router.proj.weight", {E, H});
      add(l + "router.scale", {H});
      add(l + "router.per_expert_scale", {E});
      add(l + "experts.gate_up_proj", {E, 2 * I, H});
      add(l + "experts.down_proj", {E, H, I});
      for (const char* n : {"pre_feedforward_layernorm_2", "post_feedforward_layernorm_1",
                            "post_feedforward_layernorm_2"}) {
        add(l + n + ".weight", {H});
      }
    }
  }
  add("norm.weight", {H});
  return out;
}

std::string hf_checkpoint_key(const std::string& module_name, const std::string& prefix) {
  const std::string inner = "model.";
  if (module_name.rfind(inner, 0) == 0) return prefix + module_name.substr(inner.size());
  return module_name;
}

std::string detect_gemma4_prefix(const HfCheckpointReader& reader, const fs::path& dir) {
  for (const char* prefix : {kMultimodalPrefix, kTextOnlyPrefix}) {
    if (reader.contains(std::string(prefix) + "embed_tokens.weight")) return prefix;
  }
  throw InputError(dir.string() + ": no \"" + kMultimodalPrefix + "embed_tokens.weight\" or \"" +
                   kTextOnlyPrefix + "embed_tokens.weight\": not a Gemma 4 text checkpoint");
}

void check_gemma4_tensors(const HfCheckpointReader& reader, const Gemma4Config& config,
                          const std::string& prefix, const fs::path& dir) {
  const auto check = [&](const std::string& key, const std::vector<int64_t>& expected) {
    std::vector<int64_t> found;
    if (has_bnb_nf4(reader, key)) {
      found = read_bnb_nf4(reader, key, dir.string()).shape;
    } else if (reader.contains(key)) {
      found = reader.entry(key).shape;
    } else {
      throw_missing_tensor(dir, key, expected);
    }
    require_tensor_shape(dir, key, found, expected);
  };
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(config)) {
    if (info.used) check(prefix + info.name, info.shape);
  }
  // An untied lm_head is read when present and required when the config unties it (the model
  // then has one to fill).
  if (reader.contains("lm_head.weight") || !config.tie_word_embeddings)
    check("lm_head.weight", {config.vocab_size, config.hidden_size});
}

LoadedGemma4 load_gemma4(const fs::path& dir, const Gemma4LoadOptions& options) {
  LoadedGemma4 out;
  out.config = load_gemma4_config((dir / "config.json").string());
  const HfCheckpointReader reader(dir);

  Gemma4LoadReport& report = out.report;
  report.prefix = detect_gemma4_prefix(reader, dir);
  report.lm_head_from_file = reader.contains("lm_head.weight");

  {
    DefaultDtypeGuard dtype_guard(options.dtype);
    out.config.attn_implementation = options.attn_implementation;
    out.model = Gemma4ForCausalLM(out.config, report.lm_head_from_file);
  }
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  const Nf4Targets nf4 = nf4_targets(out.model, options, reader, report.prefix);
  const auto check_dense = [&](const std::string& key, const std::vector<int64_t>& expected) {
    if (!reader.contains(key)) throw_missing_tensor(dir, key, expected);
    const SafetensorsEntry& e = reader.entry(key);
    require_tensor_shape(dir, key, e.shape, expected);
    if (!c10::isFloatingType(e.dtype)) {
      throw InputError(dir.string() + ": tensor \"" + key + "\" has dtype " +
                       safetensors_dtype_name(e.dtype) + ", expected a floating-point dtype");
    }
  };
  for (auto& [name, tensor] : state_of(out.model)) {
    const std::string key = hf_checkpoint_key(name, report.prefix);
    const std::vector<int64_t> expected = tensor.sizes().vec();
    if (const auto it = nf4.linears.find(name); it != nf4.linears.end()) {
      Nf4Weight q;
      if (has_bnb_nf4(reader, key)) {
        q = read_bnb_nf4(reader, key, dir.string());
        require_tensor_shape(dir, key, q.shape, expected);
        q.packed = q.packed.clone();  // owned, not a view of the file
        q.absmax_codes = q.absmax_codes.clone();
        for (const std::string& part : bnb_nf4_keys(key)) {
          used.insert(part);
          reader.release(part);
        }
      } else {
        check_dense(key, expected);
        q = quantize_nf4(reader.view(key));
        reader.release(key);
        used.insert(key);
      }
      it->second->set_nf4_weight(std::move(q));
      continue;
    }
    if (const auto it = nf4.experts.find(name); it != nf4.experts.end()) {
      // gate_up_proj and down_proj: each expert's matrix quantized on its own.
      check_dense(key, expected);
      std::vector<Nf4Weight> per_expert;
      const torch::Tensor all = reader.view(key);
      for (int64_t e = 0; e < all.size(0); ++e) per_expert.push_back(quantize_nf4(all[e]));
      reader.release(key);
      used.insert(key);
      it->second.second->push_back(std::move(per_expert));
      if (it->second.second->size() == 2) {
        auto& lists = *it->second.second;
        it->second.first->set_nf4_experts(std::move(lists[0]), std::move(lists[1]));
      }
      continue;
    }
    if (has_bnb_nf4(reader, key)) {
      // A bitsandbytes 4-bit checkpoint: dequantized into the model's dtype.
      const Nf4Weight q = read_bnb_nf4(reader, key, dir.string());
      require_tensor_shape(dir, key, q.shape, expected);
      tensor.copy_(dequantize_nf4(q));
      for (const std::string& part : bnb_nf4_keys(key)) used.insert(part);
      continue;
    }
    check_dense(key, expected);
    const SafetensorsEntry& e = reader.entry(key);
    if (name == kPleTableName && e.dtype == options.dtype) {
      // §2.2: the PLE table is a frozen lookup of several GB; in the file's dtype it is used
      // straight from the read-only mapping, and only the rows a batch needs are ever read.
      tensor.set_data(reader.view(key));
      tensor.set_requires_grad(false);
    } else {
      tensor.copy_(reader.view(key));
      reader.release(key);
    }
    used.insert(key);
  }
  for (const std::string& key : reader.keys()) {
    (used.count(key) ? report.used : report.ignored).push_back(key);
  }
  out.model->place_on(options.device, options.ple_on_host);
  return out;
}

void randomize_gemma4(Gemma4ForCausalLM& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = model->config().initializer_range;
  for (auto& [name, tensor] : state_of(model)) {
    // Drawn in float32 on the host so a seed gives the same model in every dtype.
    torch::Tensor r = torch::empty(tensor.sizes(), torch::kFloat32);
    if (tensor.dim() >= 2) {
      r.normal_(0.0, std, gen);
    } else {
      r.normal_(1.0, 0.1, gen);
    }
    tensor.copy_(r);
  }
}

void save_gemma4(Gemma4ForCausalLM& model, const fs::path& out_dir,
                 const Gemma4SaveOptions& options) {
  TORCH_CHECK(nf4_base_bytes(model) == 0,
              "save_gemma4: the model has an NF4 base; write merged weights with `merge`");
  const Gemma4Config& config = model->config();
  const std::string prefix = options.text_only ? kTextOnlyPrefix : kMultimodalPrefix;
  std::map<std::string, torch::Tensor> state;
  for (auto& [name, tensor] : state_of(model)) state[hf_checkpoint_key(name, prefix)] = tensor;

  std::vector<HfCheckpointTensor> tensors;
  uint64_t unused_index = 0;
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(config)) {
    const std::string key = prefix + info.name;
    HfCheckpointTensor t{key, info.shape, options.dtype, {}};
    if (info.used) {
      const torch::Tensor& value = state.at(key);
      TORCH_CHECK(value.sizes().vec() == info.shape, "save_gemma4: ", key,
                  " shape differs from the layout");
      t.make = [value, dtype = options.dtype] { return value.detach().to(torch::kCPU, dtype); };
    } else {
      // Released checkpoints carry K/V weights for KV-shared layers that nothing reads; write
      // random ones so the file has the released layout (§2.5, §3.2).
      const uint64_t seed = options.seed_for_unused * 1000003ull + unused_index++;
      const double std = config.initializer_range;
      t.make = [shape = info.shape, seed, std, dtype = options.dtype] {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
        torch::Tensor r = torch::empty(shape, torch::kFloat32);
        if (shape.size() >= 2) {
          r.normal_(0.0, std, gen);
        } else {
          r.normal_(1.0, 0.1, gen);
        }
        return r.to(dtype);
      };
    }
    tensors.push_back(std::move(t));
  }
  if (model->lm_head) {
    torch::Tensor w = model->lm_head->weight;
    tensors.push_back({"lm_head.weight", w.sizes().vec(), options.dtype,
                       [w, dtype = options.dtype] { return w.detach().to(torch::kCPU, dtype); }});
  }

  const std::string dtype_name = options.dtype == torch::kBFloat16  ? "bfloat16"
                                 : options.dtype == torch::kFloat16 ? "float16"
                                                                    : "float32";
  nlohmann::json generation = {{"bos_token_id", config.bos_token_id},
                               {"pad_token_id", config.pad_token_id},
                               // <eos>, <turn|>, <|tool_response>: the stop set of §4.1.
                               {"eos_token_id", nlohmann::json::array()}};
  for (int64_t id : {1, 106, 50}) {
    if (id < config.vocab_size) generation["eos_token_id"].push_back(id);
  }
  write_folder_atomically(out_dir, [&](const fs::path& tmp) {
    write_hf_checkpoint(tmp, tensors, options.shard_bytes);
    write_file_atomically(tmp / "config.json",
                          gemma4_config_to_json(config, options.text_only, dtype_name));
    write_file_atomically(tmp / "generation_config.json", generation.dump(2) + "\n");
  });
}

namespace {

// The decoder's Linear weights, the ones bitsandbytes stores in 4 bits: every 2-D tensor of the
// layout but the two embedding tables (transformers replaces every nn.Linear but lm_head).
std::set<std::string> linear_weight_names(const Gemma4Config& config) {
  std::set<std::string> out;
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(config)) {
    if (info.shape.size() == 2 && info.name != "embed_tokens.weight" &&
        info.name != "embed_tokens_per_layer.weight") {
      out.insert(info.name);
    }
  }
  return out;
}

}  // namespace

void quantize_gemma4_checkpoint(const fs::path& in_dir, const fs::path& out_dir,
                                uint64_t shard_bytes) {
  const Gemma4Config config = load_gemma4_config((in_dir / "config.json").string());
  nlohmann::json config_json =
      parse_json_input(read_text_file(in_dir / "config.json"), (in_dir / "config.json").string());
  if (config_json.contains("quantization_config")) {
    throw InputError((in_dir / "config.json").string() +
                     ": already has a quantization_config (already quantized?)");
  }
  const HfCheckpointReader reader(in_dir);
  const std::string prefix = detect_gemma4_prefix(reader, in_dir);
  check_gemma4_tensors(reader, config, prefix, in_dir);
  const std::set<std::string> linear = linear_weight_names(config);

  // The parts of one quantized weight are written one after another; quantize each weight once.
  struct Quantized {
    std::string key;
    std::vector<std::pair<std::string, torch::Tensor>> parts;
  };
  auto last = std::make_shared<Quantized>();
  std::vector<HfCheckpointTensor> tensors;
  std::string compute_dtype = "bfloat16";
  for (const std::string& key : reader.keys()) {
    const SafetensorsEntry& e = reader.entry(key);
    const bool quantize = key.rfind(prefix, 0) == 0 && linear.count(key.substr(prefix.size())) != 0;
    if (!quantize) {
      tensors.push_back(
          {key, e.shape, e.dtype, [&reader, key] { return reader.view(key).clone(); }});
      continue;
    }
    if (e.dtype == torch::kFloat32) compute_dtype = "float32";
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    const int64_t blocks = (n + kNf4BlockSize - 1) / kNf4BlockSize;
    const std::vector<std::vector<int64_t>> shapes = {
        {(n + 1) / 2, 1},
        {blocks},
        {16},
        {(blocks + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize},
        {256},
        {200}};
    const std::vector<torch::ScalarType> dtypes = {torch::kUInt8,   torch::kUInt8,
                                                   torch::kFloat32, torch::kFloat32,
                                                   torch::kFloat32, torch::kUInt8};
    const auto keys = bnb_nf4_keys(key);
    for (size_t part = 0; part < keys.size(); ++part) {
      tensors.push_back({keys[part], shapes[part], dtypes[part], [&reader, key, part, last] {
                           if (last->key != key) {
                             last->key = key;
                             last->parts = bnb_nf4_tensors(key, quantize_nf4(reader.view(key)));
                             reader.release(key);
                           }
                           return last->parts[part].second;
                         }});
    }
  }
  config_json["quantization_config"] = bnb_quantization_config(compute_dtype);
  write_folder_atomically(out_dir, [&](const fs::path& tmp) {
    write_hf_checkpoint(tmp, tensors, shard_bytes);
    write_file_atomically(tmp / "config.json", config_json.dump(2) + "\n");
    copy_hf_checkpoint_side_files(in_dir, tmp);
  });
}

Gemma4CheckpointSummary summarize_gemma4_checkpoint(const std::filesystem::path& dir,
                                                    const Gemma4Config& config) {
  const HfCheckpointReader reader(dir);
  Gemma4CheckpointSummary s;
  s.prefix = detect_gemma4_prefix(reader, dir);
  s.sharded = reader.sharded();
  // Every tensor is there with the shape the config gives it (the check `logits` makes when
  // loading), so the counts below are the config's: each tensor is within
  // kMaxConfigTensorElements and the int64 sums cannot overflow (gemma4_config.h).
  check_gemma4_tensors(reader, config, s.prefix, dir);
  const auto numel_of = [](const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  };
  std::set<std::string> used;
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(config)) {
    if (!info.used) continue;
    const std::string key = s.prefix + info.name;
    if (has_bnb_nf4(reader, key)) {
      for (const std::string& part : bnb_nf4_keys(key)) used.insert(part);
      ++s.nf4_weights;
    } else {
      used.insert(key);
    }
    const int64_t n = numel_of(info.shape);
    s.total_parameters += n;
    if (info.name == "embed_tokens.weight") s.embedding_parameters += n;
    if (info.name == "embed_tokens_per_layer.weight") s.ple_parameters += n;
  }
  if (reader.contains("lm_head.weight")) {
    used.insert("lm_head.weight");
    s.lm_head_from_file = true;
    s.total_parameters += config.vocab_size * config.hidden_size;  // its shape was checked
  }
  for (const std::string& key : reader.keys()) {
    if (used.count(key)) continue;
    const size_t a = key.find('.');
    const size_t b = a == std::string::npos ? a : key.find('.', a + 1);
    std::string group = key.substr(0, b);
    if (key.rfind(s.prefix + "layers.", 0) == 0)
      group = "unused K/V of KV-shared layers and other layer tensors";
    s.ignored_groups[group]++;
  }
  s.used_tensors = used.size();
  s.ignored_tensors = reader.keys().size() - used.size();
  return s;
}

}  // namespace gemma
