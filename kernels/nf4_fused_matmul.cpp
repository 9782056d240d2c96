#include "kernels/nf4_fused_matmul.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/avx2_lanes.h"
#include "kernels/bf16_bits.h"
#include "kernels/nf4_cpu_simd.h"
#include "kernels/rows_product.h"

#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/nf4_cuda_kernels.h"
#endif

namespace gemma {

namespace {

using avx2::horizontal_sum;
using avx2::round_to_bf16_values;
using nf4_simd::AbsmaxSource;

// The operands of one product, as raw pointers.
struct Operands {
  const uint8_t* packed;
  AbsmaxSource absmax;
  const float* lut;
  bool bf16_weight;
  const uint8_t* block_tables;  // optional: [blocks, 32] (Nf4RowsWeight::block_tables)
  const float* x;               // [rows, in], float32 (the bf16 code: null)
  const uint16_t* x_bf16;       // [rows, in], bfloat16 bits, for the bf16 code only
  int64_t rows, in, out;
  float* y;  // [rows, out], float32
};

// The 16 values of one block (two vectors), rounded to bf16 for a bf16 weight.
__attribute__((target("avx2,fma"))) inline void block_vectors(const Operands& op, int64_t block,
                                                              __m256 lut_lo, __m256 lut_hi,
                                                              __m256& lo, __m256& hi) {
  const __m256 scale = _mm256_set1_ps(op.absmax(block));
  lo = _mm256_mul_ps(lut_lo, scale);
  hi = _mm256_mul_ps(lut_hi, scale);
  if (op.bf16_weight) {
    lo = round_to_bf16_values(lo);
    hi = round_to_bf16_values(hi);
  }
}

// A block's 64 weights (8 vectors) times every row of x at block k, into two partial sums per row
// (`sums`, 16 floats a row).
__attribute__((target("avx2,fma"))) inline void accumulate_block_rows(const Operands& op, int64_t k,
                                                                      const __m256* w,
                                                                      float* sums) {
  const float* xk = op.x + k * kNf4BlockSize;
  for (int64_t m = 0; m < op.rows; ++m) {
    const float* xm = xk + m * op.in;
    float* acc = sums + m * 16;
    __m256 s0 = _mm256_loadu_ps(acc), s1 = _mm256_loadu_ps(acc + 8);
    for (int64_t g = 0; g < 8; g += 2) {
      s0 = _mm256_fmadd_ps(w[g], _mm256_loadu_ps(xm + 8 * g), s0);
      s1 = _mm256_fmadd_ps(w[g + 1], _mm256_loadu_ps(xm + 8 * g + 8), s1);
    }
    _mm256_storeu_ps(acc, s0);
    _mm256_storeu_ps(acc + 8, s1);
  }
}

// Each row's two partial sums, added up into y at output feature o.
__attribute__((target("avx2,fma"))) inline void store_row_sums(const Operands& op, int64_t o,
                                                               const float* sums) {
  for (int64_t m = 0; m < op.rows; ++m)
    op.y[m * op.out + o] =
        horizontal_sum(_mm256_loadu_ps(sums + m * 16), _mm256_loadu_ps(sums + m * 16 + 8));
}

// One row of x (decoding): four partial sums in registers, so consecutive blocks never wait on
// each other's multiply-adds.
__attribute__((target("avx2,fma"))) void product_one_row_avx2(const Operands& op, int64_t begin,
                                                              int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m256 lut_lo = _mm256_loadu_ps(op.lut), lut_hi = _mm256_loadu_ps(op.lut + 8);
  for (int64_t o = begin; o < end; ++o) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      __m256 lo, hi;
      block_vectors(op, block, lut_lo, lut_hi, lo, hi);
      const uint8_t* bytes = op.packed + block * (kNf4BlockSize / 2);
      const float* xk = op.x + k * kNf4BlockSize;
      for (int64_t g = 0; g < 8; ++g) {
        s[g % 4] = _mm256_fmadd_ps(nf4_simd::lookup8(bytes + 4 * g, lo, hi),
                                   _mm256_loadu_ps(xk + 8 * g), s[g % 4]);
      }
    }
    op.y[o] = horizontal_sum(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
  }
}

// Output features [begin, end) for every row of x. Per block: its 16 values (two vectors), its 64
// codes looked up into 8 vectors of weights, then 8 multiply-adds per row of x into two partial
// sums per row (kept in `sums`, so any number of rows shares one dequantization).
__attribute__((target("avx2,fma"))) void product_rows_avx2(const Operands& op, int64_t begin,
                                                           int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m256 lut_lo = _mm256_loadu_ps(op.lut), lut_hi = _mm256_loadu_ps(op.lut + 8);
  std::vector<float> sums(static_cast<size_t>(op.rows) * 16);
  for (int64_t o = begin; o < end; ++o) {
    std::fill(sums.begin(), sums.end(), 0.0f);
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      __m256 lo, hi;
      block_vectors(op, block, lut_lo, lut_hi, lo, hi);
      const uint8_t* bytes = op.packed + block * (kNf4BlockSize / 2);
      __m256 wv[8];
      for (int64_t g = 0; g < 8; ++g) wv[g] = nf4_simd::lookup8(bytes + 4 * g, lo, hi);
      accumulate_block_rows(op, k, wv, sums.data());
    }
    store_row_sums(op, o, sums.data());
  }
}

