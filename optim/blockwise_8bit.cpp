// bitsandbytes 0.50.2 `quantize_blockwise` / `dequantize_blockwise` on CPU (csrc/cpu_ops.cpp
// behind backends/cpu/ops.py), byte for byte: these float32 ops matched the wheel's
// libbitsandbytes_cpu.so on every bin edge when written; tests/reference/test_adamw8bit.py
// checks the optimizer state bytes it produces.
// CUDA differs (§1.11): exact nearest code, and the optimizer kernel's sign fix for state1.
#include "optim/blockwise_8bit.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "kernels/nf4.h"

namespace gemma {

namespace {

constexpr int64_t kBs = kBlockwise8bitBlockSize;

void check_input(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32,
              "blockwise 8-bit quantization takes a float32 CPU tensor, got ", x.scalar_type(),
              " on ", x.device());
}

int64_t block_count(int64_t n) { return (n + kBs - 1) / kBs; }

// The bin of a scaled value, float32 ops in bitsandbytes' order; NaN goes to bin 0 (x86's
// conversion of NaN gave code 0 there too, §1.11).
inline int64_t bin_of(float s) {
  const float k = (s + 1.0f) * 0.5f * 65535.0f + 0.5f;
  return k >= 0.0f ? static_cast<int64_t>(k) : 0;
}

}  // namespace

DynamicCodebook make_dynamic_codebook(const torch::Tensor& map) {
  TORCH_CHECK(map.numel() == 256, "a dynamic map has 256 entries, got ", map.numel());
  DynamicCodebook book;
  book.map = map.to(torch::kCPU, torch::kFloat32).contiguous();
  const float* m = book.map.data_ptr<float>();
  float mids[255];
  for (int i = 0; i < 255; ++i) mids[i] = 0.5f * (m[i] + m[i + 1]);
  book.lut = torch::empty({kBlockwise8bitLutSize}, torch::kUInt8);
  uint8_t* lut = book.lut.data_ptr<uint8_t>();
  for (int64_t k = 0; k < kBlockwise8bitLutSize; ++k) {
    const float grid = -1.0f + (2.0f * static_cast<float>(k)) / 65535.0f;
    lut[k] = static_cast<uint8_t>(std::lower_bound(mids, mids + 255, grid) - mids);
  }
  return book;
}

const DynamicCodebook& dynamic_codebook(bool is_signed) {
  static const DynamicCodebook kSigned = make_dynamic_codebook(dynamic_map(true));
  static const DynamicCodebook kUnsigned = make_dynamic_codebook(dynamic_map(false));
  return is_signed ? kSigned : kUnsigned;
}

void quantize_blockwise_8bit_into(const torch::Tensor& x, const DynamicCodebook& book,
                                  torch::Tensor& codes, torch::Tensor& absmax) {
  check_input(x);
  const torch::Tensor xc = x.contiguous();
  const int64_t n = xc.numel(), blocks = block_count(n);
  TORCH_CHECK(codes.is_contiguous() && codes.numel() == n && codes.scalar_type() == torch::kUInt8,
              "codes must be a contiguous uint8 tensor of ", n, " elements");
  TORCH_CHECK(
      absmax.is_contiguous() && absmax.numel() == blocks && absmax.scalar_type() == torch::kFloat32,
      "absmax must be a contiguous float32 tensor of ", blocks, " elements");
  const float* in = xc.data_ptr<float>();
  const uint8_t* lut = book.lut.data_ptr<uint8_t>();
  uint8_t* out = codes.data_ptr<uint8_t>();
  float* amax = absmax.data_ptr<float>();
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * kBs, len = std::min(kBs, n - first);
      float m = 0.0f;
      for (int64_t i = 0; i < len; ++i) {
        const float a = std::fabs(in[first + i]);
        if (a > m) m = a;  // NaN never compares greater: skipped
      }
      amax[b] = m;
      if (m == 0.0f) {
        std::memset(out + first, 0, len);
        continue;
      }
      const float inv = 1.0f / m;
      for (int64_t i = 0; i < len; ++i) {
        const float s = std::min(std::max(in[first + i] * inv, -1.0f), 1.0f);
        out[first + i] = lut[bin_of(s)];
      }
    }
  });
}

Blockwise8bit quantize_blockwise_8bit(const torch::Tensor& x, const DynamicCodebook& book) {
  Blockwise8bit q{torch::empty(x.sizes(), torch::kUInt8),
                  torch::empty({block_count(x.numel())}, torch::kFloat32)};
  quantize_blockwise_8bit_into(x, book, q.codes, q.absmax);
  return q;
}

Blockwise8bit quantize_blockwise_8bit_reference(const torch::Tensor& x,
                                                const DynamicCodebook& book) {
  check_input(x);
  const int64_t n = x.numel(), blocks = block_count(n);
  const torch::Tensor blocked =
      torch::constant_pad_nd(x.reshape(-1), {0, blocks * kBs - n}).view({blocks, kBs});
  const torch::Tensor absmax =
      torch::where(blocked.isnan(), torch::zeros({}), blocked.abs()).amax(1);
  const torch::Tensor scaled = torch::clamp(blocked * (1.0 / absmax).unsqueeze(1), -1, 1);
  // NaN converts to INT64_MIN on x86 and clamps to bin 0, as bin_of does.
  const torch::Tensor bins =
      ((scaled + 1) * 0.5 * 65535 + 0.5).to(torch::kInt64).clamp(0, kBlockwise8bitLutSize - 1);
  torch::Tensor codes = book.lut.index({bins});
  codes = torch::where(absmax.unsqueeze(1) == 0, torch::zeros({}, torch::kUInt8), codes);
  return {codes.reshape(-1).narrow(0, 0, n).reshape(x.sizes()).contiguous(), absmax};
}

torch::Tensor dequantize_blockwise_8bit(const torch::Tensor& codes, const torch::Tensor& absmax,
                                        const DynamicCodebook& book) {
  const torch::Tensor c = codes.contiguous(), a = absmax.contiguous();
  const int64_t n = c.numel();
  TORCH_CHECK(c.scalar_type() == torch::kUInt8 && a.scalar_type() == torch::kFloat32 &&
                  a.numel() == block_count(n),
              "dequantize_blockwise_8bit: uint8 codes and float32 absmax [ceil(n/256)] expected");
  torch::Tensor out = torch::empty(c.sizes(), torch::kFloat32);
  const uint8_t* in = c.data_ptr<uint8_t>();
  const float* amax = a.data_ptr<float>();
  const float* map = book.map.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, block_count(n), 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * kBs, last = std::min(n, first + kBs);
      for (int64_t i = first; i < last; ++i) o[i] = map[in[i]] * amax[b];
    }
  });
  return out;
}

torch::Tensor dequantize_blockwise_8bit_reference(const torch::Tensor& codes,
                                                  const torch::Tensor& absmax,
                                                  const DynamicCodebook& book) {
  const int64_t n = codes.numel(), blocks = block_count(n);
  const torch::Tensor values = book.map.index({codes.reshape(-1).to(torch::kInt64)});
  const torch::Tensor padded = torch::constant_pad_nd(values, {0, blocks * kBs - n});
  const torch::Tensor scaled = (padded.view({blocks, kBs}) * absmax.unsqueeze(1)).reshape(-1);
  return scaled.narrow(0, 0, n).reshape(codes.sizes()).contiguous();
}

}  // namespace gemma
