// The vectorized, multi-threaded CPU NF4 path (AVX-512 or AVX2, chosen at run time, with a scalar
// fallback). Every step does what the reference does, in the same float32 operations, so the
// results agree bit for bit: scale = x · (1/max(absmax, 1e-38)) clamped to [-1, 1] (a division for
// a partial last block), code = the number of table midpoints below it, and the float32 product
// table · absmax rounded to the output dtype.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernels/nf4.h"
#include "kernels/nf4_cpu_simd.h"

namespace gemma {

namespace {

using nf4_simd::AbsmaxSource;
using nf4_simd::Isa;
using nf4_simd::kIsa;

// ---- quantization: one block of up to 64 float32 values -> codes -------------------------------

// The number of the 15 midpoints strictly below s: the nearest code, ties to the lower one.
uint8_t nearest_scalar(float s, const float* bounds) {
  uint8_t code = 0;
  for (int i = 0; i < 15; ++i) code += s > bounds[i];
  return code;
}

float clamp_like_torch(float v) { return std::isnan(v) ? v : std::fmin(std::fmax(v, -1.0f), 1.0f); }

// Full blocks multiply by the reciprocal; the partial last block divides (as the reference does).
float scaled_value(float x, float scale, bool divide) {
  return clamp_like_torch(divide ? x / scale : x * scale);
}

void codes_scalar(const float* x, int64_t n, float scale, bool divide, const float* bounds,
                  uint8_t* codes) {
  for (int64_t i = 0; i < n; ++i)
    codes[i] = nearest_scalar(scaled_value(x[i], scale, divide), bounds);
}

__attribute__((target("avx512f,avx512bw"))) void codes_avx512(const float* x, int64_t n,
                                                              float scale, bool divide,
                                                              const float* bounds, uint8_t* codes) {
  int64_t i = 0;
  if (!divide) {
    const __m512 vscale = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-1.0f),
                 hi = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
      const __m512 s =
          _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vscale), lo), hi);
      __m512i code = _mm512_setzero_si512();
      for (int c = 0; c < 15; ++c) {
        const __mmask16 above = _mm512_cmp_ps_mask(s, _mm512_set1_ps(bounds[c]), _CMP_GT_OQ);
        code = _mm512_mask_add_epi32(code, above, code, _mm512_set1_epi32(1));
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(code));
    }
  }
  codes_scalar(x + i, n - i, scale, divide, bounds, codes + i);
}

__attribute__((target("avx2,fma"))) void codes_avx2(const float* x, int64_t n, float scale,
                                                    bool divide, const float* bounds,
                                                    uint8_t* codes) {
  int64_t i = 0;
  if (!divide) {
    const __m256 vscale = _mm256_set1_ps(scale), lo = _mm256_set1_ps(-1.0f),
                 hi = _mm256_set1_ps(1.0f);
    alignas(32) int32_t out[8];
    for (; i + 8 <= n; i += 8) {
      const __m256 s =
          _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vscale), lo), hi);
      __m256i code = _mm256_setzero_si256();
      for (int c = 0; c < 15; ++c) {
        // a true comparison is all ones (-1): subtracting it counts
        code = _mm256_sub_epi32(
            code, _mm256_castps_si256(_mm256_cmp_ps(s, _mm256_set1_ps(bounds[c]), _CMP_GT_OQ)));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(out), code);
      for (int k = 0; k < 8; ++k) codes[i + k] = static_cast<uint8_t>(out[k]);
    }
  }
  codes_scalar(x + i, n - i, scale, divide, bounds, codes + i);
}

void block_codes(const float* x, int64_t n, float scale, bool divide, const float* bounds,
                 uint8_t* codes) {
  switch (kIsa) {
    case Isa::kAvx512:
      return codes_avx512(x, n, scale, divide, bounds, codes);
    case Isa::kAvx2:
      return codes_avx2(x, n, scale, divide, bounds, codes);
    default:
      return codes_scalar(x, n, scale, divide, bounds, codes);
  }
}

// ---- dequantization: one block of codes -> output values ----------------------------------------

template <typename Out>
void dequant_scalar(const uint8_t* packed, int64_t first, int64_t n, float absmax, const float* lut,
                    Out* out) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = first + i;
    const uint8_t byte = packed[e >> 1];
    const float v = lut[(e & 1) ? (byte & 0xF) : (byte >> 4)] * absmax;
    if constexpr (std::is_same_v<Out, float>) {
      out[i] = v;
    } else {
      out[i] = bf16::from_float(v);
    }
  }
}

// 16 codes from 8 bytes, in element order (high nibble first).
__attribute__((target("avx512f,avx512bw"))) inline __m512i unpack16(const uint8_t* bytes) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes));
  const __m128i low = _mm_and_si128(b, _mm_set1_epi8(0x0F));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
  return _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(high, low));
}

