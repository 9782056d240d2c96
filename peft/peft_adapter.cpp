#include "peft/peft_adapter.h"

#include <map>

#include "io/atomic_output.h"
#include "io/input_error.h"
#include "io/safetensors.h"
#include "io/string_match.h"
#include "model/gemma4_hf_checkpoint.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

constexpr const char* kWeightsFile = "adapter_model.safetensors";

}  // namespace

void save_peft_adapter(Gemma4ForCausalLM& model, const AdapterSpec& spec, const std::string& prefix,
                       const std::string& base_model_name, const fs::path& out_dir) {
  write_folder_atomically(out_dir, [&](const fs::path& tmp) {
    write_peft_adapter_files(model, spec, prefix, base_model_name, tmp);
  });
}

void write_peft_adapter_files(Gemma4ForCausalLM& model, const AdapterSpec& spec,
                              const std::string& prefix, const std::string& base_model_name,
                              const fs::path& out_dir) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, p] : trainable_parameters(model)) {
    tensors.emplace_back(kPeftPrefix + hf_checkpoint_key(name, prefix), p.detach().contiguous());
  }
  if (tensors.empty()) throw InputError(out_dir.string() + ": the model has no adapters to save");
  write_safetensors(out_dir / kWeightsFile, tensors, {{"format", "pt"}});
  write_file_atomically(out_dir / kPeftAdapterConfigFile,
                        peft_adapter_config_text(spec, base_model_name));
}

bool is_other_tower_module(const std::string& module_path, const std::string& prefix) {
  const std::string root = kTextOnlyPrefix;
  if (prefix != kMultimodalPrefix || module_path.rfind(root, 0) != 0) return false;
  // "model.vision_tower...", "model.embed_audio...": the component after "model." names the tower.
  const std::string tower =
      module_path.substr(root.size(), module_path.find('.', root.size()) - root.size());
  return tower.find("vision") != std::string::npos || tower.find("audio") != std::string::npos;
}

fs::path peft_adapter_weights_file(const fs::path& dir) { return dir / kWeightsFile; }

std::string text_module_in_checkpoint(const std::string& module_path, const std::string& prefix) {
  const std::string multimodal = kMultimodalPrefix, text_only = kTextOnlyPrefix;
  if (prefix == multimodal && module_path.rfind(text_only, 0) == 0 &&
      module_path.rfind(multimodal, 0) != 0 && !is_other_tower_module(module_path, prefix)) {
    return multimodal + module_path.substr(text_only.size());  // trained on Gemma4ForCausalLM
  }
  if (prefix == text_only && module_path.rfind(multimodal, 0) == 0) {
    return text_only + module_path.substr(multimodal.size());  // trained on the multimodal class
  }
  return module_path;
}

PeftAdapterFiles read_peft_adapter_files(const fs::path& dir) {
  PeftAdapterFiles out;
  out.spec = read_peft_adapter_config(dir);
  const SafetensorsFile file(peft_adapter_weights_file(dir));
  const std::string where = file.path().string();
  const std::string prefix = kPeftPrefix;
  for (const std::string& key : file.names()) {
    if (key.rfind(prefix, 0) != 0) {
      throw InputError(where + ": tensor \"" + key + "\" does not start with \"" + prefix +
                       "\" (not a PEFT adapter file)");
    }
    const std::string rest = key.substr(prefix.size());
    std::string module;
    torch::Tensor AdapterTensors::*slot = nullptr;
    for (const auto& [suffix, member] :
         {std::pair{std::string(".lora_A.weight"), &AdapterTensors::lora_A},
          std::pair{std::string(".lora_B.weight"), &AdapterTensors::lora_B},
          std::pair{std::string(".lora_magnitude_vector"), &AdapterTensors::magnitude}}) {
      if (ends_with(rest, suffix)) {
        module = rest.substr(0, rest.size() - suffix.size());
        slot = member;
      }
    }
    if (slot == nullptr) {
      throw InputError(where + ": tensor \"" + key +
                       "\" is not a lora_A, lora_B or lora_magnitude_vector tensor");
    }
    if (!c10::isFloatingType(file.entry(key).dtype)) {
      throw InputError(where + ": tensor \"" + key + "\" is not floating point");
    }
    torch::Tensor tensor = file.view(key).to(torch::kFloat32);
    if (!torch::isfinite(tensor).all().item<bool>())
      throw InputError(where + ": tensor \"" + key + "\" holds NaN or Inf");
    out.by_weight_key[module + ".weight"].*slot = std::move(tensor);
  }
  if (out.by_weight_key.empty()) throw InputError(where + ": holds no adapter tensors");
  return out;
}

AdapterSpec load_peft_adapter(Gemma4ForCausalLM& model, const std::string& prefix,
                              const fs::path& dir) {
  const PeftAdapterFiles files = read_peft_adapter_files(dir);
  const std::string where = peft_adapter_weights_file(dir).string();
  // The file's modules by the weight key our checkpoint spells (either class's spelling is taken).
  std::map<std::string, std::pair<std::string, const AdapterTensors*>> by_key;
  for (const auto& [weight_key, tensors] : files.by_weight_key) {
    if (is_other_tower_module(weight_key, prefix)) continue;
    by_key[text_module_in_checkpoint(weight_key, prefix)] = {weight_key, &tensors};
  }
  attach_adapters(model, files.spec);
  torch::NoGradGuard no_grad;
  for (const auto& [path, lora] : lora_adapters(model)) {
    const std::string module = hf_checkpoint_key(path, prefix);
    const auto it = by_key.find(module + ".weight");
    const std::string file_module =
        it == by_key.end() ? module : it->second.first.substr(0, it->second.first.size() - 7);
    const AdapterTensors* tensors = it == by_key.end() ? nullptr : it->second.second;
    const auto fill = [&](torch::Tensor& param, const torch::Tensor& stored, const char* suffix) {
      const std::string key = kPeftPrefix + file_module + suffix;
      if (!stored.defined()) throw InputError(where + ": missing tensor \"" + key + "\"");
      if (stored.sizes() != param.sizes()) {
        throw InputError(where + ": tensor \"" + key + "\" has shape " +
                         shape_text(stored.sizes().vec()) + ", expected " +
                         shape_text(param.sizes().vec()) +
                         " (rank mismatch or another base model)");
      }
      param.copy_(stored);
    };
    const AdapterTensors none;
    const AdapterTensors& t = tensors ? *tensors : none;
    fill(lora->lora_A->weight, t.lora_A, ".lora_A.weight");
    fill(lora->lora_B->weight, t.lora_B, ".lora_B.weight");
    if (lora->is_dora()) {
      fill(lora->lora_magnitude_vector, t.magnitude, ".lora_magnitude_vector");
    } else if (t.magnitude.defined()) {
      throw InputError(where + ": tensor \"" + kPeftPrefix + file_module +
                       ".lora_magnitude_vector\" is there but adapter_config.json says use_dora "
                       "false");
    }
    if (it != by_key.end()) by_key.erase(it);
  }
  if (!by_key.empty()) {
    const std::string& weight_key = by_key.begin()->second.first;
    throw InputError(where + ": tensor \"" + kPeftPrefix +
                     weight_key.substr(0, weight_key.size() - 7) +
                     ".lora_A.weight\" matches no adapted module of this model (an adapter for "
                     "another base?)");
  }
  return files.spec;
}

}  // namespace gemma
