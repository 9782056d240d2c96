#include "model/generation.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/bounded_json.h"
#include "io/input_error.h"
#include "model/gemma4_step_decoder.h"

namespace gemma {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Logits of the last position only: the lm_head over 262144 rows is the costliest matmul.
torch::Tensor last_logits(Gemma4ForCausalLM& model, const Gemma4Input& input, KvCache* cache) {
  const torch::Tensor hidden = model->model->forward(input, cache);
  return model->logits(hidden.select(1, hidden.size(1) - 1)).to(torch::kFloat32);
}

}  // namespace

std::optional<std::vector<int64_t>> read_generation_stop_ids(
    const std::filesystem::path& model_dir) {
  const auto path = model_dir / "generation_config.json";
  if (!std::filesystem::exists(path)) return std::nullopt;
  nlohmann::json j;
  j = parse_json_input(read_text_file(path), path.string());
  if (!j.is_object() || !j.contains("eos_token_id") || j["eos_token_id"].is_null())
    return std::nullopt;
  const auto& eos = j["eos_token_id"];
  std::vector<int64_t> ids;
  if (eos.is_number_integer()) {
    ids.push_back(eos.get<int64_t>());
  } else if (eos.is_array()) {
    for (const auto& e : eos) {
      if (!e.is_number_integer())
        throw InputError(path.string() + ": eos_token_id must hold integers");
      ids.push_back(e.get<int64_t>());
    }
  } else {
    throw InputError(path.string() + ": eos_token_id must be an integer or a list of integers");
  }
  return ids;
}

Sampler::Sampler(const SamplingOptions& options)
    : options_(options), generator_(at::make_generator<at::CPUGeneratorImpl>(options.seed)) {}

torch::Tensor Sampler::next(const torch::Tensor& logits_in) {
  torch::Tensor logits = logits_in.to(torch::kCPU, torch::kFloat32);
  if (options_.temperature <= 0.0) return logits.argmax(-1);
  logits = logits / options_.temperature;
  const double lowest = -std::numeric_limits<float>::infinity();
  if (options_.top_k > 0 && options_.top_k < logits.size(-1)) {
    const torch::Tensor kth =
        std::get<0>(logits.topk(options_.top_k, -1)).narrow(-1, options_.top_k - 1, 1);
    logits = logits.masked_fill(logits < kth, lowest);
  }
  if (options_.top_p < 1.0) {
    // Keep the smallest set of most likely tokens whose probability reaches top_p.
    auto [sorted, order] = logits.sort(-1, /*descending=*/true);
    const torch::Tensor cumulative = sorted.softmax(-1).cumsum(-1);
    torch::Tensor drop_sorted = (cumulative - sorted.softmax(-1)) >= options_.top_p;
    const torch::Tensor drop = torch::zeros_like(drop_sorted).scatter(-1, order, drop_sorted);
    logits = logits.masked_fill(drop, lowest);
  }
  const torch::Tensor probs = logits.softmax(-1);
  return torch::multinomial(probs, 1, /*replacement=*/false, generator_).squeeze(-1);
}

GenerationResult generate(Gemma4ForCausalLM& model,
                          const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationOptions& options, const TokenCallback& on_token,
                          KvCache* cache) {
  TORCH_CHECK(!prompts.empty(), "generate: no prompts");
  TORCH_CHECK(cache == nullptr || prompts.size() == 1,
              "generate: an external cache holds one sequence");
  torch::InferenceMode inference;
  const torch::Device device = model->device();
  const auto B = static_cast<int64_t>(prompts.size());
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  TORCH_CHECK(longest > 0, "generate: empty prompt");
  const auto L = static_cast<int64_t>(longest);

  // Left padding: every row ends at the same column, so each step appends one column.
  const int64_t pad = model->config().pad_token_id;
  torch::Tensor ids = torch::full({B, L}, pad, torch::kInt64);
  torch::Tensor mask = torch::zeros({B, L}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const auto n = static_cast<int64_t>(p.size());
    ids[b].narrow(0, L - n, n).copy_(torch::tensor(p, torch::kInt64));
    mask[b].narrow(0, L - n, n).fill_(1);
  }
  const int64_t past = cache != nullptr ? cache->seen_tokens() : 0;
  torch::Tensor positions = (mask.cumsum(1) - 1).clamp_min(0) + past;

  std::unique_ptr<KvCache> own_cache;
  if (cache == nullptr && options.use_cache) {
    own_cache = std::make_unique<KvCache>(model->config());
    cache = own_cache.get();
  }

  std::shared_ptr<Gemma4StepDecoder> step_decoder;
  if (cache != nullptr && options.step_decoder && !Gemma4StepDecoder::unsupported_reason(model)) {
    std::shared_ptr<Gemma4StepDecoder>* slot = options.step_decoder_slot;
    step_decoder = slot != nullptr && *slot ? *slot : std::make_shared<Gemma4StepDecoder>(model);
    if (slot != nullptr) *slot = step_decoder;
  }

  GenerationResult result;
  result.used_step_decoder = step_decoder != nullptr;
  result.tokens.resize(prompts.size());
  result.finish_reason.assign(prompts.size(), "length");
  std::vector<bool> done(prompts.size(), false);
  Sampler sampler(options.sampling);

  const auto t0 = Clock::now();
  Gemma4Input input{ids.to(device), mask.to(device), positions.to(device)};
  torch::Tensor all_ids = ids, all_mask = mask, all_positions = positions;  // for the no-cache path
  torch::Tensor logits = last_logits(model, input, cache);
  result.prefill_tokens = mask.sum().item<int64_t>();
  result.prefill_seconds = seconds_since(t0);

  const auto t1 = Clock::now();
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const torch::Tensor next = sampler.next(logits);
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      const int64_t token = next[b].item<int64_t>();
      result.tokens[b].push_back(token);
      if (on_token) on_token(static_cast<size_t>(b), token);
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) !=
          options.stop_ids.end()) {
        done[b] = true;
        result.finish_reason[b] = "stop";
      }
      all_done = all_done && done[b];
    }
    if (all_done || step + 1 == options.max_new_tokens) break;
    positions = positions.narrow(1, positions.size(1) - 1, 1) + 1;
    const torch::Tensor step_ids = next.view({B, 1});
    const torch::Tensor step_mask = torch::ones({B, 1}, torch::kInt64);
    if (step_decoder) {
      const torch::Tensor ids_now = step_ids.contiguous(), pos_now = positions.contiguous();
      logits = step_decoder->step({ids_now.data_ptr<int64_t>(), ids_now.data_ptr<int64_t>() + B},
                                  {pos_now.data_ptr<int64_t>(), pos_now.data_ptr<int64_t>() + B},
                                  *cache);
    } else if (cache != nullptr) {
      logits = last_logits(model, {step_ids.to(device), step_mask.to(device), positions.to(device)},
                           cache);
    } else {
      all_ids = torch::cat({all_ids, step_ids}, 1);
      all_mask = torch::cat({all_mask, step_mask}, 1);
      all_positions = torch::cat({all_positions, positions}, 1);
      logits = last_logits(
          model, {all_ids.to(device), all_mask.to(device), all_positions.to(device)}, nullptr);
    }
    ++result.decode_tokens;
  }
  result.decode_seconds = seconds_since(t1);
  return result;
}

}  // namespace gemma
