#include "peft/merged_checkpoint.h"

#include <nlohmann/json.hpp>
#include <set>

#include "io/atomic_output.h"
#include "io/bnb_nf4_format.h"
#include "io/bounded_json.h"
#include "io/input_error.h"
#include "io/safetensors.h"
#include "io/string_match.h"
#include "kernels/nf4.h"
#include "kernels/nf4_matmul.h"
#include "model/gemma4_hf_checkpoint.h"
#include "peft/peft_adapter.h"

namespace gemma {
namespace fs = std::filesystem;

torch::Tensor merge_adapter_into_weight(const torch::Tensor& weight, const AdapterTensors& adapter,
                                        const LoraOptions& options) {
  const torch::Tensor w = weight.to(torch::kFloat32);
  torch::Tensor merged =
      w + torch::matmul(adapter.lora_B.to(torch::kFloat32), adapter.lora_A.to(torch::kFloat32)) *
              options.scaling();
  if (!adapter.magnitude.defined()) return merged;
  // DoRA: every output row rescaled to its learned magnitude (PEFT's dora_factor).
  const torch::Tensor factor = adapter.magnitude.to(torch::kFloat32) / merged.norm(2, {1});
  return merged * factor.unsqueeze(1);
}

MergedCheckpoint::MergedCheckpoint(const fs::path& model_dir,
                                   const std::optional<fs::path>& adapter_dir)
    : dir_(model_dir),
      config_(load_gemma4_config((model_dir / "config.json").string())),
      reader_(std::make_unique<HfCheckpointReader>(model_dir)) {
  prefix_ = detect_gemma4_prefix(*reader_, model_dir);
  check_gemma4_tensors(*reader_, config_, prefix_, model_dir);
  std::set<std::string> parts;  // the non-weight keys of NF4 weights
  for (const std::string& key : reader_->keys()) {
    if (!ends_with(key, ".weight") || !has_bnb_nf4(*reader_, key)) continue;
    const Nf4Weight q = read_bnb_nf4(*reader_, key, model_dir.string());
    nf4_[key] = q.dtype;
    shapes_[key] = q.shape;
    for (const std::string& part : bnb_nf4_keys(key)) {
      if (part != key) parts.insert(part);
    }
  }
  for (const std::string& key : reader_->keys()) {
    if (parts.count(key)) continue;
    keys_.push_back(key);
    if (!nf4_.count(key)) shapes_[key] = reader_->entry(key).shape;
  }
  if (!adapter_dir) return;

  adapter_ = read_peft_adapter_files(*adapter_dir);
  {
    std::map<std::string, AdapterTensors> respelt;
    for (auto& [key, tensors] : adapter_.by_weight_key) {
      const std::string spelt = contains(key) ? key : text_module_in_checkpoint(key, prefix_);
      respelt[spelt] = std::move(tensors);
    }
    adapter_.by_weight_key = std::move(respelt);
  }
  const std::string where = peft_adapter_weights_file(*adapter_dir).string();
  const int64_t r = adapter_.spec.lora.r;
  for (auto it = adapter_.by_weight_key.begin(); it != adapter_.by_weight_key.end();) {
    if (!contains(it->first) && is_other_tower_module(it->first, prefix_)) {
      ignored_.push_back(it->first.substr(0, it->first.size() - 7));
      it = adapter_.by_weight_key.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [key, a] : adapter_.by_weight_key) {
    const std::string module = key.substr(0, key.size() - 7);
    if (!contains(key) || shape(key).size() != 2) {
      throw InputError(where + ": adapter for \"" + module + "\", which is not a projection of " +
                       model_dir.string() + " (an adapter for another base?)");
    }
    const int64_t out = shape(key)[0], in = shape(key)[1];
    const auto check = [&](const torch::Tensor& t, const char* name,
                           const std::vector<int64_t>& expected) {
      if (!t.defined()) {
        throw InputError(where + ": missing tensor \"" + kPeftPrefix + module + "." + name + "\"");
      }
      if (t.sizes().vec() != expected) {
        throw InputError(where + ": tensor \"" + kPeftPrefix + module + "." + name +
                         "\" has shape " + shape_text(t.sizes().vec()) + ", expected " +
                         shape_text(expected) + " (rank mismatch or another base model)");
      }
    };
    check(a.lora_A, "lora_A.weight", {r, in});
    check(a.lora_B, "lora_B.weight", {out, r});
    if (adapter_.spec.lora.use_dora) {
      check(a.magnitude, "lora_magnitude_vector", {out});
    } else if (a.magnitude.defined()) {
      throw InputError(
          where + ": \"" + module +
          "\" has a lora_magnitude_vector but adapter_config.json says use_dora false");
    }
  }
}

const std::vector<int64_t>& MergedCheckpoint::shape(const std::string& key) const {
  const auto it = shapes_.find(key);
  if (it == shapes_.end()) throw InputError(dir_.string() + ": missing tensor \"" + key + "\"");
  return it->second;
}

torch::ScalarType MergedCheckpoint::dtype(const std::string& key) const {
  const auto it = nf4_.find(key);
  if (it != nf4_.end()) return it->second;
  shape(key);  // names the missing key
  return reader_->entry(key).dtype;
}

torch::Tensor MergedCheckpoint::tensor(const std::string& key) const {
  torch::NoGradGuard no_grad;
  torch::Tensor t;
  if (nf4_.count(key)) {
    // Dequantized as bitsandbytes does (in the original dtype): what the NF4 base computed with.
    t = dequantize_nf4_as(read_bnb_nf4(*reader_, key, dir_.string()), torch::kFloat32);
    for (const std::string& part : bnb_nf4_keys(key)) reader_->release(part);
  } else {
    shape(key);
    t = reader_->view(key).clone();
    reader_->release(key);
  }
  const auto it = adapter_.by_weight_key.find(key);
  if (it == adapter_.by_weight_key.end()) return t;
  return merge_adapter_into_weight(t, it->second, adapter_.spec.lora);
}

void write_merged_checkpoint(const MergedCheckpoint& checkpoint, const fs::path& out_dir,
                             torch::ScalarType dtype, uint64_t shard_bytes) {
  const fs::path config_path = checkpoint.dir() / "config.json";
  nlohmann::json config = parse_json_input(read_text_file(config_path), config_path.string());
  if (!config.is_object()) throw InputError(config_path.string() + ": expected a JSON object");
  config.erase("quantization_config");
  const std::string dtype_name = dtype == torch::kBFloat16  ? "bfloat16"
                                 : dtype == torch::kFloat16 ? "float16"
                                                            : "float32";
  for (nlohmann::json* c :
       {&config, config.contains("text_config") && config["text_config"].is_object()
                     ? &config["text_config"]
                     : nullptr}) {
    if (c == nullptr) continue;
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (c->contains(key)) (*c)[key] = dtype_name;
    }
  }
  std::vector<HfCheckpointTensor> tensors;
  for (const std::string& key : checkpoint.keys()) {
    const torch::ScalarType stored = checkpoint.dtype(key);
    const torch::ScalarType target = c10::isFloatingType(stored) ? dtype : stored;
    tensors.push_back({key, checkpoint.shape(key), target, [&checkpoint, key, target] {
                         return checkpoint.tensor(key).to(target).contiguous();
                       }});
  }
  write_folder_atomically(out_dir, [&](const fs::path& tmp) {
    write_hf_checkpoint(tmp, tensors, shard_bytes);
    write_file_atomically(tmp / "config.json", config.dump(2) + "\n");
    copy_hf_checkpoint_side_files(checkpoint.dir(), tmp);
  });
}

}  // namespace gemma
