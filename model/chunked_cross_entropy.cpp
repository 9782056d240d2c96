#include "model/chunked_cross_entropy.h"

namespace gemma {

namespace {

torch::Tensor capped_logits(const torch::Tensor& h, const torch::Tensor& w,
                            std::optional<double> softcap) {
  const auto fp = h.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  torch::Tensor logits = torch::nn::functional::linear(h, w).to(fp);
  if (softcap) logits = torch::tanh(logits / *softcap) * *softcap;
  return logits;
}

class ChunkedLoss : public torch::autograd::Function<ChunkedLoss> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& lm_head, const torch::Tensor& labels,
                               double softcap, int64_t chunk) {
    const std::optional<double> cap = softcap > 0 ? std::optional<double>(softcap) : std::nullopt;
    const int64_t n = hidden.size(0);
    const torch::Tensor valid = labels != kIgnoreIndex;
    const double count = std::max<int64_t>(valid.sum().item<int64_t>(), 1);
    torch::Tensor total = torch::zeros(
        {}, hidden.options().dtype(hidden.scalar_type() == torch::kFloat64 ? torch::kFloat64
                                                                           : torch::kFloat32));
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t len = std::min(chunk, n - start);
      const torch::Tensor logits = capped_logits(hidden.narrow(0, start, len), lm_head, cap);
      const torch::Tensor y = labels.narrow(0, start, len);
      const torch::Tensor keep = y != kIgnoreIndex;
      const torch::Tensor target = logits.gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1);
      total += ((logits.logsumexp(1) - target) * keep).sum();
    }
    ctx->save_for_backward({hidden, lm_head, labels});
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["count"] = count;
    return total / count;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &hidden = saved[0], &lm_head = saved[1], &labels = saved[2];
    const double softcap = ctx->saved_data["softcap"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const double count = ctx->saved_data["count"].toDouble();
    const std::optional<double> cap = softcap > 0 ? std::optional<double>(softcap) : std::nullopt;
    const torch::Tensor scale = grad_out[0] / count;
    torch::Tensor grad_hidden = torch::empty_like(hidden);
    // A frozen (tied) lm_head gets no gradient: a [vocab, hidden] buffer is the size of the
    // embedding table, so it is only made when asked for.
    const bool want_grad_w = ctx->needs_input_grad(1);
    torch::Tensor grad_w;
    if (want_grad_w)
      grad_w = torch::zeros(lm_head.sizes(), lm_head.options().dtype(scale.scalar_type()));
    const int64_t n = hidden.size(0);
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t len = std::min(chunk, n - start);
      const torch::Tensor h = hidden.narrow(0, start, len);
      const torch::Tensor y = labels.narrow(0, start, len);
      const torch::Tensor capped = capped_logits(h, lm_head, cap);
      // d loss / d capped = softmax - onehot(label), zero on ignored tokens
      torch::Tensor grad = capped.softmax(1);
      grad.scatter_add_(1, y.clamp_min(0).unsqueeze(1), -torch::ones({len, 1}, grad.options()));
      grad = grad * (y != kIgnoreIndex).unsqueeze(1).to(grad.scalar_type()) * scale;
      if (cap) grad = grad * (1 - (capped / *cap).pow(2));  // through cap · tanh(x / cap)
      grad_hidden.narrow(0, start, len)
          .copy_(torch::matmul(grad.to(lm_head.scalar_type()), lm_head));
      if (want_grad_w) grad_w += torch::matmul(grad.t(), h.to(grad.scalar_type()));
    }
    return {grad_hidden, want_grad_w ? grad_w.to(lm_head.scalar_type()) : torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor chunked_causal_lm_loss(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                     const torch::Tensor& labels, std::optional<double> softcap,
                                     int64_t chunk_tokens) {
  TORCH_CHECK(hidden.dim() == 2 && labels.dim() == 1 && hidden.size(0) == labels.size(0),
              "chunked_causal_lm_loss: hidden [N, H] and labels [N]");
  TORCH_CHECK(chunk_tokens > 0, "chunked_causal_lm_loss: chunk_tokens must be positive");
  return ChunkedLoss::apply(hidden, lm_head, labels.to(torch::kInt64), softcap.value_or(0.0),
                            chunk_tokens);
}

torch::Tensor causal_lm_loss_reference(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                       const torch::Tensor& labels, std::optional<double> softcap) {
  return torch::nn::functional::cross_entropy(
      capped_logits(hidden, lm_head, softcap), labels.to(torch::kInt64),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

}  // namespace gemma
