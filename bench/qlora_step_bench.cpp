// One QLoRA training step (forward, chunked causal-LM loss, backward into LoRA adapters) on an NF4
// base against the same step on a dense base of the same dtype, for configs/bench-100m.json.
// Target: the NF4 step at most 1.3x the dense one. Run: build/bench/qlora_step_bench (median of 3
// repetitions after a warm-up step).
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <filesystem>
#include <thread>

#include "kernels/host_allocator.h"
#include "model/gemma4_hf_checkpoint.h"
#include "peft/lora_adapters.h"
#include "trainer/chunked_cross_entropy.h"

namespace gemma {
namespace {

constexpr int64_t kTokens = 512;

// A random bench-100m checkpoint in bf16, written once per run.
const std::filesystem::path& checkpoint() {
  static const std::filesystem::path dir = [] {
    auto path = std::filesystem::temp_directory_path() /
                ("gemma-qlora-bench-" + std::to_string(::getpid()));
    const Gemma4Config c = parse_gemma4_config(*bundled_config_json("bench-100m"), "bench-100m");
    Gemma4ForCausalLM model{nullptr};
    {
      DefaultDtypeGuard guard(torch::kBFloat16);
      model = Gemma4ForCausalLM(c);
    }
    randomize_gemma4(model, 0);
    Gemma4SaveOptions save;
    save.dtype = torch::kBFloat16;
    save_gemma4(model, path, save);
    return path;
  }();
  return dir;
}

void BM_TrainingStep(benchmark::State& state) {
  const bool nf4 = state.range(0) != 0;
  const auto dtype = static_cast<torch::ScalarType>(state.range(1));
  Gemma4LoadOptions options;
  options.dtype = dtype;
  options.nf4_base = nf4 ? Nf4Base::kAlways : Nf4Base::kNever;
  Gemma4ForCausalLM model = load_gemma4(checkpoint(), options).model;
  AdapterSpec spec;
  spec.lora.r = 16;
  spec.lora.alpha = 32;
  attach_adapters(model, spec);
  model->train();
  model->model->set_gradient_checkpointing(true);
  const Gemma4Config& c = model->config();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const torch::Tensor ids = torch::randint(c.vocab_size, {1, kTokens + 1}, gen, torch::kInt64);
  const auto step = [&] {
    Gemma4Input in;
    in.input_ids = ids.narrow(1, 0, kTokens);
    const torch::Tensor hidden = model->model->forward(in).reshape({kTokens, c.hidden_size});
    const torch::Tensor loss = chunked_causal_lm_loss(hidden, model->lm_head_weight(),
                                                      ids.narrow(1, 1, kTokens).reshape({kTokens}),
                                                      c.final_logit_softcapping, 256);
    loss.backward();
    for (auto& [name, p] : trainable_parameters(model)) p.mutable_grad().reset();
  };
  step();  // warm-up: first-touch allocations
  for (auto _ : state) step();
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.SetLabel(std::string(nf4 ? "NF4 base" : "dense base") + ", " + c10::toString(dtype));
}

BENCHMARK(BM_TrainingStep)
    ->ArgsProduct({{0, 1}, {static_cast<int>(torch::kFloat32), static_cast<int>(torch::kBFloat16)}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(3.0)
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) {
  gemma::keep_large_host_allocations();  // as gemma-train runs
  at::set_num_threads(
      static_cast<int>(std::thread::hardware_concurrency()));  // platform.md, trap 2
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::filesystem::remove_all(gemma::checkpoint());
  return 0;
}
