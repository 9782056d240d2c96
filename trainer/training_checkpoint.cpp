#include "trainer/training_checkpoint.h"

#include <algorithm>
#include <map>
#include <stdexcept>

#include <ATen/CPUGeneratorImpl.h>

#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/input_error.h"
#include "io/safetensors.h"
#include "model/gemma4_hf_checkpoint.h"
#include "peft/peft_adapter.h"

namespace gemma {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kRngFile = "rng_state.safetensors";
constexpr const char* kPrefix = "checkpoint-";

std::string rank_rng_file(int rank) { return "rng_state_" + std::to_string(rank) + ".safetensors"; }

json progress_json(const TrainingProgress& p) {
  return {{"global_step", p.global_step},
          {"epoch_index", p.epoch},
          {"batches_in_epoch", p.batches_in_epoch},
          {"samples_in_epoch", p.samples_in_epoch},
          {"num_tokens", p.num_tokens},
          {"train_loss_sum", p.train_loss_sum},
          {"log_loss_sum", p.log_loss_sum},
          {"log_steps", p.log_steps},
          {"log_metrics", p.log_metrics}};
}

std::optional<int64_t> checkpoint_step(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  const std::string digits = name.substr(std::string(kPrefix).size());
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(digits);
}

NamedTensors current_rng_states() {
  NamedTensors rng = {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}};
  // Dropout on a GPU draws from that device's generator.
  for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
    rng.emplace_back("cuda:" + std::to_string(i),
                     at::globalContext()
                         .defaultGenerator(at::Device(at::kCUDA, static_cast<int8_t>(i)))
                         .get_state());
  }
  return rng;
}

NamedTensors decode_rng_state(const std::string& bytes) {
  const json states = json::from_cbor(bytes);
  NamedTensors out;
  for (const auto& [key, value] : states.items()) {
    const std::vector<uint8_t>& b = value.get_binary();
    out.emplace_back(key, torch::from_blob(const_cast<uint8_t*>(b.data()),
                                           {static_cast<int64_t>(b.size())}, torch::kUInt8)
                              .clone());
  }
  return out;
}

}  // namespace

std::string encode_rng_state() {
  json states = json::object();
  for (const auto& [key, state] : current_rng_states()) {
    const torch::Tensor bytes = state.contiguous();
    const auto* p = bytes.data_ptr<uint8_t>();
    states[key] = json::binary(std::vector<uint8_t>(p, p + bytes.numel()));
  }
  const std::vector<uint8_t> cbor = json::to_cbor(states);
  return {cbor.begin(), cbor.end()};
}

