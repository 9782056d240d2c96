#include "kernels/nf4.h"

#include <gtest/gtest.h>

#include <cstdio>

namespace gemma {
namespace {

std::string hex(const torch::Tensor& bytes) {
  std::string out;
  const torch::Tensor b = bytes.reshape(-1).contiguous();
  char buf[3];
  for (int64_t i = 0; i < b.numel(); ++i) {
    std::snprintf(buf, sizeof(buf), "%02x", b.data_ptr<uint8_t>()[i]);
    out += buf;
  }
  return out;
}

// qlora-formats.md §1.9: w_i = ((i·37) mod 101 − 50) · S[i div 64] / 2000, S = [1, 3, 2, 5].
torch::Tensor worked_example() {
  const float S[4] = {1, 3, 2, 5};
  torch::Tensor w = torch::empty({4, 64}, torch::kFloat32);
  for (int64_t i = 0; i < 256; ++i) {
    w.view(-1)[i] = static_cast<float>(((i * 37) % 101) - 50) * S[i / 64] / 2000.0f;
  }
  return w;
}

TEST(Nf4, WorkedTestVectorOfTheSpec) {
  for (Nf4Backend backend : {Nf4Backend::kReference, Nf4Backend::kCpu}) {
    const Nf4Weight q = quantize_nf4(worked_example(), backend);
    EXPECT_EQ(hex(q.packed.narrow(0, 0, 32)),
              "04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05d18e2af4c1");
    EXPECT_EQ(hex(q.packed.narrow(0, 32, 32)),
              "6d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e29f3b05d17e29f3c05d18");
    EXPECT_EQ(hex(q.packed.narrow(0, 64, 32)),
              "e2af4c16e18e3b05d17e29f3b05d18e2af4c16d18e3b04c17e29f3b05d17e2af");
    EXPECT_EQ(hex(q.packed.narrow(0, 96, 32)),
              "4c06d18e2a04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05");
    EXPECT_EQ(q.packed.sizes(), (std::vector<int64_t>{128, 1}));
    EXPECT_EQ(hex(q.absmax_codes), "0fbf2fff");  // [15, 191, 47, 255]
    EXPECT_FLOAT_EQ(q.offset, 0.06875000149011612f);
    EXPECT_FLOAT_EQ(q.nested_absmax[0].item<float>(), 0.0562499985f);
    const torch::Tensor absmax = dequantize_nf4_absmax(q);
    const float expected_absmax[4] = {0.0247607455f, 0.0747705102f, 0.0500732437f, 0.125f};
    for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(absmax[i].item<float>(), expected_absmax[i]);
    const torch::Tensor w = dequantize_nf4(q, backend);
    const float expected_w[4] = {-0.0247607455f, -0.00704298075f, 0.0109123038f, -0.0172382519f};
    for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(w[0][i].item<float>(), expected_w[i]);
  }
}

TEST(Nf4, EveryCodeRoundTrips) {
  // A block holding each of the 16 table values (scaled by 0.5) quantizes to exactly those codes.
  const torch::Tensor table = nf4_code_table();
  torch::Tensor w = torch::cat({table, table.flip(0), table, table.flip(0)}) * 0.5f;
  for (Nf4Backend backend : {Nf4Backend::kReference, Nf4Backend::kCpu}) {
    const Nf4Weight q = quantize_nf4(w, backend);
    const torch::Tensor back = dequantize_nf4_reference(q);
    const torch::Tensor codes = torch::stack({torch::bitwise_right_shift(q.packed.view(-1), 4),
                                              torch::bitwise_and(q.packed.view(-1), 0xF)},
                                             1)
                                    .view(-1);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(codes[i].item<int>(), i);
    EXPECT_LT((back - w).abs().max().item<float>(), 0.5f * 0.01f);
  }
}

TEST(Nf4, DynamicMapsHaveTheirLandmarks) {
  const torch::Tensor s = dynamic_map(true), u = dynamic_map(false);
  ASSERT_EQ(s.numel(), 256);
  ASSERT_EQ(u.numel(), 256);
  EXPECT_EQ(s[127].item<float>(), 0.0f);
  EXPECT_EQ(s[255].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(s[0].item<float>(), -0.99296874f);  // no -1.0 (§1.7)
  EXPECT_EQ(u[0].item<float>(), 0.0f);
  EXPECT_EQ(u[255].item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(std::get<0>(s.sort()), s));
}

// The CPU fast path equals the reference bit for bit on random inputs of awkward sizes.
TEST(Nf4, CpuFastPathEqualsReferenceBitForBit) {
  const std::vector<std::vector<int64_t>> shapes = {
      {1},       {3}, {63}, {65}, {127, 3}, {7, 9, 5}, {256, 64}, {300, 257}, {1, 64 * 256 + 1},
      {97, 1001}};
  int seed = 0;
  for (const auto& shape : shapes) {
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      torch::manual_seed(seed++);
      torch::Tensor w = (torch::randn(shape) * (0.01 + seed % 3)).to(dtype);
      if (w.numel() > 130) w.view(-1).narrow(0, 64, 64).zero_();  // an all-zero block
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " numel " + std::to_string(w.numel()));
      const Nf4Weight ref = quantize_nf4_reference(w);
      const Nf4Weight cpu = quantize_nf4_cpu(w);
      EXPECT_TRUE(torch::equal(cpu.packed, ref.packed));
      EXPECT_TRUE(torch::equal(cpu.absmax_codes, ref.absmax_codes));
      EXPECT_TRUE(torch::equal(cpu.nested_absmax, ref.nested_absmax));
      EXPECT_EQ(cpu.offset, ref.offset);
      const torch::Tensor a = dequantize_nf4_reference(ref);
      const torch::Tensor b = dequantize_nf4(ref);
      EXPECT_EQ(b.scalar_type(), dtype);
      EXPECT_EQ(b.sizes(), w.sizes());
      EXPECT_TRUE(torch::equal(a, b));
      // Stored straight as f32 (the f32-compute path): exactly the w.dtype values, widened.
      const torch::Tensor widened = dequantize_nf4_cpu(ref, torch::kFloat32);
      EXPECT_EQ(widened.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(widened, a.to(torch::kFloat32)));
      // NF4 error is bounded by half the widest table gap times the block absmax.
      EXPECT_LT((a.to(torch::kFloat32) - w.to(torch::kFloat32)).abs().max().item<float>(),
                0.2f * w.to(torch::kFloat32).abs().max().item<float>() + 1e-6f);
    }
  }
}

TEST(Nf4, StorageIsAboutHalfAByteAnElement) {
  const Nf4Weight q = quantize_nf4(torch::randn({1024, 1024}));
  const double per_element = static_cast<double>(q.nbytes()) / q.numel();
  EXPECT_GT(per_element, 0.5);
  EXPECT_LT(per_element, 0.52);
}

TEST(Nf4, CudaKernelsMatchReference) {
  if (!nf4_cuda_available())
    GTEST_SKIP() << "no CUDA device: the CUDA kernels are compiled but not run here";
  torch::manual_seed(3);
  for (int64_t n : {1, 63, 64, 65, 4097, 100003}) {
    const torch::Tensor w = torch::randn({n});
    const Nf4Weight ref = quantize_nf4_reference(w);
    const Nf4Weight gpu = quantize_nf4_cuda(w.cuda());
    EXPECT_TRUE(torch::equal(gpu.packed.cpu(), ref.packed));
    EXPECT_TRUE(torch::equal(gpu.absmax_codes.cpu(), ref.absmax_codes));
    Nf4Weight on_gpu = ref;
    on_gpu.packed = ref.packed.cuda();
    on_gpu.absmax_codes = ref.absmax_codes.cuda();
    on_gpu.nested_absmax = ref.nested_absmax.cuda();
    on_gpu.quant_map = ref.quant_map.cuda();
    on_gpu.nested_quant_map = ref.nested_quant_map.cuda();
    EXPECT_TRUE(torch::equal(dequantize_nf4_cuda(on_gpu).cpu(), dequantize_nf4_reference(ref)));
  }
}

}  // namespace
}  // namespace gemma
