// rows_product, the raw-pointer products of the step decoder, against the float64 product of the
// same values on random inputs of ragged shapes, for every storage format and every CPU code this
// machine runs; outputs split into ranges as threads split them; and the activations' derived
// forms against their definition.
#include "kernels/rows_product.h"

#include <gtest/gtest.h>

#include "kernels/nf4.h"
#include "kernels/nf4_fused_matmul.h"
#include "kernels/nf4_matmul.h"

namespace gemma {
namespace {

// y [rows, out] by rows_product in three uneven ranges of outputs, as three threads would.
torch::Tensor product_in_ranges(const FrozenWeightView& w, const torch::Tensor& x_f32,
                                RowsCode code) {
  const int64_t rows = x_f32.size(0);
  RowsInputBuffer buffer;
  const RowsInput in = buffer.prepare(x_f32.data_ptr<float>(), rows, w.in, code);
  torch::Tensor y = torch::full({rows, w.out}, std::nanf(""), torch::kFloat32);
  const int64_t cuts[] = {0, w.out / 3, w.out / 3 + 1, w.out};
  for (int i = 0; i < 3; ++i) {
    if (cuts[i] < cuts[i + 1]) rows_product(w, in, code, y.data_ptr<float>(), cuts[i], cuts[i + 1]);
  }
  return y;
}

void expect_product_to_rounding(const torch::Tensor& y, const torch::Tensor& x,
                                const torch::Tensor& w) {
  const torch::Tensor xf = x.to(torch::kFloat64), wf = w.to(torch::kFloat64);
  const torch::Tensor exact = torch::matmul(xf, wf.t());
  const torch::Tensor bound = torch::matmul(xf.abs(), wf.abs().t());
  const torch::Tensor err = (y.to(torch::kFloat64) - exact).abs();
  // float32 sums in another order
  const torch::Tensor allowed = 1e-5 * bound + 1e-30;
  EXPECT_TRUE((err <= allowed).all().item<bool>())
      << "worst error / allowed: " << (err / allowed).max().item<double>();
}

// widths: multiples of 64; of 16 but not 32 (the one-row bf16 code's last step); neither
const std::vector<std::pair<int64_t, int64_t>> kShapes = {
    {1, 64}, {3, 128}, {67, 192}, {130, 768}, {33, 1088}, {7, 1072}, {5, 48}, {9, 40}};

TEST(RowsProduct, DenseWeightsEqualTheExactProduct) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (const RowsCode code : rows_codes_here()) {
    for (const auto& [out, in] : kShapes) {
      for (const int64_t rows : {int64_t{1}, int64_t{2}, int64_t{4}, int64_t{5}, int64_t{9}}) {
        SCOPED_TRACE(std::string(rows_code_name(code)) + " " + std::to_string(out) + "x" +
                     std::to_string(in) + " rows " + std::to_string(rows));
        // bf16 activations for the AVX512_BF16 code, as the decoder feeds it
        const torch::Tensor x =
            (torch::randn({rows, in}, gen) + 0.3).to(torch::kBFloat16).to(torch::kFloat32);
        const torch::Tensor w16 = (torch::randn({out, in}, gen) * 0.05).to(torch::kBFloat16);
        FrozenWeightView bf16;
        bf16.format = FrozenWeightView::Format::kBf16;
        bf16.bf16 = reinterpret_cast<const uint16_t*>(w16.data_ptr());
        bf16.in = in;
        bf16.out = out;
        expect_product_to_rounding(product_in_ranges(bf16, x, code), x, w16);
        const torch::Tensor w32 = torch::randn({out, in}, gen) * 0.05;
        FrozenWeightView f32 = bf16;
        f32.format = FrozenWeightView::Format::kF32;
        f32.f32 = w32.data_ptr<float>();
        expect_product_to_rounding(product_in_ranges(f32, x, code), x, w32);
      }
    }
  }
}

TEST(RowsProduct, Nf4WeightsEqualTheProductOfTheirDequantizedValues) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
  for (const RowsCode code : rows_codes_here()) {
    for (const auto& [out, in] : kShapes) {
      if (in % kNf4BlockSize != 0) continue;
      for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
        for (const bool bf16_compute : {false, true}) {
          if (code == RowsCode::kAvx512Bf16 && !bf16_compute) continue;
          for (const int64_t rows : {int64_t{1}, int64_t{3}, int64_t{9}}) {
            SCOPED_TRACE(std::string(rows_code_name(code)) + " " + std::to_string(out) + "x" +
                         std::to_string(in) + (dtype == torch::kBFloat16 ? " bf16" : " f32") +
                         (bf16_compute ? " bf16 compute" : "") + " rows " + std::to_string(rows));
            const Nf4Weight w = quantize_nf4((torch::randn({out, in}, gen) * 0.05).to(dtype));
            std::vector<torch::Tensor> keep;
            FrozenWeightView view;
            view.format = FrozenWeightView::Format::kNf4;
            view.nf4 = nf4_rows_weight(w, bf16_compute, &keep);
            view.in = in;
            view.out = out;
            torch::Tensor x = torch::randn({rows, in}, gen) + 0.3;
            if (bf16_compute) x = x.to(torch::kBFloat16).to(torch::kFloat32);
            // the values LibTorch's path multiplies: dequantized into the compute dtype
            const torch::Tensor values =
                dequantize_nf4_as(w, bf16_compute ? torch::kBFloat16 : torch::kFloat32);
            const torch::Tensor y = product_in_ranges(view, x, code);
            expect_product_to_rounding(y, x, values);
            if (view.nf4.bf16_values) {
              // with the block tables built once: the same weights, summed the same way
              const torch::Tensor tables = nf4_block_tables(view.nf4, out * in / kNf4BlockSize);
              view.nf4.block_tables = tables.data_ptr<uint8_t>();
              EXPECT_TRUE(torch::equal(product_in_ranges(view, x, code), y));
            }
          }
        }
      }
    }
  }
}

