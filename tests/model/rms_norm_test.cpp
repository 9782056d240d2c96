#include "model/rms_norm.h"

#include <gtest/gtest.h>

#include <sstream>

#include "kernels/rms_norm_cpu.h"

namespace gemma {
namespace {

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor a64 = a.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
  return (a64 - b64).abs().max().item<double>() / b64.abs().max().item<double>();
}

struct Result {
  torch::Tensor y, dx, dw;
};

// y, and the gradients of sum(y · probe) with respect to x and (when it requires one) weight.
template <typename Norm>
Result run(Norm norm, const torch::Tensor& x, const torch::Tensor& weight,
           const torch::Tensor& probe) {
  const torch::Tensor xl = x.detach().clone().requires_grad_(true);
  const torch::Tensor wl = weight.defined()
                               ? weight.detach().clone().requires_grad_(weight.requires_grad())
                               : torch::Tensor();
  const torch::Tensor y = norm(xl, wl);
  (y.to(torch::kFloat32) * probe).sum().backward();
  return {y.detach(), xl.grad(), wl.defined() && wl.requires_grad() ? wl.grad() : torch::Tensor()};
}

// The one-pass kernels against the LibTorch ops, forward and backward, on random rows of ragged
// widths (not multiples of the 16 partial sums), float32 and bf16, with a float32 or bf16 weight,
// trainable or frozen, and without one.
TEST(RmsNormCpu, EqualsTheLibTorchOpsForwardAndBackward) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const double eps = 1e-6;
  for (const torch::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const auto& shape : std::vector<std::vector<int64_t>>{
             {1, 5}, {3, 17}, {2, 5, 64}, {37, 200}, {4, 3, 2, 129}, {9, 1000}}) {
      for (int weighting = 0; weighting < 3; ++weighting) {  // none, frozen, trainable
        std::ostringstream what;
        what << dtype << " " << c10::IntArrayRef(shape) << " weighting " << weighting;
        SCOPED_TRACE(what.str());
        const int64_t dim = shape.back();
        const torch::Tensor x = (torch::randn(shape, gen) * 3 + 0.5).to(dtype);
        torch::Tensor weight;
        if (weighting > 0) {
          weight = (torch::randn({dim}, gen) + 1).to(dtype);
          weight.requires_grad_(weighting == 2);
        }
        const torch::Tensor probe = torch::randn(shape, gen);
        const Result fast = run(
            [&](const torch::Tensor& a, const torch::Tensor& w) { return rms_norm_cpu(a, w, eps); },
            x, weight, probe);
        const Result reference =
            run([&](const torch::Tensor& a,
                    const torch::Tensor& w) { return rms_norm_reference(a, w, eps); },
                x, weight, probe);
        ASSERT_EQ(fast.y.scalar_type(), dtype);
        ASSERT_EQ(fast.dx.scalar_type(), dtype);
        // float32: the sums' order; bf16: an output one bf16 step apart where that order moves
        // a value across a rounding boundary.
        const double tolerance = dtype == torch::kFloat32 ? 1e-5 : 1e-2;
        EXPECT_LT(relative_error(fast.y, reference.y), tolerance);
        EXPECT_LT(relative_error(fast.dx, reference.dx), tolerance);
        if (weighting == 2) {
          ASSERT_TRUE(fast.dw.defined());
          EXPECT_EQ(fast.dw.scalar_type(), dtype);
          EXPECT_LT(relative_error(fast.dw, reference.dw), tolerance);
        }
      }
    }
  }
}

// The kernels change nothing but speed in a module: RmsNorm takes them on the CPU and gives what
// the reference gives; float64 (the finite-difference tests) stays on the reference.
TEST(RmsNormCpu, RmsNormTakesThemForFloat32AndBf16Only) {
  RmsNorm norm(RmsNormOptions(48).eps(1e-6));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::randn({48}, gen));
  }
  const torch::Tensor x = torch::randn({5, 48}, gen);
  EXPECT_TRUE(rms_norm_cpu_applies(x));
  EXPECT_FALSE(rms_norm_cpu_applies(x.to(torch::kFloat64)));
  EXPECT_LT(relative_error(norm(x), rms_norm_reference(x, norm->weight, 1e-6)), 1e-6);
  norm->to(torch::kFloat64);
  const torch::Tensor x64 = x.to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(norm(x64), rms_norm_reference(x64, norm->weight, 1e-6)));
}

}  // namespace
}  // namespace gemma
