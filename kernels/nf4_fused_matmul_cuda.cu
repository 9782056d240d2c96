// The fused NF4 product on CUDA: y = x · Wᵀ for a few rows of x, each weight dequantized in
// registers and used at once, as nf4_fused_matmul.cpp does on the CPU. One warp per output
// feature: each lane reads 4 bytes (8 codes, all in one 64-element block) per step, so a warp
// reads 128 contiguous bytes of the weight's row at a time; the block's absmax is rebuilt from its
// 8-bit code as dequantize_nf4_absmax does (no FMA, so it rounds as the reference), and every row
// of x shares the dequantized values. The lanes' float32 sums meet in a butterfly reduction.
#include <cuda_runtime.h>

#include "kernels/nf4_cuda_kernels.h"

namespace gemma::cuda {

namespace {

constexpr int kBlock = 64;
constexpr int kNestedBlock = 256;
constexpr int kWarpsPerBlock = 8;

__device__ float round_to_bf16_value(float f) {
  unsigned int bits = __float_as_uint(f);
  if (f != f) return __uint_as_float(bits | 0x00400000u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return __uint_as_float(bits & 0xffff0000u);
}

template <int kRows>
__global__ void fused_matmul_kernel(Nf4FusedOperands op) {
  const int lane = threadIdx.x & 31;
  const long long o = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (o >= op.out) return;
  const long long bytes_per_row = op.in / 2;
  const unsigned char* row = op.packed + o * bytes_per_row;
  const long long first_block = o * (op.in / kBlock);
  float acc[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) acc[m] = 0.0f;
  for (long long b = 4LL * lane; b < bytes_per_row; b += 128) {
    const unsigned int word = *reinterpret_cast<const unsigned int*>(row + b);
    const long long block = first_block + (2 * b) / kBlock;
    const float absmax = __fadd_rn(
        __fmul_rn(op.nested_map[op.absmax_codes[block]], op.nested_absmax[block / kNestedBlock]),
        op.offset);
    float w[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const unsigned int byte = (word >> (8 * j)) & 0xffu;
      w[2 * j] = __fmul_rn(op.lut[byte >> 4], absmax);
      w[2 * j + 1] = __fmul_rn(op.lut[byte & 0xfu], absmax);
    }
    if (op.bf16_weight) {
#pragma unroll
      for (int j = 0; j < 8; ++j) w[j] = round_to_bf16_value(w[j]);
    }
    const long long k = 2 * b;  // the first of this step's 8 elements
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      const float* xm = op.x + m * op.in + k;
      const float4 x0 = *reinterpret_cast<const float4*>(xm);
      const float4 x1 = *reinterpret_cast<const float4*>(xm + 4);
      acc[m] = fmaf(w[0], x0.x, acc[m]);
      acc[m] = fmaf(w[1], x0.y, acc[m]);
      acc[m] = fmaf(w[2], x0.z, acc[m]);
      acc[m] = fmaf(w[3], x0.w, acc[m]);
      acc[m] = fmaf(w[4], x1.x, acc[m]);
      acc[m] = fmaf(w[5], x1.y, acc[m]);
      acc[m] = fmaf(w[6], x1.z, acc[m]);
      acc[m] = fmaf(w[7], x1.w, acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    float s = acc[m];
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) op.y[m * op.out + o] = s;
  }
}

template <int kRows>
void launch_rows(const Nf4FusedOperands& op, cudaStream_t stream) {
  const long long grid = (op.out + kWarpsPerBlock - 1) / kWarpsPerBlock;
  fused_matmul_kernel<kRows><<<static_cast<unsigned>(grid), 32 * kWarpsPerBlock, 0, stream>>>(op);
}

}  // namespace

bool launch_nf4_fused_matmul(const Nf4FusedOperands& op, void* stream) {
  if (op.in % kBlock != 0) return false;
  const auto s = static_cast<cudaStream_t>(stream);
  // eight rows at a time: each lane keeps one float32 sum per row in registers
  for (long long first = 0; first < op.rows && op.out > 0; first += 8) {
    Nf4FusedOperands chunk = op;
    chunk.x = op.x + first * op.in;
    chunk.y = op.y + first * op.out;
    chunk.rows = op.rows - first < 8 ? op.rows - first : 8;
    switch (chunk.rows) {
      case 1:
        launch_rows<1>(chunk, s);
        break;
      case 2:
        launch_rows<2>(chunk, s);
        break;
      case 3:
        launch_rows<3>(chunk, s);
        break;
      case 4:
        launch_rows<4>(chunk, s);
        break;
      case 5:
        launch_rows<5>(chunk, s);
        break;
      case 6:
        launch_rows<6>(chunk, s);
        break;
      case 7:
        launch_rows<7>(chunk, s);
        break;
      default:
        launch_rows<8>(chunk, s);
        break;
    }
  }
  return true;
}

}  // namespace gemma::cuda