// AVX2 for blocks whose values are bf16 (a bf16 weight, or any weight multiplied with bf16 x):
// a block's 16 values as bf16, split into a table of their low bytes and one of their high bytes,
// so that vpshufb looks up 32 codes in each at once. 64 weights cost two nibble masks, four byte
// lookups, four byte interleaves (bf16 words) and eight shifts or masks to float32, instead of
// eight two-permute lookups. (Widening the words by eight more interleaves instead of the shifts
// and masks: 1-6% slower at 2 threads on an AVX2-only EPYC, `build/bench/nf4_bench
// --benchmark_filter='BM_RowsFused/(6|15)/1/'`, and 10% on one core.) The weights come out in the
// order nf4_avx2_order gives x (once per product). The NF4 table in the order
// block_weights_bf16_avx2 scales it: codes 0-3 and 8-11 in `p`, codes 4-7 and 12-15 in `q`, so that
// one byte shuffle per vector and two 64-bit permutes make the byte tables.
struct Nf4LutAvx2 {
  __m256 p, q;
};
__attribute__((target("avx2,fma"))) inline Nf4LutAvx2 nf4_lut_avx2(const float* lut) {
  return {_mm256_setr_ps(lut[0], lut[1], lut[2], lut[3], lut[8], lut[9], lut[10], lut[11]),
          _mm256_setr_ps(lut[4], lut[5], lut[6], lut[7], lut[12], lut[13], lut[14], lut[15])};
}

__attribute__((target("avx2,fma"))) inline void block_weights_bf16_avx2(const Operands& op,
                                                                        int64_t block,
                                                                        Nf4LutAvx2 lut,
                                                                        __m256 w[8]) {
  __m256i low_table, high_table;
  if (op.block_tables != nullptr) {
    const auto* tables = reinterpret_cast<const __m128i*>(op.block_tables + block * 32);
    low_table = _mm256_broadcastsi128_si256(_mm_loadu_si128(tables));
    high_table = _mm256_broadcastsi128_si256(_mm_loadu_si128(tables + 1));
  } else {
    // The 16 values lut · absmax rounded to bf16 (ties to even), the bf16 in bytes 2 and 3 of
    // each float32 lane.
    const __m256 scale = _mm256_set1_ps(op.absmax(block));
    const __m256i p = avx2::bf16_rounding_bits(_mm256_mul_ps(lut.p, scale));
    const __m256i q = avx2::bf16_rounding_bits(_mm256_mul_ps(lut.q, scale));
    // Per 16-byte half: p's low bytes to 0-3 and high bytes to 8-11, q's to 4-7 and 12-15, so
    // the four 64-bit words are the low bytes of codes 0-7, their high bytes, the low bytes of
    // codes 8-15, their high bytes; each table is two of them, in both halves.
    const __m256i from_p =
        _mm256_setr_epi8(2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1, -1, 2, 6, 10, 14,
                         -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1, -1);
    const __m256i from_q =
        _mm256_setr_epi8(-1, -1, -1, -1, 2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1, -1,
                         2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15);
    const __m256i bytes =
        _mm256_or_si256(_mm256_shuffle_epi8(p, from_p), _mm256_shuffle_epi8(q, from_q));
    low_table = _mm256_permute4x64_epi64(bytes, 0x88);   // words 0, 2, 0, 2
    high_table = _mm256_permute4x64_epi64(bytes, 0xDD);  // words 1, 3, 1, 3
  }
  const __m256i packed =
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.packed + block * (kNf4BlockSize / 2)));
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  const __m256i codes[2] = {_mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble),  // even
                            _mm256_and_si256(packed, nibble)};                       // odd
  // Each 32-bit lane of the interleaved words holds two bf16: the even one shifted up and the odd
  // one masked become float32 lanes (no shuffle: the shuffle unit is this code's bottleneck).
  const __m256i upper = _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u));
  for (int64_t h = 0; h < 2; ++h) {
    const __m256i low = _mm256_shuffle_epi8(low_table, codes[h]);
    const __m256i high = _mm256_shuffle_epi8(high_table, codes[h]);
    const __m256i first = _mm256_unpacklo_epi8(low, high);
    const __m256i second = _mm256_unpackhi_epi8(low, high);
    w[4 * h] = _mm256_castsi256_ps(_mm256_slli_epi32(first, 16));
    w[4 * h + 1] = _mm256_castsi256_ps(_mm256_and_si256(first, upper));
    w[4 * h + 2] = _mm256_castsi256_ps(_mm256_slli_epi32(second, 16));
    w[4 * h + 3] = _mm256_castsi256_ps(_mm256_and_si256(second, upper));
  }
}

