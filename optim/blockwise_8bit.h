// Blockwise 8-bit quantization into a dynamic map, as bitsandbytes' CPU backend does it for the
// 8-bit optimizer state (qlora-formats.md §1.11): per block of 256 flat elements a float32 absmax
// and a uint8 code per element, chosen through a 65536-bin lookup table, which is not always the
// nearest code. A plain LibTorch reference (the oracle) sits beside the fast loop.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace gemma {

constexpr int64_t kBlockwise8bitBlockSize = 256;
constexpr int64_t kBlockwise8bitLutSize = 65536;

// A 256-entry float32 map and its lookup table: lut[k] is the nearest code to the bin value
// -1 + 2k/65535, i.e. the number of midpoints between neighbouring codes below it.
struct DynamicCodebook {
  torch::Tensor map;  // float32 [256], ascending
  torch::Tensor lut;  // uint8 [65536]
};

// bitsandbytes' signed map (Adam's first moment) or unsigned map (the second), with tables; built
// once.
const DynamicCodebook& dynamic_codebook(bool is_signed);
DynamicCodebook make_dynamic_codebook(const torch::Tensor& map);

struct Blockwise8bit {
  torch::Tensor codes;   // uint8, the input's shape
  torch::Tensor absmax;  // float32 [ceil(n / 256)]
};

// Quantizes a float32 CPU tensor: absmax = max |x| per block (NaN skipped), s = clamp(x *
// (1/absmax), -1, 1), code = lut[trunc((s + 1) * 0.5 * 65535 + 0.5)] in float32; a block whose
// absmax is 0 gets code 0 throughout.
Blockwise8bit quantize_blockwise_8bit(const torch::Tensor& x, const DynamicCodebook& book);
Blockwise8bit quantize_blockwise_8bit_reference(const torch::Tensor& x,
                                                const DynamicCodebook& book);
// Writes into existing `codes` and `absmax` (the optimizer's state, kept in place).
void quantize_blockwise_8bit_into(const torch::Tensor& x, const DynamicCodebook& book,
                                  torch::Tensor& codes, torch::Tensor& absmax);

// map[code] * absmax[block] in float32, the codes' shape.
torch::Tensor dequantize_blockwise_8bit(const torch::Tensor& codes, const torch::Tensor& absmax,
                                        const DynamicCodebook& book);
torch::Tensor dequantize_blockwise_8bit_reference(const torch::Tensor& codes,
                                                  const torch::Tensor& absmax,
                                                  const DynamicCodebook& book);

}  // namespace gemma
