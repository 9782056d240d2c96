#include "model/forward_trace.h"

namespace gemma {

namespace {
thread_local ForwardTrace* active_trace = nullptr;
}  // namespace

ForwardTrace::ForwardTrace(int64_t layer) : layer_(layer), outer_(active_trace) {
  active_trace = this;
}

ForwardTrace::~ForwardTrace() { active_trace = outer_; }

void trace_step(const torch::Tensor& t, const char* step, int64_t layer) {
  ForwardTrace* trace = active_trace;
  if (trace == nullptr || (trace->layer_ >= 0 && trace->layer_ != layer)) return;
  torch::NoGradGuard no_grad;
  trace->steps_.emplace_back("layers." + std::to_string(layer) + "." + step,
                             t.detach().to(torch::kCPU, torch::kFloat32).contiguous());
}

}  // namespace gemma
