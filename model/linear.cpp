#include "model/linear.h"

#include <cmath>

#include "kernels/nf4_matmul.h"

namespace gemma {

double LoraOptions::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
}

void LinearImpl::set_nf4_weight(Nf4Weight w) {
  TORCH_CHECK(w.shape == weight.sizes().vec(), "Linear: NF4 weight of another shape");
  torch::NoGradGuard no_grad;
  nf4_ = std::make_shared<Nf4Weight>(std::move(w));
  weight.set_data(placeholder_of_shape(weight));
  weight.set_requires_grad(false);
}

torch::Tensor LinearImpl::dense_weight(torch::ScalarType dtype) const {
  return nf4_ ? dequantize_nf4_as(*nf4_, dtype) : weight.to(dtype);
}

void LinearImpl::to(torch::Device device, bool non_blocking) {
  dora_norm_cache_ = torch::Tensor();
  if (!nf4_) {
    torch::nn::Module::to(device, non_blocking);
    return;
  }
  nf4_->to(device, non_blocking);
  for (const auto& child : children()) child->to(device, non_blocking);
  if (lora_magnitude_vector.defined()) {
    torch::NoGradGuard no_grad;
    lora_magnitude_vector.set_data(lora_magnitude_vector.to(device, non_blocking));
  }
}

torch::Tensor LinearImpl::base_forward(const torch::Tensor& x) const {
  return nf4_ ? nf4_linear(x, *nf4_) : torch::nn::functional::linear(x, weight);
}

void LinearImpl::attach_lora(const LoraOptions& options, at::Generator& generator) {
  TORCH_CHECK(!has_lora(), "Linear: an adapter is attached already");
  TORCH_CHECK(options.r > 0, "Linear: LoRA rank must be positive");
  torch::NoGradGuard no_grad;
  lora_options = options;
  const int64_t out = weight.size(0), in = weight.size(1);
  const torch::Device device = nf4_ ? nf4_->packed.device() : weight.device();
  const auto opts = weight.options().device(device).requires_grad(false);
  lora_A = register_module("lora_A", std::make_shared<LinearImpl>(in, options.r));
  lora_B = register_module("lora_B", std::make_shared<LinearImpl>(options.r, out));
  // PEFT: kaiming_uniform(a=√5) on A is U(-1/√in, 1/√in); B starts at zero so the model is
  // unchanged.
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
    const auto dtype = weight.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    const torch::Tensor w = dense_weight(dtype) + lora_delta().to(dtype);
    lora_magnitude_vector =
        register_parameter("lora_magnitude_vector", w.norm(2, {1}).to(opts.dtype()));
  }
}

torch::Tensor LinearImpl::dora_weight_norm() {
  // Without gradients (generation, evaluation) the norm only changes when A or B does: keep it,
  // keyed on their version counters, instead of dequantizing W on every decoding step.
  const bool cacheable = !torch::GradMode::is_enabled();
  const std::pair<int64_t, int64_t> versions{lora_A->weight._version(), lora_B->weight._version()};
  if (cacheable && dora_norm_cache_.defined() && dora_norm_versions_ == versions)
    return dora_norm_cache_;
  torch::NoGradGuard no_grad;
  const torch::Tensor w = dense_weight(weight.scalar_type());
  torch::Tensor norm = (w + lora_delta().to(w.scalar_type())).norm(2, {1});
  if (cacheable) {
    dora_norm_cache_ = norm;
    dora_norm_versions_ = versions;
  } else {
    dora_norm_cache_ = torch::Tensor();
  }
  return norm;
}

torch::Tensor LinearImpl::lora_delta() const {
  return torch::matmul(lora_B->weight, lora_A->weight) * lora_options.scaling();
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = base_forward(x);
  if (!has_lora() || !adapter_enabled) return y;
  const double s = lora_options.scaling();
  const bool drop = is_training() && lora_options.dropout > 0;
  const torch::Tensor xd = drop ? torch::dropout(x, lora_options.dropout, true) : x;
  const torch::Tensor lora = lora_B->forward(lora_A->forward(xd.to(lora_A->weight.scalar_type())));
  if (!lora_magnitude_vector.defined()) return y + (lora * s).to(y.scalar_type());
  // DoRA (qlora-formats.md §3.6): k = m / ‖W + ΔW‖ per output row, the norm treated as a constant;
  // y = base + (k - 1)·(x_d·Wᵀ) + k·s·B(A(x_d)).
  const torch::Tensor norm = dora_weight_norm();
  const torch::Tensor k = lora_magnitude_vector / norm;
  const torch::Tensor base_x = drop ? base_forward(xd) : y;
  return y + ((k - 1) * base_x + k * lora * s).to(y.scalar_type());
}

torch::Tensor placeholder_of_shape(const torch::Tensor& t) {
  return torch::zeros({1}, t.options()).expand(t.sizes());
}

DefaultDtypeGuard::DefaultDtypeGuard(torch::ScalarType dtype)
    : previous_(torch::get_default_dtype()) {
  torch::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
}

DefaultDtypeGuard::~DefaultDtypeGuard() { torch::set_default_dtype(previous_); }

}  // namespace gemma
