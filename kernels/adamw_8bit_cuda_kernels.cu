// 8-bit blockwise AdamW on CUDA: one thread block per 256-element state block, one element per
// thread. The arithmetic is bitsandbytes' CUDA kernel's (float32 with __powf/__fdividef, m and v
// zeroed where the gradient is not finite, decay after the step, exact-nearest requantization with
// the sign fix on state1); optim/adamw_8bit_cuda.cpp holds the LibTorch reference it is tested
// against.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <stdexcept>
#include <string>

#include "kernels/adamw_8bit_cuda_kernels.h"

namespace gemma::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;

__device__ float load(const float* p, long long i) { return p[i]; }
__device__ float load(const __nv_bfloat16* p, long long i) { return __bfloat162float(p[i]); }
__device__ float load(const __half* p, long long i) { return __half2float(p[i]); }
__device__ float round_to(float v, const float*) { return v; }
__device__ float round_to(float v, const __nv_bfloat16*) {
  return __bfloat162float(__float2bfloat16(v));
}
__device__ float round_to(float v, const __half*) { return __half2float(__float2half(v)); }
__device__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ void store(__nv_bfloat16* p, long long i, float v) { p[i] = __float2bfloat16(v); }
__device__ void store(__half* p, long long i, float v) { p[i] = __float2half(v); }

// The nearest entry of an ascending 256-entry map: seven halving steps from index 127 leave the
// neighbours of the final index as the bracket, then the midpoint decides (a tie keeps the index
// the search ended on). NaN compares false throughout and ends at index 0.
__device__ unsigned char nearest_code(const float* map, float x, bool is_signed) {
  int pivot = 127, lower_index = 0, upper_index = 255;
  float lower = is_signed ? -1.0f : 0.0f, upper = 1.0f;
  for (int step = 64; step > 0; step >>= 1) {
    const float value = map[pivot];
    if (x > value) {
      lower_index = pivot;
      lower = value;
      pivot += step;
    } else {
      upper_index = pivot;
      upper = value;
      pivot -= step;
    }
  }
  const float value = map[pivot];
  if (x > value) return x > (upper + value) * 0.5f ? upper_index : pivot;
  return x < (lower + value) * 0.5f ? lower_index : pivot;
}

// Block-wide max of two values; every thread gets the results.
__device__ void block_max2(float* a, float* b) {
  __shared__ float warp_a[kWarps], warp_b[kWarps];
  float x = *a, y = *b;
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, offset));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_a[warp] = x;
    warp_b[warp] = y;
  }
  __syncthreads();
  x = warp_a[0];
  y = warp_b[0];
  for (int w = 1; w < kWarps; ++w) {
    x = fmaxf(x, warp_a[w]);
    y = fmaxf(y, warp_b[w]);
  }
  *a = x;
  *b = y;
}

template <typename T>
__global__ void adamw_8bit_kernel(T* param, const T* grad, unsigned char* state1,
                                  unsigned char* state2, float* absmax1, float* absmax2,
                                  const float* map1, const float* map2, long long n,
                                  AdamW8bitHyper h) {
  __shared__ float code1[kBlock], code2[kBlock];
  const int t = threadIdx.x;
  code1[t] = map1[t];
  code2[t] = map2[t];
  const long long block = blockIdx.x;
  const long long i = block * kBlock + t;
  const bool valid = i < n;
  // Lanes past the end of a ragged last block load g = 0 and codes 128 / 0, and take part in
  // the block's max, as in bitsandbytes.
  const float g = valid ? load(grad, i) : 0.0f;
  const unsigned char c1 = valid ? state1[i] : 128;
  const unsigned char c2 = valid ? state2[i] : 0;
  const float old_max1 = absmax1[block], old_max2 = absmax2[block];
  __syncthreads();

  const bool finite = !isnan(g) && !isinf(g);
  float m = 0.0f, v = 0.0f;
  if (finite) {
    v = code2[c2] * old_max2;
    v = v * h.beta2 + (1.0f - h.beta2) * g * g;
    m = code1[c1] * old_max1;
    m = m * h.beta1 + (1.0f - h.beta1) * g;
  }
  float max1 = fmaxf(-FLT_MAX, fabsf(m)), max2 = fmaxf(-FLT_MAX, fabsf(v));
  block_max2(&max1, &max2);
  if (t == 0) {
    absmax1[block] = max1;
    absmax2[block] = max2;
  }

  if (valid && finite) {
    const float correction1 = 1.0f - __powf(h.beta1, static_cast<float>(h.step));
    const float correction2 = sqrtf(1.0f - __powf(h.beta2, static_cast<float>(h.step)));
    const float step_size = __fdividef(-h.lr * correction2, correction1);
    float p = load(param, i);
    p = round_to(p + step_size * __fdividef(m, sqrtf(v) + correction2 * h.eps), param);
    if (h.weight_decay > 0.0f) p = p * (1.0f - h.lr * h.weight_decay);
    store(param, i, p);
  }

  unsigned char q1 = nearest_code(code1, __fdividef(m, max1), true);
  // The first moment keeps its sign: step one code toward it when the nearest code has the other.
  if (signbit(code1[q1]) != signbit(m)) q1 += m > 0.0f ? 1 : -1;
  const unsigned char q2 = nearest_code(code2, __fdividef(v, max2), false);
  if (valid) {
    state1[i] = q1;
    state2[i] = q2;
  }
}

template <typename T>
void launch(void* param, const void* grad, uint8_t* state1, uint8_t* state2, float* absmax1,
            float* absmax2, const float* map1, const float* map2, int64_t n,
            const AdamW8bitHyper& hyper, cudaStream_t stream) {
  const long long blocks = (n + kBlock - 1) / kBlock;
  adamw_8bit_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      static_cast<T*>(param), static_cast<const T*>(grad), state1, state2, absmax1, absmax2, map1,
      map2, n, hyper);
}

}  // namespace

void launch_adamw_8bit_blockwise(void* param, const void* grad, ParamType type, uint8_t* state1,
                                 uint8_t* state2, float* absmax1, float* absmax2, const float* map1,
                                 const float* map2, int64_t n, const AdamW8bitHyper& hyper,
                                 void* stream) {
  if (n == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case ParamType::kFloat32:
      launch<float>(param, grad, state1, state2, absmax1, absmax2, map1, map2, n, hyper, s);
      break;
    case ParamType::kBFloat16:
      launch<__nv_bfloat16>(param, grad, state1, state2, absmax1, absmax2, map1, map2, n, hyper, s);
      break;
    case ParamType::kFloat16:
      launch<__half>(param, grad, state1, state2, absmax1, absmax2, map1, map2, n, hyper, s);
      break;
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("AdamW8bit CUDA kernel: ") + cudaGetErrorString(status));
}

}  // namespace gemma::cuda
