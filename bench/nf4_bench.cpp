// NF4 benchmarks (Google Benchmark): dequantization throughput of each implementation against a
// memcpy of the same output size, and an NF4 matmul (dequantize, then matmul) against a dense
// matmul of the same shape. Run: build/bench/nf4_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstring>
#include <thread>

#include "kernels/nf4.h"

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

void BM_QuantizeCpu(benchmark::State& state) {
  torch::manual_seed(0);
  const torch::Tensor w = torch::randn({kRows, kCols}).to(torch::kBFloat16);
  for (auto _ : state) benchmark::DoNotOptimize(quantize_nf4_cpu(w));
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
}

// y = x · Wᵀ for a batch of 512 tokens, W 4096x4096 in bf16.
void BM_MatmulDenseBf16(benchmark::State& state) {
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({512, kCols}).to(torch::kBFloat16);
  const torch::Tensor w = torch::randn({kRows, kCols}).to(torch::kBFloat16);
  for (auto _ : state) benchmark::DoNotOptimize(torch::nn::functional::linear(x, w));
}

void BM_MatmulNf4Bf16(benchmark::State& state) {
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({512, kCols}).to(torch::kBFloat16);
  const Nf4Weight& w = weight(torch::kBFloat16);
  for (auto _ : state)
    benchmark::DoNotOptimize(torch::nn::functional::linear(x, dequantize_nf4(w)));
}

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
BENCHMARK(BM_QuantizeCpu)->UseRealTime();
BENCHMARK(BM_MatmulDenseBf16)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MatmulNf4Bf16)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) {
  at::set_num_threads(
      static_cast<int>(std::thread::hardware_concurrency()));  // platform.md, trap 2
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