__attribute__((target("avx2,fma"))) void product_one_row_bf16_avx2(const Operands& op,
                                                                   int64_t begin, int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const Nf4LutAvx2 lut = nf4_lut_avx2(op.lut);
  for (int64_t o = begin; o < end; ++o) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      __m256 w[8];
      block_weights_bf16_avx2(op, o * blocks_per_row + k, lut, w);
      const float* xk = op.x + k * kNf4BlockSize;
      for (int64_t g = 0; g < 8; ++g)
        s[g % 4] = _mm256_fmadd_ps(w[g], _mm256_loadu_ps(xk + 8 * g), s[g % 4]);
    }
    op.y[o] = horizontal_sum(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
  }
}

// Any number of rows: a block's 64 weights made once, then 8 multiply-adds per row into two
// partial sums per row (kept in `sums`).
__attribute__((target("avx2,fma"))) void product_rows_bf16_avx2(const Operands& op, int64_t begin,
                                                                int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const Nf4LutAvx2 lut = nf4_lut_avx2(op.lut);
  std::vector<float> sums(static_cast<size_t>(op.rows) * 16);
  for (int64_t o = begin; o < end; ++o) {
    std::fill(sums.begin(), sums.end(), 0.0f);
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      __m256 w[8];
      block_weights_bf16_avx2(op, o * blocks_per_row + k, lut, w);
      accumulate_block_rows(op, k, w, sums.data());
    }
    store_row_sums(op, o, sums.data());
  }
}

// AVX-512: x comes permuted, so that codes need no interleaving. A block's 16 values fill one
// register and vpermps reads the low 4 bits of each index, so 16 bytes widened to 16 lanes look up
// the 16 odd elements (low nibbles) as they are and, shifted right by 4, the 16 even elements
// (high nibbles). x is stored to match: each group of 32 elements as its 16 even elements, then
// its 16 odd ones (permute_for_avx512 below; once per product, then shared by every output).
__attribute__((target("avx512f,avx512bw"))) inline __m512 block_table_avx512(const Operands& op,
                                                                             int64_t block,
                                                                             __m512 lut) {
  const __m512 v = _mm512_mul_ps(lut, _mm512_set1_ps(op.absmax(block)));
  if (!op.bf16_weight) return v;
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
  return _mm512_castsi512_ps(
      _mm512_and_si512(rounded, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u))));
}

// The 32 weights of 16 bytes: even elements in `even`, odd ones in `odd`.
__attribute__((target("avx512f,avx512bw"))) inline void weights32_avx512(const uint8_t* bytes,
                                                                         __m512 table, __m512& even,
                                                                         __m512& odd) {
  const __m512i codes =
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
  odd = _mm512_permutexvar_ps(codes, table);
  even = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
}