TEST(RowsProduct, Nf4BlockTablesHoldEachBlocksBf16Values) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const int64_t out = 7, in = 192, blocks = out * in / kNf4BlockSize;
    const Nf4Weight w = quantize_nf4((torch::randn({out, in}, gen) * 0.05).to(dtype));
    std::vector<torch::Tensor> keep;
    const Nf4RowsWeight view = nf4_rows_weight(w, /*bf16_compute=*/true, &keep);
    const torch::Tensor tables = nf4_block_tables(view, blocks);
    ASSERT_EQ(tables.sizes(), (std::vector<int64_t>{blocks, 32}));
    // every element's bf16 bits are its block's table entry at its code
    const torch::Tensor bits = dequantize_nf4_as(w, torch::kBFloat16)
                                   .view(torch::kInt16)
                                   .to(torch::kInt32)
                                   .bitwise_and(0xffff)
                                   .reshape({blocks, kNf4BlockSize});
    const torch::Tensor packed = w.packed.reshape({blocks, kNf4BlockSize / 2}).to(torch::kInt64);
    const torch::Tensor codes =
        torch::stack({packed.bitwise_right_shift(4), packed.bitwise_and(15)}, 2)
            .reshape({blocks, kNf4BlockSize});
    const torch::Tensor t = tables.to(torch::kInt32);
    const torch::Tensor from_tables =
        t.gather(1, codes) + t.narrow(1, 16, 16).gather(1, codes) * 256;
    EXPECT_TRUE(torch::equal(from_tables, bits));
  }
}

TEST(RowsProduct, PreparedFormsFollowTheirDefinition) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const int64_t rows = 3, in = 128;
  const torch::Tensor x = torch::randn({rows, in}, gen).to(torch::kBFloat16).to(torch::kFloat32);
  const auto pairs = [&](const torch::Tensor& t, int64_t g) {
    return t.reshape({rows, in / (2 * g), g, 2}).transpose(2, 3).contiguous().view({rows, in});
  };
  RowsInputBuffer buffer;
  const RowsInput a = buffer.prepare(x.data_ptr<float>(), rows, in, RowsCode::kAvx512);
  EXPECT_EQ(a.f32, x.data_ptr<float>());
  ASSERT_NE(a.f32_pairs, nullptr);
  EXPECT_TRUE(
      torch::equal(torch::from_blob(const_cast<float*>(a.f32_pairs), {rows, in}), pairs(x, 16)));
  const RowsInput b = buffer.prepare(x.data_ptr<float>(), rows, in, RowsCode::kAvx512Bf16);
  ASSERT_NE(b.bf16, nullptr);
  ASSERT_NE(b.bf16_pairs, nullptr);
  const auto as_bf16 = [&](const uint16_t* p) {
    return torch::from_blob(const_cast<uint16_t*>(p), {rows, in}, torch::kBFloat16)
        .to(torch::kFloat32);
  };
  EXPECT_TRUE(torch::equal(as_bf16(b.bf16), x));
  EXPECT_TRUE(torch::equal(as_bf16(b.bf16_pairs), pairs(x, 32)));
  EXPECT_EQ(b.f32_words, nullptr);
  const RowsInput c = buffer.prepare(x.data_ptr<float>(), rows, in, RowsCode::kAvx2);
  EXPECT_EQ(c.f32_pairs, nullptr);
  EXPECT_EQ(c.bf16, nullptr);
  // each 16 as 0-3, 8-11, 4-7, 12-15; for both codes that multiply float32 activations
  const torch::Tensor words =
      x.reshape({rows, in / 16, 2, 2, 4}).transpose(2, 3).reshape({rows, in});
  for (const RowsInput* r : {&a, &c}) {
    ASSERT_NE(r->f32_words, nullptr);
    EXPECT_TRUE(
        torch::equal(torch::from_blob(const_cast<float*>(r->f32_words), {rows, in}), words));
  }
  const torch::Tensor odd = torch::randn({rows, 40}, gen);
  EXPECT_EQ(buffer.prepare(odd.data_ptr<float>(), rows, 40, RowsCode::kAvx2).f32_words, nullptr);
}

}  // namespace
}  // namespace gemma
