// The fused NF4 product against dequantize-then-matmul in float32, on random weights and inputs of
// ragged shapes: equal to float32 rounding (an error bound from |x|·|W|ᵀ), the same whatever the
// thread count, and used by nf4_linear only where it applies.
#include "kernels/nf4_fused_matmul.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "kernels/nf4_matmul.h"

namespace gemma {
namespace {

// |ours - exact| <= rel · |exact| + abs_scale · (|x| · |W|ᵀ), element by element.
void expect_close(const torch::Tensor& ours, const torch::Tensor& x, const torch::Tensor& w,
                  double rel, double abs_scale) {
  const torch::Tensor xf = x.to(torch::kFloat64), wf = w.to(torch::kFloat64);
  const torch::Tensor exact = torch::matmul(xf, wf.t());
  const torch::Tensor bound = torch::matmul(xf.abs(), wf.abs().t());
  const torch::Tensor err = (ours.to(torch::kFloat64) - exact).abs();
  const torch::Tensor allowed = rel * exact.abs() + abs_scale * bound + 1e-30;
  EXPECT_TRUE((err <= allowed).all().item<bool>())
      << "worst error / allowed: " << (err / allowed).max().item<double>();
}

// Every product of the ragged shapes against the float64 product of the dequantized weight, on
// `device` with the CPU code `isa` (null on CUDA).
void check_ragged_products(const torch::Device& device, const char* isa) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 64},    {3, 128},    {67, 192},
                                                           {130, 640}, {257, 1536}, {33, 64 * 257}};
  for (const auto& [out, in] : shapes) {
    for (const auto wdtype : {torch::kFloat32, torch::kBFloat16}) {
      Nf4Weight q = quantize_nf4((torch::randn({out, in}, gen) * 0.05).to(wdtype));
      const torch::Tensor dense = dequantize_nf4_as(q, torch::kFloat32);
      // the bf16 code sees the weight as dequantizing it to bf16 gives it
      const torch::Tensor dense_bf16 = dequantize_nf4_as(q, torch::kBFloat16).to(torch::kFloat32);
      const bool bf16_code = isa != nullptr && std::string(isa) == "avx512_bf16";
      q.to(device);
      for (const auto xdtype : {torch::kFloat32, torch::kBFloat16}) {
        // the bf16 code multiplies bf16 pairs: bf16 inputs only
        if (bf16_code && xdtype != torch::kBFloat16) continue;
        for (const int64_t rows :
             {int64_t{1}, int64_t{2}, int64_t{5}, kNf4FusedMaxRows, int64_t{37}}) {
          SCOPED_TRACE(std::to_string(out) + "x" + std::to_string(in) + " w " +
                       c10::toString(wdtype) + " x " + c10::toString(xdtype) + " rows " +
                       std::to_string(rows) + " on " + device.str() + " " + (isa ? isa : ""));
          const torch::Tensor x = (torch::randn({rows, in}, gen) + 0.3).to(xdtype);
          const torch::Tensor x_here = x.to(device);
          ASSERT_TRUE(nf4_fused_matmul_applies(x_here, q, rows));
          const torch::Tensor y = nf4_fused_matmul(x_here, q, isa);
          EXPECT_EQ(y.device(), device);
          EXPECT_EQ(y.scalar_type(), xdtype);
          EXPECT_EQ(y.sizes(), (std::vector<int64_t>{rows, out}));
          // f32 sums in another order: a few ulps of the sum of magnitudes; a bf16 result is
          // rounded once more (half a bf16 ulp)
          expect_close(y.cpu(), x.to(torch::kFloat32), bf16_code ? dense_bf16 : dense,
                       xdtype == torch::kBFloat16 ? 1.0 / 256 : 0, 1e-5);
        }
      }
    }
  }
}

TEST(Nf4FusedMatmul, EqualsDequantizedMatmulToRounding) {
  const std::vector<std::string> isas = nf4_fused_matmul_cpu_isas();
  if (isas.empty()) GTEST_SKIP() << "no AVX2 on this CPU: nf4_linear keeps dequantize + matmul";
  for (const std::string& isa : isas) check_ragged_products(torch::kCPU, isa.c_str());
}