__attribute__((target("avx512f,avx512bw"))) inline __m256i round_to_bf16_avx512(__m512 v) {
  // Round to nearest even on the bit pattern (finite values; NaN cannot arise from finite inputs).
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

template <typename Out>
__attribute__((target("avx512f,avx512bw"))) void dequant_avx512(const uint8_t* packed,
                                                                int64_t first, int64_t n,
                                                                float absmax, const float* lut,
                                                                Out* out) {
  // `first` is a multiple of the block size (even), so bytes line up with elements.
  const __m512 table = _mm512_loadu_ps(lut);
  const __m512 scale = _mm512_set1_ps(absmax);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v =
        _mm512_mul_ps(_mm512_permutexvar_ps(unpack16(packed + ((first + i) >> 1)), table), scale);
    if constexpr (std::is_same_v<Out, float>) {
      _mm512_storeu_ps(out + i, v);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), round_to_bf16_avx512(v));
    }
  }
  dequant_scalar(packed, first + i, n - i, absmax, lut, out + i);
}

// The table path (AVX2 and scalar): each element is values[code], where `values` holds the 16
// products table · absmax already rounded as the output rounds them (block_values), so an element
// costs a lookup and a store. bf16 output takes the upper half of the bf16-rounded float32.
template <bool kBf16Out>
__attribute__((target("avx2,fma"))) void dequant_full_block_avx2(const uint8_t* bytes,
                                                                 const float* values, void* out) {
  const __m256 lo = _mm256_loadu_ps(values), hi = _mm256_loadu_ps(values + 8);
  if constexpr (!kBf16Out) {
    auto* dst = static_cast<float*>(out);
    for (int64_t g = 0; g < 8; ++g)
      _mm256_storeu_ps(dst + 8 * g, nf4_simd::lookup8(bytes + 4 * g, lo, hi));
  } else {
    auto* dst = static_cast<uint16_t*>(out);
    for (int64_t g = 0; g < 8; g += 2) {
      const __m256i a =
          _mm256_srli_epi32(_mm256_castps_si256(nf4_simd::lookup8(bytes + 4 * g, lo, hi)), 16);
      const __m256i b =
          _mm256_srli_epi32(_mm256_castps_si256(nf4_simd::lookup8(bytes + 4 * g + 4, lo, hi)), 16);
      // packus interleaves the two per 128-bit lane; the 64-bit permute restores element order
      const __m256i both = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8 * g), both);
    }
  }
}

template <bool kBf16Out>
void dequant_table_scalar(const uint8_t* packed, int64_t first, int64_t n, const float* values,
                          void* out) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = first + i;
    const uint8_t byte = packed[e >> 1];
    const float v = values[(e & 1) ? (byte & 0xF) : (byte >> 4)];
    if constexpr (kBf16Out) {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      static_cast<uint16_t*>(out)[i] = static_cast<uint16_t>(bits >> 16);
    } else {
      static_cast<float*>(out)[i] = v;
    }
  }
}

// One block of `n` elements starting at element `first` (a multiple of 64), through the table
// path: AVX2 for a full block, scalar otherwise.
template <bool kBf16Out>
void dequant_block_table(const uint8_t* packed, int64_t first, int64_t n, const float* values,
                         void* out) {
  if (kIsa != Isa::kScalar && n == kNf4BlockSize) {
    dequant_full_block_avx2<kBf16Out>(packed + (first >> 1), values, out);
  } else {
    dequant_table_scalar<kBf16Out>(packed, first, n, values, out);
  }
}

constexpr int64_t kBlocksPerTask = 256;

}  // namespace

