// Linear: y = x · Wᵀ with a [out, in] weight and no bias, the only kind of projection in the
// Gemma 4 decoder. Its weight is allocated uninitialised, in the default dtype at construction:
// a checkpoint load then fills it once, so a model is never built at twice its size (f32 random
// init before a bf16 copy). Every projection goes through this one type, so the quantized and
// adapter-carrying versions can take its place by name.
#pragma once

#include <torch/torch.h>

namespace gemma {

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [out, in]
};
TORCH_MODULE(Linear);

// Sets the default dtype for the lifetime of the guard (modules allocate their tensors in it).
class DefaultDtypeGuard {
 public:
  explicit DefaultDtypeGuard(torch::ScalarType dtype);
  ~DefaultDtypeGuard();
  DefaultDtypeGuard(const DefaultDtypeGuard&) = delete;
  DefaultDtypeGuard& operator=(const DefaultDtypeGuard&) = delete;

 private:
  caffe2::TypeMeta previous_;
};

}  // namespace gemma