__attribute__((target("avx512f,avx512bw"))) void product_one_row_avx512(const Operands& op,
                                                                        int64_t begin,
                                                                        int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m512 lut = _mm512_loadu_ps(op.lut);
  for (int64_t o = begin; o < end; ++o) {
    __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      const __m512 table = block_table_avx512(op, block, lut);
      const uint8_t* bytes = op.packed + block * (kNf4BlockSize / 2);
      const float* xk = op.x + k * kNf4BlockSize;
      for (int64_t g = 0; g < 2; ++g) {
        __m512 even, odd;
        weights32_avx512(bytes + 16 * g, table, even, odd);
        s[2 * g] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xk + 32 * g), s[2 * g]);
        s[2 * g + 1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xk + 32 * g + 16), s[2 * g + 1]);
      }
    }
    op.y[o] =
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
  }
}

// Up to 8 rows of x: a block's 64 weights (4 registers) are dequantized once and meet every row;
// each row keeps two registers of partial sums (independent chains), all in registers.
template <int kRows>
__attribute__((target("avx512f,avx512bw"))) void product_rows_avx512(const Operands& op,
                                                                     int64_t begin, int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m512 lut = _mm512_loadu_ps(op.lut);
  for (int64_t o = begin; o < end; ++o) {
    __m512 s0[kRows], s1[kRows];
    for (int m = 0; m < kRows; ++m) s0[m] = s1[m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      const __m512 table = block_table_avx512(op, block, lut);
      const uint8_t* bytes = op.packed + block * (kNf4BlockSize / 2);
      __m512 wv[4];
      weights32_avx512(bytes, table, wv[0], wv[1]);
      weights32_avx512(bytes + 16, table, wv[2], wv[3]);
      const float* xk = op.x + k * kNf4BlockSize;
      for (int m = 0; m < kRows; ++m) {
        const float* xm = xk + m * op.in;
        s0[m] = _mm512_fmadd_ps(wv[0], _mm512_loadu_ps(xm), s0[m]);
        s1[m] = _mm512_fmadd_ps(wv[1], _mm512_loadu_ps(xm + 16), s1[m]);
        s0[m] = _mm512_fmadd_ps(wv[2], _mm512_loadu_ps(xm + 32), s0[m]);
        s1[m] = _mm512_fmadd_ps(wv[3], _mm512_loadu_ps(xm + 48), s1[m]);
      }
    }
    for (int m = 0; m < kRows; ++m)
      op.y[m * op.out + o] = _mm512_reduce_add_ps(_mm512_add_ps(s0[m], s1[m]));
  }
}

// bf16 inputs on a CPU with AVX512_BF16: the weights stay bf16 too, 32 to a register, and
// vdpbf16ps multiplies 32 pairs into 16 float32 sums (bf16 products are exact in float32). A
// block's table is its 16 values lut · absmax rounded to bf16 (what dequantizing to bf16 gives,
// for a bf16 or an f32 weight), twice, so that vpermw's 5-bit index ignores bit 4: the 32 bytes of
// a block widened to words look up its 32 odd elements as they are and, shifted right by 4, its 32
// even ones. x comes permuted to match: each block as its 32 even elements, then its 32 odd ones.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512i block_table_bf16(
    const Operands& op, int64_t block, __m512 lut) {
  const __m256i t = reinterpret_cast<__m256i>(
      _mm512_cvtneps_pbh(_mm512_mul_ps(lut, _mm512_set1_ps(op.absmax(block)))));
  return _mm512_inserti64x4(_mm512_castsi256_si512(t), t, 1);
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void weights64_bf16(
    const uint8_t* bytes, __m512i table, __m512i& even, __m512i& odd) {
  const __m512i codes =
      _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes)));
  odd = _mm512_permutexvar_epi16(codes, table);
  even = _mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 4), table);
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512 dot_bf16(__m512 acc, __m512i w,
                                                                              const uint16_t* x) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(w),
                          reinterpret_cast<__m512bh>(_mm512_loadu_si512(x)));
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void product_one_row_bf16(const Operands& op,
                                                                                 int64_t begin,
                                                                                 int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m512 lut = _mm512_loadu_ps(op.lut);
  for (int64_t o = begin; o < end; ++o) {
    __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      __m512i even, odd;
      weights64_bf16(op.packed + block * (kNf4BlockSize / 2), block_table_bf16(op, block, lut),
                     even, odd);
      const uint16_t* xk = op.x_bf16 + k * kNf4BlockSize;
      const int64_t a = 2 * (k & 1);
      s[a] = dot_bf16(s[a], even, xk);
      s[a + 1] = dot_bf16(s[a + 1], odd, xk + 32);
    }
    op.y[o] =
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
  }
}

