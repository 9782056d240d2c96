#include "tests/model/test_models.h"

#include <unistd.h>

#include <atomic>

#include "model/gemma4_hf_checkpoint.h"
#include "model/linear.h"

namespace gemma::testing {

Gemma4Config bundled_config(const std::string& name) {
  const auto text = bundled_config_json(name);
  TORCH_CHECK(text.has_value(), "no bundled config ", name);
  return parse_gemma4_config(*text, name);
}

Gemma4ForCausalLM random_model(const Gemma4Config& config, uint64_t seed, torch::ScalarType dtype) {
  Gemma4ForCausalLM model{nullptr};
  {
    DefaultDtypeGuard guard(dtype);
    model = Gemma4ForCausalLM(config);
  }
  randomize_gemma4(model, seed);
  return model;
}

void write_random_checkpoint(const Gemma4Config& config, uint64_t seed, torch::ScalarType dtype,
                             const std::filesystem::path& dir) {
  Gemma4ForCausalLM model = random_model(config, seed, dtype);
  Gemma4SaveOptions save;
  save.dtype = dtype;
  save_gemma4(model, dir, save);
}

torch::Tensor logits_of(Gemma4ForCausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  Gemma4Input in;
  in.input_ids = ids;
  return model->forward(in);
}

torch::Tensor random_ids(int64_t batch, int64_t length, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randint(vocab, {batch, length}, gen, torch::kInt64);
}

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const auto fa = a.to(torch::kFloat64), fb = b.to(torch::kFloat64);
  return (fa - fb).abs().max().item<double>() / fb.abs().max().item<double>();
}

ScratchDir::ScratchDir() {
  static std::atomic<int> counter{0};
  path_ = std::filesystem::temp_directory_path() /
          ("gemma_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace gemma::testing
