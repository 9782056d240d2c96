#include "model/rotary_embedding.h"

#include <cmath>

namespace gemma {

torch::Tensor rope_inverse_frequencies(const RopeSpec& spec, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  // transformers builds the exponents in float32: arange(0, d, 2).float() / d.
  const torch::Tensor exponents =
      torch::arange(0, head_dim, 2, torch::kFloat32) / static_cast<float>(head_dim);
  torch::Tensor inv = 1.0 / torch::pow(static_cast<float>(spec.rope_theta), exponents);
  if (spec.rope_type == "proportional") {
    // §2.4: R = floor(p·d/2) rotated pairs; the denominator stays the full head_dim.
    const auto rotated =
        static_cast<int64_t>(std::floor(spec.partial_rotary_factor * head_dim / 2));
    inv = inv / static_cast<float>(spec.factor);
    if (rotated < half) inv.slice(0, rotated, half).zero_();
  }
  return inv.to(torch::kFloat32);
}

RopeTables rope_tables(const torch::Tensor& inverse_frequencies, const torch::Tensor& position_ids,
                       torch::ScalarType dtype) {
  const auto fp = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const torch::Tensor inv = inverse_frequencies.to(position_ids.device(), fp);
  const torch::Tensor freqs = position_ids.unsqueeze(-1).to(fp) * inv;  // [B, T, d/2]
  const torch::Tensor angles = torch::cat({freqs, freqs}, -1);
  return {angles.cos().to(dtype), angles.sin().to(dtype)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& tables) {
  const int64_t half = x.size(-1) / 2;
  const torch::Tensor x1 = x.narrow(-1, 0, half);
  const torch::Tensor x2 = x.narrow(-1, half, half);
  const torch::Tensor rotated = torch::cat({-x2, x1}, -1);
  const torch::Tensor cos = tables.cos.unsqueeze(2);
  const torch::Tensor sin = tables.sin.unsqueeze(2);
  return x * cos + rotated * sin;
}

}  // namespace gemma