template <int kRows>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void product_rows_bf16(const Operands& op,
                                                                              int64_t begin,
                                                                              int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m512 lut = _mm512_loadu_ps(op.lut);
  for (int64_t o = begin; o < end; ++o) {
    __m512 s0[kRows], s1[kRows];
    for (int m = 0; m < kRows; ++m) s0[m] = s1[m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      __m512i even, odd;
      weights64_bf16(op.packed + block * (kNf4BlockSize / 2), block_table_bf16(op, block, lut),
                     even, odd);
      const uint16_t* xk = op.x_bf16 + k * kNf4BlockSize;
      for (int m = 0; m < kRows; ++m) {
        s0[m] = dot_bf16(s0[m], even, xk + m * op.in);
        s1[m] = dot_bf16(s1[m], odd, xk + m * op.in + 32);
      }
    }
    for (int m = 0; m < kRows; ++m)
      op.y[m * op.out + o] = _mm512_reduce_add_ps(_mm512_add_ps(s0[m], s1[m]));
  }
}

// The AVX-512 codes' products of 1-8 rows (a one-row product of a longer x takes the multi-row
// code too, so that a row's sum never depends on how x was split).
using RowsProduct = void (*)(const Operands&, int64_t, int64_t);
template <template <int> class Code>
RowsProduct rows_product(int64_t rows) {
  static constexpr RowsProduct kByRows[] = {Code<1>::run, Code<2>::run, Code<3>::run, Code<4>::run,
                                            Code<5>::run, Code<6>::run, Code<7>::run, Code<8>::run};
  return kByRows[rows - 1];
}
template <int kRows>
struct Avx512Rows {
  static void run(const Operands& op, int64_t b, int64_t e) {
    product_rows_avx512<kRows>(op, b, e);
  }
};
template <int kRows>
struct Bf16Rows {
  static void run(const Operands& op, int64_t b, int64_t e) { product_rows_bf16<kRows>(op, b, e); }
};

}  // namespace

bool nf4_fused_matmul_applies(const torch::Tensor& x, const Nf4Weight& w, int64_t max_rows) {
  if (x.device() != w.packed.device()) return false;
  if (x.device().is_cpu()) {
    if (nf4_simd::kIsa == nf4_simd::Isa::kScalar) return false;
  } else if (!x.is_cuda() || !nf4_cuda_available()) {
    return false;
  }
  if (w.shape.size() != 2 || w.blocksize != kNf4BlockSize || w.shape[1] % kNf4BlockSize != 0)
    return false;
  if (w.dtype != torch::kFloat32 && w.dtype != torch::kBFloat16) return false;
  const auto dt = x.scalar_type();
  if ((dt != torch::kFloat32 && dt != torch::kBFloat16) || x.dim() < 1 || x.size(-1) != w.shape[1])
    return false;
  const int64_t rows = x.numel() / w.shape[1];
  return rows >= 1 && rows <= max_rows;
}

namespace {

#ifdef GEMMA_WITH_CUDA
// The kernel reads x as float4 and the codes as 32-bit words: a view that starts elsewhere (a
// slice of a larger tensor) is copied first.
torch::Tensor aligned_to(const torch::Tensor& t, uintptr_t alignment) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % alignment == 0 ? t : t.clone();
}

