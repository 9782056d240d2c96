#include "peft/lora_linear.h"

#include <cmath>

namespace gemma {

LoraLinearImpl::LoraLinearImpl(const LinearImpl& base, const LoraOptions& options,
                               at::Generator& generator)
    : options_(options) {
  TORCH_CHECK(options.r > 0, "LoraLinear: LoRA rank must be positive");
  torch::NoGradGuard no_grad;
  const int64_t out = base.out_features(), in = base.in_features();
  const auto opts = base.weight.options().device(base.device());
  lora_A = register_module("lora_A",
                           torch::nn::Linear(torch::nn::LinearOptions(in, options.r).bias(false)));
  lora_B = register_module("lora_B",
                           torch::nn::Linear(torch::nn::LinearOptions(options.r, out).bias(false)));
  // PEFT: kaiming_uniform(a=√5) on A is U(-1/√in, 1/√in); B starts at zero so the model is
  // unchanged. Drawn in f32 whatever the model's dtype, so every dtype starts from one adapter.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  lora_A->weight.set_data(
      torch::empty({options.r, in}, torch::kFloat32).uniform_(-bound, bound, generator).to(opts));
  if (options.init_lora_weights) {
    lora_B->weight.set_data(torch::zeros({out, options.r}, opts));
  } else {
    const double b_bound = 1.0 / std::sqrt(static_cast<double>(options.r));
    lora_B->weight.set_data(torch::empty({out, options.r}, torch::kFloat32)
                                .uniform_(-b_bound, b_bound, generator)
                                .to(opts));
  }
  if (options.use_dora) {
    const auto dtype =
        base.weight.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    const torch::Tensor w = base.dense_weight(dtype) + delta().to(dtype);
    lora_magnitude_vector =
        register_parameter("lora_magnitude_vector", w.norm(2, {1}).to(opts.dtype()));
  }
}

torch::Tensor LoraLinearImpl::delta() const {
  return torch::matmul(lora_B->weight, lora_A->weight) * options_.scaling();
}

torch::Tensor LoraLinearImpl::dora_weight_norm(const LinearImpl& base) {
  // Without gradients (generation, evaluation) the norm only changes when A or B does: keep it,
  // keyed on their version counters (and their device, which a move changes without a new
  // version), instead of dequantizing W on every decoding step.
  const bool cacheable = !torch::GradMode::is_enabled();
  const std::pair<int64_t, int64_t> versions{lora_A->weight._version(), lora_B->weight._version()};
  if (cacheable && dora_norm_cache_.defined() && dora_norm_versions_ == versions &&
      dora_norm_cache_.device() == lora_A->weight.device())
    return dora_norm_cache_;
  torch::NoGradGuard no_grad;
  const torch::Tensor w = base.dense_weight(base.weight.scalar_type());
  torch::Tensor norm = (w + delta().to(w.scalar_type())).norm(2, {1});
  if (cacheable) {
    dora_norm_cache_ = norm;
    dora_norm_versions_ = versions;
  } else {
    dora_norm_cache_ = torch::Tensor();
  }
  return norm;
}

torch::Tensor LoraLinearImpl::adapt(const torch::Tensor& x, const torch::Tensor& y,
                                    const LinearImpl& base) {
  if (!enabled) return y;
  const double s = options_.scaling();
  // The projection's mode decides: the adapter is attached beside the module tree (its tensors
  // are registered on `base`), so model->eval() reaches `base`, not this object.
  const bool drop = base.is_training() && options_.dropout > 0;
  const torch::Tensor xd = drop ? torch::dropout(x, options_.dropout, true) : x;
  // PEFT scales B(A(x)) [tokens, out]; the rank-r middle is scaled here instead, the same
  // product (exactly so for a power-of-two scaling such as alpha = 2r) without a multiply over
  // every output element in the forward and again in the backward.
  torch::Tensor middle = lora_A(xd.to(lora_A->weight.scalar_type()));
  if (s != 1.0) middle = middle * s;
  const torch::Tensor lora = lora_B(middle);  // B(A(x)) · s
  if (!is_dora()) return y + lora.to(y.scalar_type());
  // DoRA (qlora-formats.md §3.6): k = m / ‖W + ΔW‖ per output row, the norm treated as a constant;
  // y = base + (k - 1)·(x_d·Wᵀ) + k·s·B(A(x_d)).
  const torch::Tensor norm = dora_weight_norm(base);
  const torch::Tensor k = lora_magnitude_vector / norm;
  const torch::Tensor base_x = drop ? base.base_forward(xd) : y;
  return y + ((k - 1) * base_x + k * lora).to(y.scalar_type());
}

LoraLinear attach_lora(LinearImpl& base, const LoraOptions& options, at::Generator& generator) {
  LoraLinear lora(base, options, generator);
  base.attach_adapter(lora.ptr());
  return lora;
}

LoraLinearImpl* lora_of(const LinearImpl& base) {
  return dynamic_cast<LoraLinearImpl*>(base.adapter().get());
}

}  // namespace gemma
