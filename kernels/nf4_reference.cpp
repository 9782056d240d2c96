// The plain LibTorch NF4 path: the oracle every fast path is tested against. It follows
// bitsandbytes' own reference backend operation for operation, so the bytes agree with it.
#include "kernels/nf4.h"

#include <cmath>
#include <cstring>

namespace gemma {

namespace {

// §1.1: the 16 NF4 values, as float32 bit patterns (exact).
constexpr uint32_t kNf4Bits[16] = {
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};

// Per-block absmax of a flat float32 tensor and the elements scaled to [-1, 1], exactly as
// bitsandbytes' reference does it: full blocks multiply by 1/max(absmax, 1e-38), a partial last
// block divides by its (clamped) absmax, which is also what it stores for that block.
std::pair<torch::Tensor, torch::Tensor> scale_blocks(const torch::Tensor& flat, int64_t blocksize) {
  const int64_t n = flat.numel(), full = n / blocksize, rem = n % blocksize;
  std::vector<torch::Tensor> absmax, scaled;
  if (full > 0) {
    const torch::Tensor blocks = flat.narrow(0, 0, full * blocksize).view({full, blocksize});
    const torch::Tensor m = blocks.abs().amax(-1);
    absmax.push_back(m);
    scaled.push_back(
        torch::clamp(blocks * (1.0 / m.clamp_min(1e-38).view({-1, 1})), -1, 1).reshape(-1));
  }
  if (rem) {
    const torch::Tensor tail = flat.narrow(0, full * blocksize, rem);
    const torch::Tensor m = tail.abs().max().clamp_min(1e-38);
    absmax.push_back(m.unsqueeze(0));
    scaled.push_back(torch::clamp(tail / m, -1, 1));
  }
  return {torch::cat(absmax), torch::cat(scaled)};
}

// Index of the nearest table entry: the number of midpoints strictly below x (ties go to the
// lower code), as torch.bucketize(x, midpoints).
torch::Tensor nearest_code(const torch::Tensor& x, const torch::Tensor& code) {
  const int64_t k = code.numel();
  const torch::Tensor bounds = (code.narrow(0, 0, k - 1) + code.narrow(0, 1, k - 1)) / 2;
  return torch::bucketize(x, bounds).to(torch::kUInt8);
}

}  // namespace

void double_quantize_absmax(const torch::Tensor& absmax, Nf4Weight& w) {
  // §1.6: subtract the mean, then 8-bit blockwise quantization (blocks of 256, signed dynamic map).
  const torch::Tensor offset = absmax.mean();
  w.offset = offset.item<float>();
  auto [nested, centred_scaled] = scale_blocks(absmax - offset, kNf4NestedBlockSize);
  w.nested_absmax = nested;
  if (!w.nested_quant_map.defined()) w.nested_quant_map = dynamic_map(true).to(absmax.device());
  w.absmax_codes = nearest_code(centred_scaled, w.nested_quant_map);
}

int64_t Nf4Weight::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t Nf4Weight::nbytes() const {
  return packed.nbytes() + absmax_codes.nbytes() + nested_absmax.nbytes() + quant_map.nbytes() +
         nested_quant_map.nbytes();
}

void Nf4Weight::to(const torch::Device& device, bool non_blocking) {
  for (torch::Tensor* t : {&packed, &absmax_codes, &nested_absmax, &quant_map, &nested_quant_map})
    *t = t->to(device, non_blocking);
}

torch::Tensor nf4_code_table() {
  torch::Tensor t = torch::empty({16}, torch::kFloat32);
  std::memcpy(t.data_ptr<float>(), kNf4Bits, sizeof(kNf4Bits));
  return t;
}

torch::Tensor dynamic_map(bool is_signed) {
  // §1.7 (create_dynamic_map with 7 exponent bits): for scale 10^(i-6), the means of adjacent
  // points of linspace(0.1, 1) — 2^i of them signed (with negatives), 2^(i+1) unsigned — plus 0
  // and 1, sorted. float32 throughout, as bitsandbytes computes it.
  std::vector<torch::Tensor> parts;
  for (int i = 0; i < 7; ++i) {
    const int64_t points = (is_signed ? (1 << i) : (1 << (i + 1))) + 1;
    const torch::Tensor b = torch::linspace(0.1, 1.0, points, torch::kFloat32);
    const torch::Tensor means = (b.narrow(0, 0, points - 1) + b.narrow(0, 1, points - 1)) / 2.0;
    const torch::Tensor v = means * std::pow(10.0, i - 6);
    parts.push_back(v);
    if (is_signed) parts.push_back(-v);
  }
  parts.push_back(torch::zeros({1}, torch::kFloat32));
  parts.push_back(torch::ones({1}, torch::kFloat32));
  return std::get<0>(torch::cat(parts).sort());
}

Nf4Weight quantize_nf4_reference(const torch::Tensor& weight) {
  TORCH_CHECK(weight.is_floating_point(), "quantize_nf4: expected a floating tensor");
  Nf4Weight w;
  w.shape = weight.sizes().vec();
  w.dtype = weight.scalar_type();
  w.quant_map = nf4_code_table().to(weight.device());
  w.nested_quant_map = dynamic_map(true).to(weight.device());
  const torch::Tensor flat = weight.reshape(-1).to(torch::kFloat32);
  auto [absmax, scaled] = scale_blocks(flat, w.blocksize);
  if (scaled.numel() % 2) scaled = torch::cat({scaled, torch::zeros({1}, scaled.options())});
  const torch::Tensor codes = nearest_code(scaled, w.quant_map);
  const int64_t m = codes.numel();
  w.packed = torch::bitwise_or(torch::bitwise_left_shift(codes.slice(0, 0, m, 2), 4),
                               codes.slice(0, 1, m, 2))
                 .view({-1, 1});
  double_quantize_absmax(absmax, w);
  return w;
}

torch::Tensor dequantize_nf4_absmax(const Nf4Weight& w) {
  const int64_t blocks = w.absmax_codes.numel();
  const torch::Tensor values = w.nested_quant_map.index({w.absmax_codes.to(torch::kLong)});
  const int64_t full = blocks / kNf4NestedBlockSize, rem = blocks % kNf4NestedBlockSize;
  torch::Tensor out = torch::empty({blocks}, values.options());
  if (full) {
    out.narrow(0, 0, full * kNf4NestedBlockSize)
        .copy_((values.narrow(0, 0, full * kNf4NestedBlockSize).view({full, kNf4NestedBlockSize}) *
                w.nested_absmax.narrow(0, 0, full).view({-1, 1}))
                   .reshape(-1));
  }
  if (rem)
    out.narrow(0, full * kNf4NestedBlockSize, rem)
        .copy_(values.narrow(0, full * kNf4NestedBlockSize, rem) * w.nested_absmax[full]);
  return out + torch::tensor(w.offset, out.options());
}

torch::Tensor dequantize_nf4_reference(const Nf4Weight& w) {
  const int64_t n = w.numel();
  const torch::Tensor bytes = w.packed.reshape(-1);
  const torch::Tensor codes =
      torch::stack({torch::bitwise_right_shift(bytes, 4), torch::bitwise_and(bytes, 0xF)}, 1)
          .reshape(-1)
          .narrow(0, 0, n)
          .to(torch::kLong);
  // float32 table times float32 absmax, then the product cast to the output dtype.
  const torch::Tensor values = w.quant_map.to(torch::kFloat32).index({codes});
  const torch::Tensor absmax = dequantize_nf4_absmax(w);
  const int64_t full = n / w.blocksize, rem = n % w.blocksize;
  torch::Tensor out = torch::empty({n}, values.options().dtype(w.dtype));
  if (full) {
    out.narrow(0, 0, full * w.blocksize)
        .copy_((values.narrow(0, 0, full * w.blocksize).view({full, w.blocksize}) *
                absmax.narrow(0, 0, full).view({-1, 1}))
                   .reshape(-1)
                   .to(w.dtype));
  }
  if (rem)
    out.narrow(0, full * w.blocksize, rem)
        .copy_((values.narrow(0, full * w.blocksize, rem) * absmax[full]).to(w.dtype));
  return out.view(w.shape);
}

}  // namespace gemma
