#include "model/linear.h"

#include "kernels/bf16_linear.h"
#include "kernels/bf16_matvec.h"
#include "kernels/nf4_matmul.h"
#include "model/kept_products.h"

namespace gemma {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
}

void LinearImpl::set_nf4_weight(Nf4Weight w) {
  TORCH_CHECK(w.shape == weight.sizes().vec(), "Linear: NF4 weight of another shape");
  TORCH_CHECK(adapter_ == nullptr, "Linear: quantize the base before attaching an adapter");
  nf4_ = std::make_unique<Nf4Weight>(std::move(w));
  hold_as_nf4("weight", *nf4_, weight);
}

torch::Tensor LinearImpl::dense_weight(torch::ScalarType dtype) const {
  return nf4_ ? dequantize_nf4_as(*nf4_, dtype) : weight.to(dtype);
}

torch::Device LinearImpl::device() const { return nf4_ ? nf4_->packed.device() : weight.device(); }

torch::Tensor LinearImpl::base_forward(const torch::Tensor& x) const {
  return nf4_ ? nf4_linear(x, *nf4_) : few_rows_linear(x, weight);
}

torch::Tensor LinearImpl::base_input_grad(const torch::Tensor& grad_y) const {
  if (nf4_) return nf4_linear_input_grad(grad_y, *nf4_);
  // few_rows_linear's products with a gradient to record: bf16 through float32 where the CPU has
  // no bf16 instructions, otherwise LibTorch's linear, whose input gradient is this matmul.
  if (bf16_products_through_f32(grad_y) && weight.scalar_type() == torch::kBFloat16)
    return bf16_input_grad_through_f32(grad_y, weight);
  return torch::matmul(grad_y, weight.to(grad_y.scalar_type()));
}

void LinearImpl::attach_adapter(std::shared_ptr<LinearAdapterImpl> adapter) {
  TORCH_CHECK(adapter_ == nullptr, "Linear: an adapter is attached already");
  for (const auto& child : adapter->named_children()) register_module(child.key(), child.value());
  for (const auto& p : adapter->named_parameters(/*recurse=*/false))
    register_parameter(p.key(), p.value(), p.value().requires_grad());
  adapter_ = std::move(adapter);
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  KeptProducts* kept = KeptProducts::current();
  const torch::Tensor y =
      kept != nullptr && base_frozen() ? kept->product(*this, x) : base_forward(x);
  return adapter_ ? adapter_->adapt(x, y, *this) : y;
}

DefaultDtypeGuard::DefaultDtypeGuard(torch::ScalarType dtype)
    : previous_(torch::get_default_dtype()) {
  torch::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
}

DefaultDtypeGuard::~DefaultDtypeGuard() { torch::set_default_dtype(previous_); }

}  // namespace gemma
