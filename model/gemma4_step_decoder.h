// Gemma4StepDecoder: decoding on the CPU, one token per sequence a step, the whole step in one
// parallel region over raw buffers, as llama.cpp runs a token in one thread-pool dispatch. The
// LibTorch forward spends a decoded token of a small model mostly around its products: ~20 ops a
// layer, each with its own dispatch, allocation and parallel region. This computes what
// Gemma4ForCausalLM computes with a KvCache (gemma4-architecture.md §2, §5.3), rounding to bf16
// where the LibTorch path makes a bf16 tensor, and attention as its fused kernel does (float32
// scores and softmax); the LibTorch path is the reference it is tested against
// (tests/model/step_decoder_test.cpp). Prompts are prefilled by the LibTorch path, where batched
// products dominate; both write the same KvCache.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "kernels/rows_product.h"
#include "model/gemma4_model.h"
#include "model/kv_cache.h"

namespace gemma {

class Gemma4StepDecoder {
 public:
  // Why `model` cannot decode through it, or nothing when it can: it needs a CPU model computing
  // in float32 or bf16 with a CPU that has AVX2 + FMA, fused (sdpa) attention, dense weights in
  // the compute dtype or NF4 weights of whole 64-blocks, no MoE block and no adapter attached.
  static std::optional<std::string> unsupported_reason(Gemma4ForCausalLM& model);

  // Reads the model's weights in place (the model must outlive the decoder and stay unchanged).
  // `code` picks the products' CPU code (tests, benchmarks); default: the best here.
  explicit Gemma4StepDecoder(Gemma4ForCausalLM& model, std::optional<RowsCode> code = {});
  ~Gemma4StepDecoder();
  Gemma4StepDecoder(const Gemma4StepDecoder&) = delete;
  Gemma4StepDecoder& operator=(const Gemma4StepDecoder&) = delete;

  // Feeds tokens[b] at RoPE position positions[b] for each of the B sequences in `cache` (which
  // a prefill through the model started, with B rows) and returns the logits [B, vocab] as
  // float32 (bf16 values for a bf16 model), after the final softcap. The cache keeps the tokens.
  torch::Tensor step(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
                     KvCache& cache);

  RowsCode code() const { return code_; }
  // How many float32 weights it reads as bf16, their values being bf16 (a float32 model loaded
  // from a bf16 checkpoint): each then costs half the bytes a token.
  int narrowed_weights() const { return narrowed_weights_; }

 private:
  struct Plan;
  struct Workspace;
  class StepThread;

  void add_nf4_block_tables(Plan& p);
  void narrow_bf16_exact_weights(Plan& p);

  std::unique_ptr<Plan> plan_;
  std::unique_ptr<Workspace> workspace_;
  RowsCode code_;
  int narrowed_weights_ = 0;
};

}  // namespace gemma
