#include "model/kept_products.h"

#include "model/linear.h"

namespace gemma {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

thread_local KeptProducts* open_products = nullptr;

// A kept product re-entering the graph: forward gives it back as it is; backward is the frozen
// projection's own input gradient, grad_y · W.
class ReplayedProduct : public torch::autograd::Function<ReplayedProduct> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& kept, const LinearImpl* base) {
    ctx->saved_data["base"] = reinterpret_cast<int64_t>(base);
    (void)x;  // an input only so that its gradient flows: the product itself is already known
    return kept;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto* base = reinterpret_cast<const LinearImpl*>(  // NOLINT(performance-no-int-to-ptr)
        ctx->saved_data["base"].toInt());
    return {base->base_input_grad(grads[0]), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

KeptProducts* KeptProducts::current() { return open_products; }

torch::Tensor KeptProducts::product(const LinearImpl& base, const torch::Tensor& x) {
  if (mode_ == Mode::kRecord) {
    torch::Tensor y = base.base_forward(x);
    products_.push_back(y);
    return y;
  }
  TORCH_CHECK(next_ < products_.size(),
              "kept products: the recomputed layer ran more projections than its forward (",
              products_.size(), ")");
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = base.out_features();
  const torch::Tensor& next = products_[next_];
  TORCH_CHECK(next.sizes() == shape && next.scalar_type() == x.scalar_type(),
              "kept products: product ", next_ + 1, " is ", next.sizes(), " ", next.scalar_type(),
              ", the recomputation expects ", shape, " ", x.scalar_type());
  torch::Tensor kept = std::move(products_[next_++]);  // the graph holds it from here on
  if (!x.requires_grad() || !torch::GradMode::is_enabled()) return kept;
  return ReplayedProduct::apply(x, kept, &base);
}

KeptProductsScope::KeptProductsScope(KeptProducts& kept, KeptProducts::Mode mode)
    : previous_(open_products) {
  kept.mode_ = mode;
  if (mode == KeptProducts::Mode::kReplay) kept.next_ = 0;
  open_products = &kept;
}

KeptProductsScope::~KeptProductsScope() { open_products = previous_; }

}  // namespace gemma