void product_cuda(const torch::Tensor& x, const Nf4Weight& w, const torch::Tensor& y) {
  const torch::Tensor xf = aligned_to(x, 16);
  const torch::Tensor codes = w.absmax_codes.contiguous();
  const torch::Tensor map = w.nested_quant_map.to(torch::kFloat32).contiguous();
  const torch::Tensor nested = w.nested_absmax.to(torch::kFloat32).contiguous();
  const torch::Tensor lut = w.quant_map.to(torch::kFloat32).contiguous();
  const torch::Tensor packed = aligned_to(w.packed.contiguous(), 4);
  const cuda::Nf4FusedOperands op{packed.data_ptr<uint8_t>(),
                                  codes.data_ptr<uint8_t>(),
                                  map.data_ptr<float>(),
                                  nested.data_ptr<float>(),
                                  w.offset,
                                  lut.data_ptr<float>(),
                                  w.dtype == torch::kBFloat16,
                                  xf.data_ptr<float>(),
                                  xf.size(0),
                                  w.shape[1],
                                  w.shape[0],
                                  y.data_ptr<float>()};
  const c10::cuda::CUDAGuard guard(xf.device());
  TORCH_CHECK(cuda::launch_nf4_fused_matmul(op, c10::cuda::getCurrentCUDAStream().stream()),
              "nf4_fused_matmul: the CUDA kernel refused the weight ", w.shape);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

// x [rows, in] as the code reads it: float32, or bf16 for the bf16 code; for the AVX-512 codes
// each group of 2g elements (g = 16 for float32, 32 for bf16) as its g even elements, then its g
// odd ones.
torch::Tensor x_for(RowsCode code, const torch::Tensor& x) {
  const int64_t rows = x.size(0), in = x.size(1);
  if (code == RowsCode::kAvx2) return x.to(torch::kFloat32).contiguous();
  const bool bf16 = code == RowsCode::kAvx512Bf16;
  const int64_t g = bf16 ? 32 : 16;
  return x.to(bf16 ? torch::kBFloat16 : torch::kFloat32)
      .reshape({rows, in / (2 * g), g, 2})
      .transpose(2, 3)
      .contiguous()
      .view({rows, in});
}

void product_cpu(const torch::Tensor& x, const Nf4Weight& w, const torch::Tensor& y,
                 RowsCode code) {
  const int64_t in = w.shape[1], out = w.shape[0], rows = x.size(0);
  std::vector<torch::Tensor> keep;
  const Nf4RowsWeight weight = nf4_rows_weight(
      w, /*bf16_compute=*/x.scalar_type() == torch::kBFloat16 || code == RowsCode::kAvx512Bf16,
      &keep);
  RowsInput input;
  input.rows = rows;
  input.in = in;
  torch::Tensor in_nf4_order;
  switch (code) {
    case RowsCode::kAvx2:
      input.f32 = x.data_ptr<float>();
      if (weight.bf16_values) {
        in_nf4_order = torch::empty_like(x);
        nf4_avx2_order(x.data_ptr<float>(), rows, in, in_nf4_order.data_ptr<float>());
        input.f32_nf4 = in_nf4_order.data_ptr<float>();
      }
      break;
    case RowsCode::kAvx512:
      input.f32_pairs = x.data_ptr<float>();
      break;
    case RowsCode::kAvx512Bf16:
      input.bf16_pairs = reinterpret_cast<const uint16_t*>(x.data_ptr());
      break;
  }
  float* yp = y.data_ptr<float>();
  // about 64K weights a task: enough to amortize a task, small enough to balance 2-16 threads
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / in);
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    nf4_rows_product(weight, in, out, input, code, yp, begin, end);
  });
}

}  // namespace

Nf4RowsWeight nf4_rows_weight(const Nf4Weight& w, bool bf16_compute,
                              std::vector<torch::Tensor>* keep_alive) {
  const torch::Tensor codes = w.absmax_codes.contiguous();
  const torch::Tensor map = w.nested_quant_map.to(torch::kFloat32).contiguous();
  const torch::Tensor nested = w.nested_absmax.to(torch::kFloat32).contiguous();
  const torch::Tensor lut = w.quant_map.to(torch::kFloat32).contiguous();
  const torch::Tensor packed = w.packed.contiguous();
  Nf4RowsWeight r;
  r.packed = packed.data_ptr<uint8_t>();
  r.absmax_codes = codes.data_ptr<uint8_t>();
  r.nested_quant_map = map.data_ptr<float>();
  r.nested_absmax = nested.data_ptr<float>();
  r.offset = w.offset;
  r.quant_map = lut.data_ptr<float>();
  r.bf16_values = w.dtype == torch::kBFloat16 || bf16_compute;
  for (const torch::Tensor& t : {codes, map, nested, lut, packed}) keep_alive->push_back(t);
  return r;
}

torch::Tensor nf4_block_tables(const Nf4RowsWeight& w, int64_t blocks) {
  TORCH_CHECK(w.bf16_values, "nf4_block_tables: the weight's values are not bf16");
  torch::Tensor tables = torch::empty({blocks, 32}, torch::kUInt8);
  uint8_t* out = tables.data_ptr<uint8_t>();
  const AbsmaxSource absmax{w.absmax_codes, w.nested_quant_map, w.nested_absmax, w.offset};
  at::parallel_for(0, blocks, 1 << 12, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const float scale = absmax(block);
      uint8_t* t = out + block * 32;
      for (int k = 0; k < 16; ++k) {
        const uint16_t bits = bf16::from_float(w.quant_map[k] * scale);
        t[k] = static_cast<uint8_t>(bits & 0xff);
        t[16 + k] = static_cast<uint8_t>(bits >> 8);
      }
    }
  });
  return tables;
}