std::vector<fs::path> checkpoints_by_step(const fs::path& output_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    if (!entry.is_directory() || entry.is_symlink()) continue;
    if (const auto step = checkpoint_step(entry.path());
        step && fs::is_regular_file(entry.path() / kStateFile))
      found.emplace_back(*step, entry.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  out.reserve(found.size());
  for (auto& [step, path] : found) out.push_back(path);
  return out;
}

std::optional<fs::path> newest_checkpoint(const fs::path& output_dir) {
  const auto all = checkpoints_by_step(output_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

fs::path save_training_checkpoint(const fs::path& output_dir, Gemma4ForCausalLM& model,
                                  const CheckpointContents& c) {
  fs::path dir = output_dir / (kPrefix + std::to_string(c.progress->global_step));
  // A checkpoint of this step from an earlier, overwritten run: this one replaces it.
  if (fs::exists(fs::symlink_status(dir))) {
    if (fs::is_symlink(dir) || !fs::is_directory(dir))
      throw InputError(dir.string() + ": exists and is not a checkpoint folder; not replacing it");
    fs::remove_all(dir);
  }
  write_folder_atomically(dir, [&](const fs::path& tmp) {
    write_peft_adapter_files(model, *c.spec, c.prefix, c.base_model_name, tmp);
    write_safetensors(tmp / kOptimizerFile, c.optimizer->state_dict(), {{"format", "pt"}});
    if (c.rng_states.size() <= 1) {
      write_safetensors(tmp / kRngFile, c.rng_states.empty() ? current_rng_states()
                                                             : decode_rng_state(c.rng_states[0]));
    } else {
      for (size_t r = 0; r < c.rng_states.size(); ++r)
        write_safetensors(tmp / rank_rng_file(static_cast<int>(r)),
                          decode_rng_state(c.rng_states[r]));
    }
    json state = {{"global_step", c.progress->global_step},
                  {"log_history", c.progress->log_history},
                  {"run", c.run},
                  {"progress", progress_json(*c.progress)}};
    write_file_atomically(tmp / kStateFile, state.dump(2) + "\n");
  });
  return dir;
}

TrainingProgress load_training_checkpoint(const fs::path& dir, Gemma4ForCausalLM& model,
                                          const std::string& prefix, Optimizer& optimizer,
                                          json* run, int rank) {
  const fs::path state_path = dir / kStateFile;
  if (!fs::is_regular_file(state_path))
    throw InputError(dir.string() + ": not a training checkpoint (no " + kStateFile + ")");
  TrainingProgress p;
  try {
    const json state = parse_bounded_json(read_text_file(state_path), state_path.string());
    const json& g = state.at("progress");
    p.global_step = g.at("global_step").get<int64_t>();
    p.epoch = g.at("epoch_index").get<int64_t>();
    p.batches_in_epoch = g.at("batches_in_epoch").get<int64_t>();
    p.samples_in_epoch = g.value("samples_in_epoch", int64_t{-1});
    p.num_tokens = g.at("num_tokens").get<int64_t>();
    p.train_loss_sum = g.at("train_loss_sum").get<double>();
    p.log_loss_sum = g.at("log_loss_sum").get<double>();
    p.log_steps = g.at("log_steps").get<int64_t>();
    if (g.contains("log_metrics")) {
      p.log_metrics = g.at("log_metrics").get<std::map<std::string, std::vector<double>>>();
    } else {  // SFT checkpoints of the first trainer release
      p.log_metrics["entropy"] = g.at("log_entropy").get<std::vector<double>>();
      p.log_metrics["mean_token_accuracy"] = g.at("log_accuracy").get<std::vector<double>>();
    }
    p.log_history = state.at("log_history");
    if (run != nullptr) *run = state.at("run");
  } catch (const json::exception& e) {
    throw InputError(state_path.string() + ": not a trainer state this version wrote (" + e.what() +
                     ")");
  }
  // The adapter tensors, by the names save_training_checkpoint wrote them under.
  const SafetensorsFile adapter(peft_adapter_weights_file(dir));
  for (auto& [name, param] : trainable_parameters(model)) {
    const std::string key = kPeftPrefix + hf_checkpoint_key(name, prefix);
    if (!adapter.contains(key))
      throw InputError(adapter.path().string() + ": lacks " + key +
                       "; the checkpoint is of another adapter");
    const torch::Tensor t = adapter.view(key);
    if (t.sizes() != param.sizes())
      throw InputError(adapter.path().string() + ": " + key + " has another shape than the " +
                       "recipe's adapter");
    torch::NoGradGuard no_grad;
    param.copy_(t);
  }
  const SafetensorsFile opt(dir / kOptimizerFile);
  NamedTensors state;
  for (const std::string& name : opt.names()) state.emplace_back(name, opt.view(name).clone());
  try {
    optimizer.load_state_dict(state);
  } catch (const std::invalid_argument& e) {
    throw InputError(opt.path().string() + ": " + e.what());
  }
  // This rank's state, else rank 0's (a resume with more ranks), else a single process's.
  fs::path rng_path = dir / rank_rng_file(rank);
  if (!fs::is_regular_file(rng_path)) rng_path = dir / rank_rng_file(0);
  if (!fs::is_regular_file(rng_path)) rng_path = dir / kRngFile;
  const SafetensorsFile rng(rng_path);
  if (!rng.contains("cpu")) throw InputError(rng.path().string() + ": lacks the cpu RNG state");
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  gen.set_state(rng.view("cpu").clone());
  for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
    const std::string key = "cuda:" + std::to_string(i);
    if (!rng.contains(key)) continue;  // saved by a CPU run
    at::Generator cuda_gen =
        at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<int8_t>(i)));
    cuda_gen.set_state(rng.view(key).clone());
  }
  return p;
}

}  // namespace gemma
