// The frozen projections' products a checkpointed layer keeps from its forward, so that backward's
// recomputation of the layer takes them instead of multiplying again (what PyTorch's selective
// activation checkpointing does with a policy that saves matmuls). A frozen projection's backward
// needs only its weight, never its input, so the recomputed graph can start from the kept output:
// the layer's elementwise ops and its adapters are recomputed as before, its base matmuls are not.
// That removes a third of a checkpointed step's matmul work for N · Σ out_features more bytes of
// activations per layer (trainer/memory_plan.cpp counts them). Results are those of recomputing:
// the kept product is the value the recomputation would produce from the same input.
#pragma once

#include <vector>

#include <torch/torch.h>

namespace gemma {

class LinearImpl;

// The products of one layer's forward, recorded in the order its projections ran and given back
// in that order when the layer runs again. While a scope is open on a thread, every Linear with
// a frozen weight that runs on it records into, or replays from, the open scope's list.
class KeptProducts {
 public:
  enum class Mode { kRecord, kReplay };

  // The list open on this thread, or nullptr.
  static KeptProducts* current();

  // y = x · Wᵀ for a frozen `base`: computed and kept (record), or the next kept product, which
  // autograd differentiates in x through the weight alone (replay).
  torch::Tensor product(const LinearImpl& base, const torch::Tensor& x);

  // What a record gathered; what a replay gives back (set before the scope opens).
  std::vector<torch::Tensor>& products() { return products_; }
  // Products recorded but not yet given back; zero after a whole replay.
  size_t remaining() const { return products_.size() - next_; }

 private:
  friend class KeptProductsScope;
  Mode mode_ = Mode::kRecord;
  std::vector<torch::Tensor> products_;
  size_t next_ = 0;
};

// Opens `kept` on this thread in `mode` (replay starts from its first product) until destroyed.
class KeptProductsScope {
 public:
  KeptProductsScope(KeptProducts& kept, KeptProducts::Mode mode);
  ~KeptProductsScope();
  KeptProductsScope(const KeptProductsScope&) = delete;
  KeptProductsScope& operator=(const KeptProductsScope&) = delete;

 private:
  KeptProducts* previous_;
};

}  // namespace gemma
