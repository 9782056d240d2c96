#include "model/linear.h"

namespace gemma {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  return torch::nn::functional::linear(x, weight);
}

DefaultDtypeGuard::DefaultDtypeGuard(torch::ScalarType dtype)
    : previous_(torch::get_default_dtype()) {
  torch::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
}

DefaultDtypeGuard::~DefaultDtypeGuard() { torch::set_default_dtype(previous_); }

}  // namespace gemma
