#include "trainer/reference_model.h"

#include "peft/lora_adapters.h"

namespace gemma {
namespace {

// Swaps the frozen values into the adapter tensors while alive.
class SwappedAdapter {
 public:
  SwappedAdapter(Gemma4ForCausalLM& model,
                 const std::vector<std::pair<std::string, torch::Tensor>>& frozen) {
    params_ = trainable_parameters(model);
    TORCH_CHECK(params_.size() == frozen.size(), "reference adapter: the adapter changed shape");
    for (size_t i = 0; i < params_.size(); ++i) {
      TORCH_CHECK(params_[i].first == frozen[i].first, "reference adapter: ", params_[i].first,
                  " is not ", frozen[i].first);
      torch::Tensor p = params_[i].second.detach();
      trained_.push_back(p.clone());
      p.copy_(frozen[i].second);
    }
  }
  ~SwappedAdapter() {
    for (size_t i = 0; i < trained_.size(); ++i) params_[i].second.detach().copy_(trained_[i]);
  }
  SwappedAdapter(const SwappedAdapter&) = delete;
  SwappedAdapter& operator=(const SwappedAdapter&) = delete;

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> trained_;
};

}  // namespace

ReferenceModel ReferenceModel::frozen_adapter(Gemma4ForCausalLM& model) {
  ReferenceModel ref;
  for (const auto& [name, p] : trainable_parameters(model))
    ref.frozen_.emplace_back(name, p.detach().clone());
  return ref;
}

torch::Tensor ReferenceModel::run(Gemma4ForCausalLM& model,
                                  const std::function<torch::Tensor()>& forward) const {
  torch::NoGradGuard no_grad;
  if (is_base()) {
    const AdaptersDisabled off(model);
    return forward();
  }
  const SwappedAdapter swapped(model, frozen_);
  return forward();
}

}  // namespace gemma
