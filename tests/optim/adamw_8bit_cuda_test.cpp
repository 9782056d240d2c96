// AdamW8bit as bitsandbytes' CUDA kernel computes it: the LibTorch reference against closed forms
// and brute force on the CPU, and the CUDA kernel against the reference where a GPU is present.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "optim/adamw.h"
#include "optim/adamw_8bit.h"
#include "optim/adamw_8bit_cuda.h"
#include "optim/blockwise_8bit.h"
#include "optim/paged_state.h"

namespace gemma {
namespace {

struct State8bit {
  torch::Tensor state1, state2, absmax1, absmax2;
  explicit State8bit(const torch::Tensor& p) {
    const int64_t blocks = (p.numel() + 255) / 256;
    const auto u8 = p.options().dtype(torch::kUInt8), f32 = p.options().dtype(torch::kFloat32);
    state1 = torch::zeros(p.sizes(), u8);
    state2 = torch::zeros(p.sizes(), u8);
    absmax1 = torch::zeros({blocks}, f32);
    absmax2 = torch::zeros({blocks}, f32);
  }
  torch::Tensor m() const {
    return dequantize_blockwise_8bit(state1.cpu(), absmax1.cpu(), dynamic_codebook(true));
  }
  torch::Tensor v() const {
    return dequantize_blockwise_8bit(state2.cpu(), absmax2.cpu(), dynamic_codebook(false));
  }
  void step(torch::Tensor& p, const torch::Tensor& g, const AdamWStepHyper& h) {
    adamw_8bit_cuda_step_reference(p, g, state1, state2, absmax1, absmax2, h);
  }
};

AdamWStepHyper hyper(int64_t step, double weight_decay = 0.0) {
  return AdamWStepHyper{1e-2, 0.9, 0.999, 1e-8, weight_decay, step};
}

// From zero state, m = (1-b1) g and v = (1-b2) g^2 exactly; the parameter moves by the Adam step
// first and decays after (torch.optim.AdamW and the CPU backend decay first).
TEST(AdamW8bitCuda, FirstStepDecaysAfterTheAdamStep) {
  torch::manual_seed(1);
  torch::Tensor p = torch::randn({50, 100});
  const torch::Tensor p0 = p.clone().to(torch::kFloat64), g = torch::randn({50, 100});
  State8bit s(p);
  const AdamWStepHyper h = hyper(1, 0.5);
  s.step(p, g, h);
  const torch::Tensor gd = g.to(torch::kFloat64);
  const double c1 = 1 - 0.9, c2 = std::sqrt(1 - 0.999);
  const torch::Tensor m = 0.1 * gd, v = 0.001 * gd * gd;
  const torch::Tensor after =
      (p0 - h.lr * c2 / c1 * m / (v.sqrt() + c2 * h.eps)) * (1 - h.lr * 0.5);
  EXPECT_LT((p.to(torch::kFloat64) - after).abs().max().item<double>(), 1e-6);
  const torch::Tensor decay_first =
      p0 * (1 - h.lr * 0.5) - h.lr * c2 / c1 * m / (v.sqrt() + c2 * h.eps);
  EXPECT_GT((after - decay_first).abs().max().item<double>(),
            1e-5);  // the test can tell them apart
}

TEST(AdamW8bitCuda, NearestCodeEqualsBruteForce) {
  torch::manual_seed(2);
  for (const bool is_signed : {true, false}) {
    const torch::Tensor map = dynamic_codebook(is_signed).map;
    torch::Tensor x = torch::rand({20000}) * (is_signed ? 2.0 : 1.0) - (is_signed ? 1.0 : 0.0);
    x = torch::cat({x, x.pow(5), map,
                    torch::tensor({-1.0f, 0.0f, 1.0f})});  // small values, the codes themselves
    if (!is_signed) x = x.abs();
    const torch::Tensor ours = nearest_code_reference(map, x, is_signed);
    const torch::Tensor distance = (map.view({1, -1}) - x.view({-1, 1})).abs();
    const torch::Tensor best = distance.argmin(1);
    // Where two codes are equally near either is nearest; compare distances, not indices.
    const torch::Tensor ours_distance = distance.gather(1, ours.view({-1, 1})).squeeze(1);
    const torch::Tensor best_distance = distance.gather(1, best.view({-1, 1})).squeeze(1);
    EXPECT_TRUE(torch::equal(ours_distance, best_distance)) << "signed " << is_signed;
  }
}

// Several steps on a ragged tensor: every code of state1 has the sign of its moment (the sign
// fix), the spare lanes of the last block take part in its max, and a NaN or Inf gradient zeroes
// that element's moments and leaves the element alone.
TEST(AdamW8bitCuda, SignFixPaddingLanesAndNonFiniteGradients) {
  torch::manual_seed(3);
  torch::Tensor p = torch::randn({4100});  // 16 full blocks and one of 4
  State8bit s(p);
  for (int64_t t = 1; t <= 5; ++t) {
    torch::Tensor g = torch::randn({4100}) * 1e-2;
    const torch::Tensor m_prev = s.m(), v_prev = s.v();
    const float old_max1 = s.absmax1[16].item<float>(), old_max2 = s.absmax2[16].item<float>();
    if (t == 4) {
      g[7] = std::nanf("");
      g[4098] = INFINITY;
    }
    const torch::Tensor p_before = p.clone();
    s.step(p, g, hyper(t));
    const torch::Tensor m = s.m();
    const torch::Tensor signs_match =
        (torch::sign(m) == torch::sign(m_prev * 0.9f + g * 0.1f)) | (m == 0);
    if (t != 4) EXPECT_TRUE(signs_match.all().item<bool>()) << "step " << t;
    // Spare lanes: code 128 of the signed map and code 0 of the unsigned one, decayed.
    const torch::Tensor map1 = dynamic_codebook(true).map, map2 = dynamic_codebook(false).map;
    const torch::Tensor tail = torch::where(
        torch::isfinite(g.slice(0, 4096)),
        (m_prev.slice(0, 4096) * 0.9f + g.slice(0, 4096) * 0.1f).abs(), torch::zeros({4}));
    const float pad1 = std::abs(map1[128].item<float>() * old_max1 * 0.9f);
    EXPECT_FLOAT_EQ(s.absmax1[16].item<float>(), std::max(tail.max().item<float>(), pad1));
    EXPECT_GE(s.absmax2[16].item<float>(), map2[0].item<float>() * old_max2 * 0.999f);
    if (t == 4) {
      for (const int64_t i : {int64_t{7}, int64_t{4098}}) {
        EXPECT_EQ(p[i].item<float>(), p_before[i].item<float>());
        EXPECT_EQ(m[i].item<float>(), 0.0f);
        EXPECT_EQ(s.v()[i].item<float>(), 0.0f);
      }
    }
  }
  EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
}

// bf16 parameters round twice: after the step and after the decay.
TEST(AdamW8bitCuda, Bf16ParametersRoundAfterTheStepAndAfterTheDecay) {
  torch::manual_seed(4);
  torch::Tensor p = torch::randn({64, 80}).to(torch::kBFloat16);
  const torch::Tensor p0 = p.to(torch::kFloat32), g = torch::randn({64, 80});
  State8bit s(p);
  const AdamWStepHyper h = hyper(1, 0.5);
  s.step(p, g, h);
  const float c2 = std::sqrt(1.0f - std::pow(0.999f, 1.0f)), c1 = 1.0f - 0.9f;
  const torch::Tensor m = g * (1.0f - 0.9f), v = g * (1.0f - 0.999f) * g;
  const torch::Tensor moved =
      (p0 + m / (v.sqrt() + c2 * 1e-8f) * ((-0.01f * c2) / c1)).to(torch::kBFloat16);
  const torch::Tensor expected =
      (moved.to(torch::kFloat32) * (1.0f - 0.01f * 0.5f)).to(torch::kBFloat16);
  const double differing = (p != expected).to(torch::kFloat64).mean().item<double>();
  EXPECT_LT(differing, 0.01);  // a last-bit difference of the float32 step may round the other way
  EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
}

// On least squares the CUDA arithmetic tracks 32-bit AdamW within 1%, as the CPU backend does.
TEST(AdamW8bitCuda, TracksAdamWOnLeastSquares) {
  torch::manual_seed(6);
  const torch::Tensor a = torch::randn({512, 96}), b = torch::randn({512, 64});
  const torch::Tensor x0 = torch::randn({96, 64}) * 0.1;
  auto loss_of = [&](const torch::Tensor& x) { return (a.matmul(x) - b).pow(2).mean(); };
  torch::Tensor x32 = x0.clone().requires_grad_(), x8 = x0.clone();
  AdamWOptions o32;
  o32.lr = 3e-3;
  o32.weight_decay = 0.0;
  AdamW opt32(NamedTensors{{"x", x32}}, o32);
  State8bit s(x8);
  const double initial = loss_of(x0).item<double>();
  double l32 = 0, worst = 0;
  for (int64_t t = 1; t <= 200; ++t) {
    opt32.zero_grad();
    torch::Tensor loss32 = loss_of(x32);
    loss32.backward();
    torch::Tensor x8g = x8.clone().requires_grad_();
    torch::Tensor loss8 = loss_of(x8g);
    loss8.backward();
    l32 = loss32.item<double>();
    worst = std::max(worst, std::abs(loss8.item<double>() - l32) / l32);
    opt32.step();
    AdamWStepHyper h = hyper(t);
    h.lr = 3e-3;
    s.step(x8, x8g.grad(), h);
  }
  EXPECT_LT(l32, 0.5 * initial);
  EXPECT_LT(worst, 0.01);
}

// Below min_8bit_size: float32 moments, the same order of operations.
TEST(AdamW8bitCuda, SmallTensorsKeepFloat32MomentsAndDecayAfter) {
  torch::manual_seed(7);
  torch::Tensor p = torch::randn({100});
  const torch::Tensor p0 = p.to(torch::kFloat64), g = torch::randn({100});
  torch::Tensor m = torch::zeros({100}), v = torch::zeros({100});
  adamw_32bit_state_cuda_step(p, g, m, v, hyper(1, 0.1));
  const torch::Tensor gd = g.to(torch::kFloat64);
  const double c2 = std::sqrt(1 - 0.999);
  const torch::Tensor after =
      (p0 - 1e-2 * c2 / 0.1 * (0.1 * gd) / ((0.001 * gd * gd).sqrt() + c2 * 1e-8)) *
      (1 - 1e-2 * 0.1);
  EXPECT_LT((p.to(torch::kFloat64) - after).abs().max().item<double>(), 1e-6);
  EXPECT_TRUE(torch::allclose(m, (0.1 * g)));
}

// The kernel against the reference on a GPU: parameters, codes and block maxima after ten steps
// (f32 and bf16, ragged sizes, a non-finite gradient), and paged state in managed memory.
TEST(AdamW8bitCuda, KernelEqualsReferenceOnTheGpu) {
  if (!torch::cuda::is_available())
    GTEST_SKIP() << "no CUDA device: the kernel is compiled but not run here";
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const int64_t n : {int64_t{4096}, int64_t{5000}, int64_t{300001}}) {
      torch::manual_seed(8);
      torch::Tensor p_ref = torch::randn({n}, torch::kCUDA).to(dtype);
      torch::Tensor p_gpu = p_ref.clone();
      State8bit ref(p_ref), gpu(p_gpu);
      for (int64_t t = 1; t <= 10; ++t) {
        torch::Tensor g = torch::randn({n}, torch::kCUDA).to(dtype);
        if (t == 3) g[n / 2] = std::nanf("");
        const AdamWStepHyper h = hyper(t, 0.01);
        adamw_8bit_cuda_step_reference(p_ref, g, ref.state1, ref.state2, ref.absmax1, ref.absmax2,
                                       h);
        adamw_8bit_cuda_step(p_gpu, g, gpu.state1, gpu.state2, gpu.absmax1, gpu.absmax2, h);
      }
      const auto code_diff = [](const torch::Tensor& a, const torch::Tensor& b) {
        return (a.to(torch::kInt32) - b.to(torch::kInt32)).abs();
      };
      const torch::Tensor d1 = code_diff(ref.state1, gpu.state1),
                          d2 = code_diff(ref.state2, gpu.state2);
      EXPECT_LT(d1.gt(0).to(torch::kFloat64).mean().item<double>(), 1e-3) << n;
      EXPECT_LT(d2.gt(0).to(torch::kFloat64).mean().item<double>(), 1e-3) << n;
      EXPECT_TRUE(torch::allclose(ref.absmax1, gpu.absmax1, 1e-4, 0)) << n;
      EXPECT_TRUE(torch::allclose(ref.absmax2, gpu.absmax2, 1e-4, 0)) << n;
      const double tol = dtype == torch::kBFloat16 ? 1e-2 : 1e-5;
      EXPECT_TRUE(torch::allclose(p_ref.to(torch::kFloat32), p_gpu.to(torch::kFloat32), tol, 1e-6))
          << n;
    }
  }
  // Paged: a 300k-element parameter's codes live in managed memory and give the unpaged bytes.
  torch::manual_seed(9);
  torch::Tensor a = torch::randn({600, 500}, torch::kCUDA), b = a.clone();
  AdamW8bitOptions paged, plain;
  paged.paged = true;
  AdamW8bit opt_paged(NamedTensors{{"w", a}}, paged), opt_plain(NamedTensors{{"w", b}}, plain);
  for (int i = 0; i < 3; ++i) {
    const torch::Tensor g = torch::randn({600, 500}, torch::kCUDA);
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    opt_paged.step();
    opt_plain.step();
  }
  EXPECT_TRUE(torch::equal(a, b));
  const NamedTensors sp = opt_paged.state_dict(), sq = opt_plain.state_dict();
  for (size_t i = 0; i < sp.size(); ++i)
    EXPECT_TRUE(torch::equal(sp[i].second, sq[i].second)) << sp[i].first;
}

}  // namespace
}  // namespace gemma
