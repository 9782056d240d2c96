// The few-rows bf16 product against the float64 product of the same bf16 values, on random inputs
// of ragged shapes: equal to float32 rounding plus the one bf16 rounding of the result, and taken
// by few_rows_linear only where it applies (never where autograd must record the product).
#include "kernels/bf16_matvec.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

namespace gemma {
namespace {

bool kernel_runs_here() {
  return bf16_matvec_applies(torch::ones({1, 32}, torch::kBFloat16),
                             torch::ones({1, 32}, torch::kBFloat16));
}

TEST(Bf16Matvec, EqualsTheExactProductToRounding) {
  if (!kernel_runs_here()) GTEST_SKIP() << "no AVX2 on this CPU: LibTorch's linear is used";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 32}, {3, 64}, {67, 96}, {130, 768}, {257, 1056}, {33, 4096}, {9, 40}};
  for (const auto& [out, in] : shapes) {
    const torch::Tensor w = (torch::randn({out, in}, gen) * 0.05).to(torch::kBFloat16);
    for (const int64_t rows : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{8}, int64_t{37}}) {
      SCOPED_TRACE(std::to_string(out) + "x" + std::to_string(in) + " rows " +
                   std::to_string(rows));
      const torch::Tensor x = (torch::randn({rows, in}, gen) + 0.3).to(torch::kBFloat16);
      const torch::Tensor y = bf16_matvec(x, w);
      ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{rows, out}));
      const torch::Tensor xf = x.to(torch::kFloat64), wf = w.to(torch::kFloat64);
      const torch::Tensor exact = torch::matmul(xf, wf.t());
      const torch::Tensor bound = torch::matmul(xf.abs(), wf.abs().t());
      const torch::Tensor err = (y.to(torch::kFloat64) - exact).abs();
      // half a bf16 ulp of the result, and float32 sums in another order
      const torch::Tensor allowed = exact.abs() / 256 + 1e-5 * bound + 1e-30;
      EXPECT_TRUE((err <= allowed).all().item<bool>())
          << "worst error / allowed: " << (err / allowed).max().item<double>();
    }
  }
}

TEST(Bf16Matvec, KeepsLeadingDimsAndIgnoresTheThreadCount) {
  if (!kernel_runs_here()) GTEST_SKIP() << "no AVX2 on this CPU";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12);
  const torch::Tensor w = torch::randn({301, 512}, gen).to(torch::kBFloat16);
  const torch::Tensor x = torch::randn({2, 3, 512}, gen).to(torch::kBFloat16);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const torch::Tensor one = bf16_matvec(x, w);
  at::set_num_threads(std::max(2, threads));
  const torch::Tensor many = bf16_matvec(x, w);
  at::set_num_threads(threads);
  EXPECT_EQ(one.sizes(), (std::vector<int64_t>{2, 3, 301}));
  EXPECT_TRUE(torch::equal(one, many));
  // a row's sum does not depend on the other rows
  EXPECT_TRUE(torch::equal(bf16_matvec(x[1][2], w), one[1][2]));
}

TEST(Bf16Matvec, FewRowsLinearUsesItOnlyWhereItApplies) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
  const torch::Tensor w = torch::randn({40, 256}, gen).to(torch::kBFloat16);
  const torch::Tensor few = torch::randn({3, 256}, gen).to(torch::kBFloat16);
  if (kernel_runs_here()) {
    EXPECT_TRUE(torch::equal(few_rows_linear(few, w), bf16_matvec(few, w)));
  }
  // more rows, other dtypes: LibTorch's linear
  const torch::Tensor many = torch::randn({kBf16MatvecMaxRows + 1, 256}, gen).to(torch::kBFloat16);
  EXPECT_FALSE(bf16_matvec_applies(many, w));
  EXPECT_TRUE(torch::equal(few_rows_linear(many, w), torch::nn::functional::linear(many, w)));
  EXPECT_FALSE(bf16_matvec_applies(few.to(torch::kFloat32), w.to(torch::kFloat32)));
  // autograd: a product that must be differentiated stays with LibTorch
  const torch::Tensor x = few.clone().requires_grad_(true);
  EXPECT_FALSE(bf16_matvec_applies(x, w));
  const torch::Tensor y = few_rows_linear(x, w);
  EXPECT_TRUE(y.requires_grad());
  {
    torch::NoGradGuard no_grad;
    EXPECT_EQ(bf16_matvec_applies(x, w), kernel_runs_here());
  }
}

}  // namespace
}  // namespace gemma
