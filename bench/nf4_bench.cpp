// NF4 benchmarks (Google Benchmark): dequantization throughput of each implementation against a
// memcpy of the same output size, and the NF4 matmul against dequantize-then-matmul and a dense
// matmul of the same shape. Run: build/bench/nf4_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstring>
#include <thread>

#include "kernels/host_allocator.h"
#include "kernels/nf4.h"
#include "kernels/nf4_fused_matmul.h"
#include "kernels/nf4_matmul.h"
#include "kernels/rows_product.h"

namespace gemma {
namespace {

constexpr int64_t kRows = 4096, kCols = 4096;  // one 4096x4096 projection, 16.8M weights

const Nf4Weight& weight(torch::ScalarType dtype) {
  static std::map<torch::ScalarType, Nf4Weight> cache;
  auto it = cache.find(dtype);
  if (it == cache.end()) {
    torch::manual_seed(0);
    it = cache.emplace(dtype, quantize_nf4(torch::randn({kRows, kCols}).to(dtype))).first;
  }
  return it->second;
}

void report_output_bytes(benchmark::State& state, int64_t bytes) {
  state.SetBytesProcessed(state.iterations() * bytes);
}

void BM_Memcpy(benchmark::State& state) {
  const auto dtype = static_cast<torch::ScalarType>(state.range(0));
  const int64_t bytes = kRows * kCols * c10::elementSize(dtype);
  std::vector<char> src(bytes, 1), dst(bytes);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
  }
  report_output_bytes(state, bytes);
}

void BM_DequantizeReference(benchmark::State& state) {
  const auto dtype = static_cast<torch::ScalarType>(state.range(0));
  const Nf4Weight& w = weight(dtype);
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_nf4_reference(w));
  report_output_bytes(state, kRows * kCols * c10::elementSize(dtype));
}

void BM_DequantizeCpu(benchmark::State& state) {
  const auto dtype = static_cast<torch::ScalarType>(state.range(0));
  const Nf4Weight& w = weight(dtype);
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_nf4_cpu(w));
  report_output_bytes(state, kRows * kCols * c10::elementSize(dtype));
  state.SetLabel(nf4_cpu_isa());
}

// Into one reused output tensor: the kernel alone, as memcpy is measured (a fresh 64 MB tensor
// costs its page faults on top, a third of the time above on this machine).
void BM_DequantizeCpuInto(benchmark::State& state) {
  const auto dtype = static_cast<torch::ScalarType>(state.range(0));
  const Nf4Weight& w = weight(dtype);
  const torch::Tensor out = torch::empty({kRows, kCols}, dtype);
  for (auto _ : state) {
    dequantize_nf4_cpu_into(w, out);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  report_output_bytes(state, kRows * kCols * c10::elementSize(dtype));
  state.SetLabel(nf4_cpu_isa());
}

void BM_QuantizeCpu(benchmark::State& state) {
  torch::manual_seed(0);
  const torch::Tensor w = torch::randn({kRows, kCols}).to(torch::kBFloat16);
  for (auto _ : state) benchmark::DoNotOptimize(quantize_nf4_cpu(w));
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
}

// y = x · Wᵀ for a batch of 512 tokens, W 4096x4096, in the dtype of the argument: the dense
// matmul, our NF4 matmul (nf4_linear: dequantize into the compute dtype, multiply, free), and the
// naive dequantize-to-the-weight's-dtype-then-matmul it replaces.
torch::Tensor tokens(torch::ScalarType dtype) {
  torch::manual_seed(1);
  return torch::randn({512, kCols}).to(dtype);
}

void BM_MatmulDense(benchmark::State& state) {
  const auto dtype = static_cast<torch::ScalarType>(state.range(0));
  const torch::Tensor x = tokens(dtype);
  const torch::Tensor w = dequantize_nf4_as(weight(torch::kBFloat16), dtype);
  for (auto _ : state) benchmark::DoNotOptimize(torch::nn::functional::linear(x, w));
}

void BM_MatmulNf4(benchmark::State& state) {
  const auto dtype = static_cast<torch::ScalarType>(state.range(0));
  const torch::Tensor x = tokens(dtype);
  const Nf4Weight& w = weight(torch::kBFloat16);
  for (auto _ : state) benchmark::DoNotOptimize(nf4_linear(x, w));
}

void BM_MatmulDequantizeThenMatmul(benchmark::State& state) {
  const auto dtype = static_cast<torch::ScalarType>(state.range(0));
  const torch::Tensor x = tokens(dtype);
  const Nf4Weight& w = weight(torch::kBFloat16);  // stored from bf16, as a bf16 checkpoint
  for (auto _ : state) {
    benchmark::DoNotOptimize(torch::nn::functional::linear(x, dequantize_nf4(w).to(dtype)));
  }
}

// A few rows (decoding) against the 4096x4096 weight stored from bf16: the fused product, the
// dequantize-then-matmul it replaces, and a dense matmul of the same shape in the same dtype.
// Args: compute dtype, rows.
torch::Tensor few_rows(benchmark::State& state) {
  torch::manual_seed(2);
  return torch::randn({state.range(1), kCols}).to(static_cast<torch::ScalarType>(state.range(0)));
}

void BM_RowsFused(benchmark::State& state) {
  const torch::Tensor x = few_rows(state);
  const Nf4Weight& w = weight(torch::kBFloat16);
  for (auto _ : state) benchmark::DoNotOptimize(nf4_fused_matmul(x, w));
}

// The same product with the weight stored from float32: its block values are not bf16 in f32
// compute, so the AVX2 code looks them up with two permutes per 8 weights instead of the byte
// tables of bf16-valued blocks (BM_RowsFused, f32 compute): what the tables gain.
void BM_RowsFusedF32Weight(benchmark::State& state) {
  const torch::Tensor x = few_rows(state);
  const Nf4Weight& w = weight(torch::kFloat32);
  for (auto _ : state) benchmark::DoNotOptimize(nf4_fused_matmul(x, w));
}

// The AVX2 code on a CPU that has AVX-512 too (skipped elsewhere): what AVX-512 gains.
void BM_RowsFusedAvx2(benchmark::State& state) {
  const std::vector<std::string> isas = nf4_fused_matmul_cpu_isas();
  if (std::find(isas.begin(), isas.end(), "avx512") == isas.end()) {
    state.SkipWithError("no AVX-512 here: BM_RowsFused is the AVX2 code");
    return;
  }
  const torch::Tensor x = few_rows(state);
  const Nf4Weight& w = weight(torch::kBFloat16);
  for (auto _ : state) benchmark::DoNotOptimize(nf4_fused_matmul(x, w, "avx2"));
}

void BM_RowsDequantizeThenMatmul(benchmark::State& state) {
  const torch::Tensor x = few_rows(state);
  const Nf4Weight& w = weight(torch::kBFloat16);
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        torch::nn::functional::linear(x, dequantize_nf4_as(w, x.scalar_type())));
  }
}

