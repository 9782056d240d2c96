// Named intermediates of a forward pass, as llama.cpp's cb(cur, "attn_norm", il): each step of a
// decoder layer reports its output under a name, so a mismatch with transformers can be traced to
// the first step that differs (`gemma-train logits --trace DIR`). Nothing is kept unless a
// ForwardTrace is alive on this thread; a step then costs one branch.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace gemma {

class ForwardTrace {
 public:
  // Records the steps of decoder layer `layer` (-1: every layer) while alive.
  explicit ForwardTrace(int64_t layer);
  ~ForwardTrace();
  ForwardTrace(const ForwardTrace&) = delete;
  ForwardTrace& operator=(const ForwardTrace&) = delete;

  // "layers.<i>.<step>" -> a float32 CPU copy, in the order the forward computed them.
  const std::vector<std::pair<std::string, torch::Tensor>>& steps() const { return steps_; }

 private:
  friend void trace_step(const torch::Tensor& t, const char* step, int64_t layer);
  int64_t layer_;
  std::vector<std::pair<std::string, torch::Tensor>> steps_;
  ForwardTrace* outer_;
};

// Reports `t` as step `step` of decoder layer `layer` to the active trace, if any.
void trace_step(const torch::Tensor& t, const char* step, int64_t layer);

}  // namespace gemma
