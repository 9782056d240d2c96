// y = x · Wᵀ for a few rows of activations against one frozen weight (float32, bf16 or NF4), as
// raw-pointer calls that compute a range of output features on the calling thread. For callers
// that run their own threads: the step decoder (model/gemma4_step_decoder.h) runs a whole decoded
// token in one parallel region, where LibTorch's per-product dispatch and parallel region would
// cost more than the products of a small model. The tensor-level products (bf16_matvec,
// nf4_fused_matmul) run the same codes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gemma {

// The CPU code a product runs, each needing the instruction sets of those before it:
// AVX2 + FMA; AVX-512 F/BW (NF4 weights; dense weights take the AVX2 code, they are bound by
// memory); AVX512_BF16 (bf16 activations: dense bf16 and NF4 weights multiply bf16 pairs).
enum class RowsCode { kAvx2, kAvx512, kAvx512Bf16 };

// The codes this CPU runs, slowest first (empty without AVX2 + FMA).
std::vector<RowsCode> rows_codes_here();
const char* rows_code_name(RowsCode code);
// The fastest code here for float32 activations, or for activations that hold bf16 values;
// nothing when the CPU has no AVX2 + FMA.
std::optional<RowsCode> best_rows_code(bool bf16_activations);

// Activations [rows, in] in the forms the codes read. `f32` always; the AVX2 code for bf16
// weights reads `f32_words` when there (bf16_words_order); the AVX2 NF4 code for
// bf16-valued blocks reads `f32_nf4` (nf4_avx2_order), the AVX-512 NF4 code `f32_pairs` (each
// 32 elements as their 16 even, then their 16 odd ones); the AVX512_BF16 codes read `bf16` (dense
// weights) and `bf16_pairs` (NF4: each 64 as 32 even, then 32 odd). The forms a code does not
// read may be null.
struct RowsInput {
  const float* f32 = nullptr;
  const float* f32_words = nullptr;
  const float* f32_nf4 = nullptr;
  const float* f32_pairs = nullptr;
  const uint16_t* bf16 = nullptr;
  const uint16_t* bf16_pairs = nullptr;
  int64_t rows = 0, in = 0;
};

// x [rows, in] (in % 16 == 0) reordered for the AVX2 code of bf16 weights: each 16 elements as
// 0-3, 8-11, 4-7, 12-15, the order in which interleaving 16 bf16 words with zeros (within each
// 128-bit lane, low halves then high halves) leaves them as float32 lanes.
void bf16_words_order(const float* x, int64_t rows, int64_t in, float* out);

// x [rows, in] (in % 64 == 0) reordered for the AVX2 NF4 code of bf16-valued blocks: in each
// 64-block, the 32 even elements and then the 32 odd ones, each half as four runs of 8 in the
// order the code's byte interleaves, shifts and masks leave the weights of its 32 packed bytes.
void nf4_avx2_order(const float* x, int64_t rows, int64_t in, float* out);

// Owns the derived forms of one activation block; prepare() fills what `code` reads. Reused from
// token to token (no allocation once grown).
class RowsInputBuffer {
 public:
  // `x` [rows, in] float32 (for the bf16 codes: values that bf16 holds exactly). `in` % 16 == 0
  // for `f32_words` (any code but AVX512_BF16), % 32 or % 64 for the NF4 and pair forms (as
  // each says); other widths leave them null.
  RowsInput prepare(const float* x, int64_t rows, int64_t in, RowsCode code);

 private:
  std::vector<float> f32_words_, f32_nf4_, f32_pairs_;
  std::vector<uint16_t> bf16_, bf16_pairs_;
};

// An NF4 weight as raw pointers (Nf4Weight's tensors, with the double-quant tables in float32).
struct Nf4RowsWeight {
  const uint8_t* packed = nullptr;          // [out · in / 2]
  const uint8_t* absmax_codes = nullptr;    // [blocks]
  const float* nested_quant_map = nullptr;  // [256]
  const float* nested_absmax = nullptr;     // [ceil(blocks / 256)]
  float offset = 0.0f;
  const float* quant_map = nullptr;  // [16]
  // Block values rounded to bf16: a bf16 weight (as dequantization gives it), or any weight
  // computed in bf16 (as dequantize_nf4_as(w, bf16) rounds it).
  bool bf16_values = true;
  // Optional, for bf16 values (nf4_block_tables): [blocks, 32], each block's 16 values as bf16,
  // their 16 low bytes then their 16 high bytes. The AVX2 code then loads a block's tables
  // instead of computing them from its absmax.
  const uint8_t* block_tables = nullptr;
};

// A frozen [out, in] weight in one of three storage formats.
struct FrozenWeightView {
  enum class Format { kF32, kBf16, kNf4 };
  Format format = Format::kF32;
  const float* f32 = nullptr;      // kF32: [out, in] row-major
  const uint16_t* bf16 = nullptr;  // kBf16: bf16 bits, [out, in]
  Nf4RowsWeight nf4;               // kNf4: in % 64 == 0
  int64_t in = 0, out = 0;
};

// y [rows, out] float32: outputs [begin, end) of every row, products accumulated in float32
// (equal to the float64 product of the same values to float32 rounding). `x` must be prepared for
// `code`; the dense formats run the AVX2 code unless code is kAvx512Bf16 and the weight bf16.
void rows_product(const FrozenWeightView& w, const RowsInput& x, RowsCode code, float* y,
                  int64_t begin, int64_t end);

// The dense codes by themselves (bf16_matvec's and the step decoder's): bf16 weight with bf16
// pairs (AVX512_BF16, x.bf16) or widened to float32 (AVX2, x.f32); float32 weight (AVX2).
void bf16_rows_product(const uint16_t* w, int64_t in, int64_t out, const RowsInput& x,
                       RowsCode code, float* y, int64_t begin, int64_t end);
void f32_rows_product(const float* w, int64_t in, int64_t out, const RowsInput& x, float* y,
                      int64_t begin, int64_t end);
// The NF4 codes by themselves (nf4_fused_matmul.cpp).
void nf4_rows_product(const Nf4RowsWeight& w, int64_t in, int64_t out, const RowsInput& x,
                      RowsCode code, float* y, int64_t begin, int64_t end);

}  // namespace gemma