void BM_RowsDense(benchmark::State& state) {
  const torch::Tensor x = few_rows(state);
  const torch::Tensor w = dequantize_nf4_as(weight(torch::kBFloat16), x.scalar_type());
  for (auto _ : state) benchmark::DoNotOptimize(torch::nn::functional::linear(x, w));
}

// The AVX2 code as the step decoder runs it (rows_product on float32 x, outputs split between
// the threads), the block tables computed from each absmax (0) or loaded (1, nf4_block_tables).
// Args: tables, rows.
void BM_RowsProductAvx2Tables(benchmark::State& state) {
  const std::vector<RowsCode> here = rows_codes_here();
  if (here.empty()) {
    state.SkipWithError("no AVX2 here");
    return;
  }
  std::vector<torch::Tensor> keep;
  FrozenWeightView w;
  w.format = FrozenWeightView::Format::kNf4;
  w.nf4 = nf4_rows_weight(weight(torch::kBFloat16), /*bf16_compute=*/false, &keep);
  w.in = kCols;
  w.out = kRows;
  const torch::Tensor tables = nf4_block_tables(w.nf4, kRows * kCols / kNf4BlockSize);
  if (state.range(0) != 0) w.nf4.block_tables = tables.data_ptr<uint8_t>();
  torch::manual_seed(2);
  const torch::Tensor x = torch::randn({state.range(1), kCols});
  RowsInputBuffer forms;
  const RowsInput in = forms.prepare(x.data_ptr<float>(), x.size(0), kCols, RowsCode::kAvx2);
  torch::Tensor y = torch::empty({x.size(0), kRows});
  for (auto _ : state) {
    at::parallel_for(0, kRows, 64, [&](int64_t begin, int64_t end) {
      rows_product(w, in, RowsCode::kAvx2, y.data_ptr<float>(), begin, end);
    });
    benchmark::DoNotOptimize(y.data_ptr<float>());
  }
}

#define ROWS_BENCHMARK(fn)                                                                    \
  BENCHMARK(fn)                                                                               \
      ->ArgsProduct({{static_cast<int>(torch::kFloat32), static_cast<int>(torch::kBFloat16)}, \
                     {1, 4, 8, 16, 32, 128}})                                                 \
      ->UseRealTime()                                                                         \
      ->Unit(benchmark::kMicrosecond)
ROWS_BENCHMARK(BM_RowsFused);
ROWS_BENCHMARK(BM_RowsFusedF32Weight);
ROWS_BENCHMARK(BM_RowsFusedAvx2);
ROWS_BENCHMARK(BM_RowsDequantizeThenMatmul);
ROWS_BENCHMARK(BM_RowsDense);
BENCHMARK(BM_RowsProductAvx2Tables)
    ->ArgsProduct({{0, 1}, {1, 4, 8}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_Memcpy)
    ->Arg(static_cast<int>(torch::kFloat32))
    ->Arg(static_cast<int>(torch::kBFloat16))
    ->UseRealTime();
BENCHMARK(BM_DequantizeReference)
    ->Arg(static_cast<int>(torch::kFloat32))
    ->Arg(static_cast<int>(torch::kBFloat16))
    ->UseRealTime();
BENCHMARK(BM_DequantizeCpu)
    ->Arg(static_cast<int>(torch::kFloat32))
    ->Arg(static_cast<int>(torch::kBFloat16))
    ->UseRealTime();
BENCHMARK(BM_DequantizeCpuInto)
    ->Arg(static_cast<int>(torch::kFloat32))
    ->Arg(static_cast<int>(torch::kBFloat16))
    ->UseRealTime();
BENCHMARK(BM_QuantizeCpu)->UseRealTime();
#define MATMUL_BENCHMARK(fn)                    \
  BENCHMARK(fn)                                 \
      ->Arg(static_cast<int>(torch::kFloat32))  \
      ->Arg(static_cast<int>(torch::kBFloat16)) \
      ->UseRealTime()                           \
      ->Unit(benchmark::kMillisecond)
MATMUL_BENCHMARK(BM_MatmulDense);
MATMUL_BENCHMARK(BM_MatmulNf4);
MATMUL_BENCHMARK(BM_MatmulDequantizeThenMatmul);

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) {
  gemma::keep_large_host_allocations();  // as gemma-train runs
  at::set_num_threads(
      static_cast<int>(std::thread::hardware_concurrency()));  // platform.md, trap 2
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
