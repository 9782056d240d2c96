// NF4 with double quantization, byte for byte as bitsandbytes stores it (qlora-formats.md §1):
// 64-element blocks scaled by their absmax to [-1, 1], each element the nearest of the 16 NF4
// values (ties to the lower code), two codes a byte with the first element in the HIGH nibble; the
// float32 absmax vector minus its mean quantized again with the signed dynamic 8-bit map in blocks
// of 256. Three implementations sit behind quantize_nf4()/dequantize_nf4(): a plain LibTorch
// reference (the oracle), a vectorized multi-threaded CPU path and CUDA kernels.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace gemma {

constexpr int64_t kNf4BlockSize = 64;
constexpr int64_t kNf4NestedBlockSize = 256;

// One weight in bitsandbytes' serialized form (the `weight.*` keys of §1.8).
struct Nf4Weight {
  torch::Tensor packed;                        // uint8 [ceil(n/2), 1]
  torch::Tensor absmax_codes;                  // uint8 [n_blocks]: 8-bit codes of absmax - offset
  torch::Tensor nested_absmax;                 // float32 [ceil(n_blocks / 256)]
  torch::Tensor quant_map;                     // float32 [16], the NF4 table
  torch::Tensor nested_quant_map;              // float32 [256], the signed dynamic map
  float offset = 0.0f;                         // mean of the absmax vector
  std::vector<int64_t> shape;                  // the original shape
  torch::ScalarType dtype = torch::kBFloat16;  // the original dtype: dequantization's output
  int64_t blocksize = kNf4BlockSize;

  int64_t numel() const;
  int64_t nbytes() const;  // everything stored for this weight
  void to(const torch::Device& device, bool non_blocking = false);  // moves every tensor
};

enum class Nf4Backend { kAuto, kReference, kCpu, kCuda };

// The NF4 table (float32 [16]) and bitsandbytes' signed / unsigned dynamic 8-bit maps ([256]).
torch::Tensor nf4_code_table();
torch::Tensor dynamic_map(bool is_signed);

// Quantizes a floating tensor (any shape; bf16, f16 or f32) on its device.
Nf4Weight quantize_nf4(const torch::Tensor& weight, Nf4Backend backend = Nf4Backend::kAuto);
// The per-block float32 absmax (double quantization undone).
torch::Tensor dequantize_nf4_absmax(const Nf4Weight& w);
// The weight back in `w.dtype` and `w.shape`, on the device of `w.packed`.
torch::Tensor dequantize_nf4(const Nf4Weight& w, Nf4Backend backend = Nf4Backend::kAuto);

// Shared by every path: fills w.offset, w.nested_absmax and w.absmax_codes from the float32 absmax.
void double_quantize_absmax(const torch::Tensor& absmax, Nf4Weight& w);

// The implementations, for tests and benchmarks.
Nf4Weight quantize_nf4_reference(const torch::Tensor& weight);
torch::Tensor dequantize_nf4_reference(const Nf4Weight& w);
Nf4Weight quantize_nf4_cpu(const torch::Tensor& weight);
torch::Tensor dequantize_nf4_cpu(const Nf4Weight& w);
// The values dequantization in `w.dtype` gives, stored as `out_dtype` (a bf16 weight widened to
// f32 block by block, in one pass).
torch::Tensor dequantize_nf4_cpu(const Nf4Weight& w, torch::ScalarType out_dtype);
// The same into an existing contiguous tensor of w.numel() elements: float32 (the values in w.dtype
// rounding, for an f32 or bf16 weight) or bf16 (a bf16 weight). No allocation: a workspace can
// be reused.
void dequantize_nf4_cpu_into(const Nf4Weight& w, const torch::Tensor& out);
// Which CPU instruction set the fast path uses here: "avx512", "avx2" or "scalar".
const char* nf4_cpu_isa();
bool nf4_cuda_available();  // CUDA kernels built in and a GPU present
Nf4Weight quantize_nf4_cuda(const torch::Tensor& weight);
torch::Tensor dequantize_nf4_cuda(const Nf4Weight& w);

}  // namespace gemma
