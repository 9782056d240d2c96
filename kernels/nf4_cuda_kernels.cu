// NF4 CUDA kernels: one thread block per 64-element NF4 block for quantization (a warp-level
// absmax, then each thread picks the nearest code of two elements and writes one byte), one thread
// per byte for dequantization. Same float32 operations as the reference, so results agree with it.
#include <cuda_runtime.h>

#include "kernels/nf4_cuda_kernels.h"

namespace gemma::cuda {

namespace {

constexpr int kBlock = 64;

__device__ unsigned char nearest(float s, const float* table) {
  // clamp as torch does (NaN stays NaN and then maps to code 0, as argmin over NaNs)
  if (!(s != s)) s = fminf(fmaxf(s, -1.0f), 1.0f);
  unsigned char best = 0;
  float best_d = fabsf(s - table[0]);
  for (int i = 1; i < 16; ++i) {
    const float d = fabsf(s - table[i]);
    if (d < best_d) {
      best_d = d;
      best = static_cast<unsigned char>(i);
    }
  }
  return best;
}

__global__ void quantize_kernel(const float* x, long long n, const float* table, float* absmax,
                                unsigned char* packed) {
  __shared__ float shared_max[kBlock / 2];
  __shared__ float s_table[16];
  const long long block = blockIdx.x;
  const long long first = block * kBlock;
  const int t = threadIdx.x;  // 32 threads, two elements each
  if (t < 16) s_table[t] = table[t];
  const long long i0 = first + 2 * t, i1 = i0 + 1;
  const float a = i0 < n ? x[i0] : 0.0f, b = i1 < n ? x[i1] : 0.0f;
  const float fa = fabsf(a), fb = fabsf(b);
  float m = (fa != fa || fb != fb) ? __int_as_float(0x7fc00000) : fmaxf(fa, fb);
  shared_max[t] = m;
  __syncthreads();
  for (int stride = 16; stride > 0; stride >>= 1) {
    if (t < stride) {
      const float o = shared_max[t + stride], s = shared_max[t];
      shared_max[t] = (s != s || o != o) ? __int_as_float(0x7fc00000) : fmaxf(s, o);
    }
    __syncthreads();
  }
  const float amax = shared_max[0];
  if (t == 0) absmax[block] = amax;
  const float inv = 1.0f / amax;
  if (i0 < n) {
    const unsigned char hi = nearest(a * inv, s_table);
    const unsigned char lo = i1 < n ? nearest(b * inv, s_table) : nearest(0.0f, s_table);
    packed[i0 >> 1] = static_cast<unsigned char>((hi << 4) | lo);
  }
}

__device__ unsigned short to_bf16(float f) {
  unsigned int bits = __float_as_uint(f);
  if (f != f) return static_cast<unsigned short>((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<unsigned short>(bits >> 16);
}

__global__ void dequantize_kernel(const unsigned char* packed, const float* absmax,
                                  const float* lut, long long n, float* out_f32,
                                  unsigned short* out_bf16) {
  const long long j = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;  // byte index
  const long long e = 2 * j;
  if (e >= n) return;
  const unsigned char byte = packed[j];
  const float scale = absmax[e / kBlock];  // both elements of a byte share a block (64 is even)
  const float v0 = lut[byte >> 4] * scale, v1 = lut[byte & 0xF] * scale;
  if (out_f32 != nullptr) {
    out_f32[e] = v0;
    if (e + 1 < n) out_f32[e + 1] = v1;
  } else {
    out_bf16[e] = to_bf16(v0);
    if (e + 1 < n) out_bf16[e + 1] = to_bf16(v1);
  }
}

}  // namespace

void launch_nf4_quantize(const float* x, int64_t n, const float* table, float* absmax,
                         uint8_t* packed, void* stream) {
  const long long blocks = (n + kBlock - 1) / kBlock;
  if (blocks == 0) return;
  quantize_kernel<<<static_cast<unsigned>(blocks), kBlock / 2, 0,
                    static_cast<cudaStream_t>(stream)>>>(x, n, table, absmax, packed);
}

void launch_nf4_dequantize(const uint8_t* packed, const float* absmax, const float* lut, int64_t n,
                           float* out_f32, uint16_t* out_bf16, void* stream) {
  const long long bytes = (n + 1) / 2;
  if (bytes == 0) return;
  const int threads = 256;
  dequantize_kernel<<<static_cast<unsigned>((bytes + threads - 1) / threads), threads, 0,
                      static_cast<cudaStream_t>(stream)>>>(packed, absmax, lut, n, out_f32,
                                                           out_bf16);
}

}  // namespace gemma::cuda