const char* nf4_cpu_isa() {
  switch (kIsa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

Nf4Weight quantize_nf4_cpu(const torch::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu() && weight.is_floating_point(),
              "quantize_nf4_cpu: a CPU float tensor");
  Nf4Weight w;
  w.shape = weight.sizes().vec();
  w.dtype = weight.scalar_type();
  w.quant_map = nf4_code_table();
  w.nested_quant_map = dynamic_map(true);
  const torch::Tensor x = weight.reshape(-1).to(torch::kFloat32).contiguous();
  const int64_t n = x.numel(), bs = w.blocksize, blocks = (n + bs - 1) / bs;
  torch::Tensor absmax = torch::empty({blocks}, torch::kFloat32);
  w.packed = torch::empty({(n + 1) / 2, 1}, torch::kUInt8);
  const float* src = x.data_ptr<float>();
  float* amax = absmax.data_ptr<float>();
  uint8_t* packed = w.packed.data_ptr<uint8_t>();
  // Midpoints between neighbouring table entries, computed as the reference computes them.
  const torch::Tensor bounds_t =
      ((w.quant_map.narrow(0, 0, 15) + w.quant_map.narrow(0, 1, 15)) / 2).contiguous();
  const float* bounds = bounds_t.data_ptr<float>();
  at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    uint8_t codes[kNf4BlockSize + 1];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * bs, len = std::min(bs, n - first);
      float m = 0.0f;  // max |x|; NaN if any element is NaN (torch's max propagates it)
      for (int64_t i = 0; i < len; ++i) {
        const float v = std::fabs(src[first + i]);
        if (std::isnan(v)) {
          m = v;
          break;
        }
        m = v > m ? v : m;
      }
      // Scaling uses max(absmax, 1e-38); a partial last block also stores that clamped value.
      const bool partial = len < bs;
      const float clamped = std::isnan(m) ? m : std::fmax(m, 1e-38f);
      amax[b] = partial ? clamped : m;
      block_codes(src + first, len, partial ? clamped : 1.0f / clamped, partial, bounds, codes);
      if (len % 2) codes[len] = nearest_scalar(0.0f, bounds);  // the padding element of an odd tail
      for (int64_t j = 0; j < (len + 1) / 2; ++j)
        packed[(first >> 1) + j] = static_cast<uint8_t>((codes[2 * j] << 4) | codes[2 * j + 1]);
    }
  });
  double_quantize_absmax(absmax, w);
  return w;
}

torch::Tensor dequantize_nf4_cpu(const Nf4Weight& w) { return dequantize_nf4_cpu(w, w.dtype); }

torch::Tensor dequantize_nf4_cpu(const Nf4Weight& w, torch::ScalarType out_dtype) {
  const bool bf16 = w.dtype == torch::kBFloat16;
  const bool widen = bf16 && out_dtype == torch::kFloat32;
  torch::Tensor out = torch::empty(w.shape, bf16 && !widen ? torch::kBFloat16 : torch::kFloat32);
  dequantize_nf4_cpu_into(w, out);
  if (!widen && out.scalar_type() != w.dtype) out = out.to(w.dtype);  // e.g. f16
  return out.scalar_type() == out_dtype ? out : out.to(out_dtype);
}

void dequantize_nf4_cpu_into(const Nf4Weight& w, const torch::Tensor& out) {
  TORCH_CHECK(w.packed.device().is_cpu(), "dequantize_nf4_cpu: CPU tensors");
  const bool bf16 = w.dtype == torch::kBFloat16;
  const bool bf16_out = out.scalar_type() == torch::kBFloat16;
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous() && out.numel() == w.numel() &&
                  (out.scalar_type() == torch::kFloat32 || (bf16 && bf16_out)),
              "dequantize_nf4_cpu_into: a contiguous CPU float32 tensor (or bf16 for a bf16 "
              "weight) of the weight's size");
  // bf16 values widened to f32 (what bitsandbytes computes in f32 from a bf16 weight) come
  // straight out of the bf16-rounded table, without a bf16 copy of the whole weight.
  const bool widen = bf16 && !bf16_out;
  const torch::Tensor codes = w.absmax_codes.contiguous();
  const torch::Tensor map = w.nested_quant_map.to(torch::kFloat32).contiguous();
  const torch::Tensor nested = w.nested_absmax.to(torch::kFloat32).contiguous();
  const AbsmaxSource absmax{codes.data_ptr<uint8_t>(), map.data_ptr<float>(),
                            nested.data_ptr<float>(), w.offset};
  const int64_t n = w.numel(), bs = w.blocksize, blocks = codes.numel();
  TORCH_CHECK(bs == kNf4BlockSize && blocks == (n + bs - 1) / bs,
              "dequantize_nf4_cpu: blocks of 64 and one absmax code per block");
  const torch::Tensor lut_t = w.quant_map.to(torch::kFloat32).contiguous();
  const float* lut = lut_t.data_ptr<float>();
  const uint8_t* packed = w.packed.data_ptr<uint8_t>();
  auto* out_bytes = static_cast<char*>(out.data_ptr());
  const int64_t out_size = bf16_out ? 2 : 4;
  at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    alignas(32) float values[16];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * bs, len = std::min(bs, n - first);
      const float a = absmax(b);
      void* dst = out_bytes + first * out_size;
      if (kIsa == Isa::kAvx512 && !widen) {
        // the AVX-512 path multiplies and rounds in registers
        if (bf16) {
          dequant_avx512(packed, first, len, a, lut, static_cast<uint16_t*>(dst));
        } else {
          dequant_avx512(packed, first, len, a, lut, static_cast<float*>(dst));
        }
        continue;
      }
      nf4_simd::block_values(lut, a, bf16, values);
      if (bf16_out) {
        dequant_block_table<true>(packed, first, len, values, dst);
      } else {
        dequant_block_table<false>(packed, first, len, values, dst);
      }
    }
  });
}

}  // namespace gemma