void nf4_rows_product(const Nf4RowsWeight& w, int64_t in, int64_t out, const RowsInput& x,
                      RowsCode code, float* y, int64_t begin, int64_t end) {
  Operands op{w.packed,
              {w.absmax_codes, w.nested_quant_map, w.nested_absmax, w.offset},
              w.quant_map,
              w.bf16_values,
              w.bf16_values ? w.block_tables : nullptr,
              nullptr,
              nullptr,
              x.rows,
              in,
              out,
              y};
  if (code == RowsCode::kAvx2) {
    if (w.bf16_values && x.f32_nf4 != nullptr) {
      op.x = x.f32_nf4;
      x.rows == 1 ? product_one_row_bf16_avx2(op, begin, end)
                  : product_rows_bf16_avx2(op, begin, end);
      return;
    }
    op.x = x.f32;
    x.rows == 1 ? product_one_row_avx2(op, begin, end) : product_rows_avx2(op, begin, end);
    return;
  }
  const bool bf16 = code == RowsCode::kAvx512Bf16;
  if (bf16) {
    op.x_bf16 = x.bf16_pairs;
  } else {
    op.x = x.f32_pairs;
  }
  if (x.rows == 1) {
    bf16 ? product_one_row_bf16(op, begin, end) : product_one_row_avx512(op, begin, end);
    return;
  }
  // eight rows at a time, each group's sums in registers
  for (int64_t first = 0; first < x.rows; first += 8) {
    Operands group = op;
    group.rows = std::min<int64_t>(8, x.rows - first);
    if (bf16) {
      group.x_bf16 = op.x_bf16 + first * in;
    } else {
      group.x = op.x + first * in;
    }
    group.y = op.y + first * out;
    (bf16 ? rows_product<Bf16Rows>(group.rows) : rows_product<Avx512Rows>(group.rows))(group, begin,
                                                                                       end);
  }
}

std::vector<std::string> nf4_fused_matmul_cpu_isas() {
  std::vector<std::string> names;
  for (const RowsCode code : rows_codes_here()) names.emplace_back(rows_code_name(code));
  return names;
}

torch::Tensor nf4_fused_matmul(const torch::Tensor& x, const Nf4Weight& w, const char* isa) {
  TORCH_CHECK(nf4_fused_matmul_applies(x, w, std::numeric_limits<int64_t>::max()),
              "nf4_fused_matmul: an unsupported product (x ", x.sizes(), " ", x.scalar_type(),
              " on ", x.device(), ", weight ", w.shape, " on ", w.packed.device(), ")");
  const int64_t in = w.shape[1], out = w.shape[0], rows = x.numel() / in;
  torch::Tensor y = torch::empty({rows, out}, x.options().dtype(torch::kFloat32));
#ifdef GEMMA_WITH_CUDA
  if (x.is_cuda()) product_cuda(x.reshape({rows, in}).to(torch::kFloat32).contiguous(), w, y);
#endif
  if (x.device().is_cpu()) {
    const std::vector<RowsCode> here = rows_codes_here();
    // the best code here; the bf16 one only for bf16 inputs (it multiplies bf16 pairs)
    RowsCode code = here.back();
    if (code == RowsCode::kAvx512Bf16 && x.scalar_type() != torch::kBFloat16)
      code = RowsCode::kAvx512;
    if (isa != nullptr) {
      const auto named = std::find_if(here.begin(), here.end(), [&](RowsCode c) {
        return std::string(rows_code_name(c)) == isa;
      });
      TORCH_CHECK(named != here.end(), "nf4_fused_matmul: this CPU does not run the ", isa,
                  " code");
      code = *named;
      TORCH_CHECK(code != RowsCode::kAvx512Bf16 || x.scalar_type() == torch::kBFloat16,
                  "nf4_fused_matmul: the avx512_bf16 code takes bf16 inputs");
    }
    product_cpu(x_for(code, x.reshape({rows, in})), w, y, code);
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return y.to(x.scalar_type()).view(shape);
}

}  // namespace gemma
