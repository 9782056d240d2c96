// NF4 CUDA kernels: one thread block per 64-element NF4 block for quantization (a warp-level
// absmax, then each thread picks the nearest code of two elements and writes one byte), one thread
// per byte for dequantization. Same float32 operations as the reference, so results agree with it.
#include <cuda_runtime.h>

#include "kernels/nf4_cuda_kernels.h"

namespace gemma::cuda {

namespace {

constexpr int kBlock = 64;

// The number of midpoints strictly below s: the nearest code, ties to the lower one.
__device__ unsigned char nearest(float s, const float* bounds) {
  unsigned char code = 0;
  for (int i = 0; i < 15; ++i) code += s > bounds[i];
  return code;
}

__device__ float clamp_like_torch(float v) { return v != v ? v : fminf(fmaxf(v, -1.0f), 1.0f); }

__global__ void quantize_kernel(const float* x, long long n, const float* bounds, float* absmax,
                                unsigned char* packed) {
  __shared__ float shared_max[kBlock / 2];
  __shared__ float s_bounds[15];
  const long long block = blockIdx.x;
  const long long first = block * kBlock;
  const int t = threadIdx.x;  // 32 threads, two elements each
  if (t < 15) s_bounds[t] = bounds[t];
  const long long i0 = first + 2 * t, i1 = i0 + 1;
  const float a = i0 < n ? x[i0] : 0.0f, b = i1 < n ? x[i1] : 0.0f;
  const float fa = fabsf(a), fb = fabsf(b);
  shared_max[t] = (fa != fa || fb != fb) ? __int_as_float(0x7fc00000) : fmaxf(fa, fb);
  __syncthreads();
  for (int stride = 16; stride > 0; stride >>= 1) {
    if (t < stride) {
      const float o = shared_max[t + stride], s = shared_max[t];
      shared_max[t] = (s != s || o != o) ? __int_as_float(0x7fc00000) : fmaxf(s, o);
    }
    __syncthreads();
  }
  const float m = shared_max[0];
  // As the reference: scale by 1/max(absmax, 1e-38); a partial last block divides and stores the
  // clamped value.
  const bool partial = first + kBlock > n;
  const float clamped = m != m ? m : fmaxf(m, 1e-38f);
  if (t == 0) absmax[block] = partial ? clamped : m;
  const float inv = 1.0f / clamped;
  if (i0 < n) {
    const float sa = clamp_like_torch(partial ? a / clamped : a * inv);
    const unsigned char hi = nearest(sa, s_bounds);
    const unsigned char lo =
        i1 < n ? nearest(clamp_like_torch(partial ? b / clamped : b * inv), s_bounds)
               : nearest(0.0f, s_bounds);
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

void launch_nf4_quantize(const float* x, int64_t n, const float* bounds, float* absmax,
                         uint8_t* packed, void* stream) {
  const long long blocks = (n + kBlock - 1) / kBlock;
  if (blocks == 0) return;
  quantize_kernel<<<static_cast<unsigned>(blocks), kBlock / 2, 0,
                    static_cast<cudaStream_t>(stream)>>>(x, n, bounds, absmax, packed);
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