TEST(Nf4FusedMatmul, CudaEqualsDequantizedMatmulToRounding) {
  if (!nf4_cuda_available())
    GTEST_SKIP() << "no CUDA device: the CUDA kernel is compiled but not run here";
  check_ragged_products(torch::Device(torch::kCUDA, 0), nullptr);
  // decoding takes it: nf4_linear of one row on the GPU equals the fused product
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  Nf4Weight q = quantize_nf4(torch::randn({96, 512}, gen).to(torch::kBFloat16));
  q.to(torch::Device(torch::kCUDA, 0));
  const torch::Tensor x = torch::randn({1, 512}, gen).to(torch::kBFloat16).cuda();
  torch::NoGradGuard no_grad;
  ASSERT_TRUE(nf4_fused_matmul_applies(x, q));
  EXPECT_TRUE(torch::equal(nf4_linear(x, q), nf4_fused_matmul(x, q)));
}

TEST(Nf4FusedMatmul, KeepsLeadingDimsAndIgnoresTheThreadCount) {
  if (nf4_fused_matmul_cpu_isas().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const Nf4Weight q = quantize_nf4(torch::randn({301, 512}, gen).to(torch::kBFloat16));
  const torch::Tensor x32 = torch::randn({2, 3, 512}, gen);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  for (const std::string& isa : nf4_fused_matmul_cpu_isas()) {
    SCOPED_TRACE(isa);
    const torch::Tensor x = isa == "avx512_bf16" ? x32.to(torch::kBFloat16) : x32;
    at::set_num_threads(1);
    const torch::Tensor one = nf4_fused_matmul(x, q, isa.c_str());
    at::set_num_threads(std::max(2, threads));
    const torch::Tensor many = nf4_fused_matmul(x, q, isa.c_str());
    at::set_num_threads(threads);
    EXPECT_EQ(one.sizes(), (std::vector<int64_t>{2, 3, 301}));
    // each output is one task's sum in one order: bit for bit
    EXPECT_TRUE(torch::equal(one, many));
    // a row's sum does not depend on how many rows share the product (one row alone takes
    // another summation order, so compare 3 rows against 6)
    EXPECT_TRUE(torch::equal(nf4_fused_matmul(x[1], q, isa.c_str()), one[1]));
  }
}

TEST(Nf4FusedMatmul, Nf4LinearUsesItOnlyWhereItApplies) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  torch::NoGradGuard no_grad;
  const Nf4Weight q = quantize_nf4(torch::randn({70, 256}, gen).to(torch::kBFloat16));
  const torch::Tensor dense = dequantize_nf4_as(q, torch::kFloat32);
  const torch::Tensor few = torch::randn({3, 256}, gen);
  const torch::Tensor many = torch::randn({kNf4FusedMaxRows + 1, 256}, gen);
  if (nf4_fused_matmul_applies(few, q)) {
    EXPECT_TRUE(torch::equal(nf4_linear(few, q), nf4_fused_matmul(few, q)));
  }
  EXPECT_FALSE(nf4_fused_matmul_applies(many, q));
  EXPECT_TRUE(torch::equal(nf4_linear(many, q), torch::nn::functional::linear(many, dense)));
  // rows that are not whole blocks, and f16 weights, keep dequantize + matmul
  const Nf4Weight ragged = quantize_nf4(torch::randn({5, 100}, gen));
  EXPECT_FALSE(nf4_fused_matmul_applies(torch::randn({1, 100}, gen), ragged));
  const Nf4Weight half = quantize_nf4(torch::randn({5, 64}, gen).to(torch::kFloat16));
  EXPECT_FALSE(nf4_fused_matmul_applies(torch::randn({1, 64}, gen), half));
  EXPECT_FALSE(nf4_fused_matmul_applies(torch::randn({1, 64}, gen).to(torch::kFloat16), q));
}

}  // namespace
}  // namespace gemma
