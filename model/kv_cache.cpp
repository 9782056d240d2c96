#include "model/kv_cache.h"

#include <algorithm>

namespace gemma {

KvCache::KvCache(const Gemma4Config& config)
    : layers_(config.layers),
      sliding_window_(config.sliding_window),
      entries_(config.layers.size()) {}

int64_t KvCache::kept_tokens(LayerType type) const {
  if (type == LayerType::kFull) return seen_;
  return std::min(seen_, sliding_window_ - 1);
}

std::pair<torch::Tensor, torch::Tensor> KvCache::append(int layer, const torch::Tensor& k,
                                                        const torch::Tensor& v) {
  TORCH_CHECK(!layers_.at(layer).kv_shared, "KvCache: layer ", layer, " is KV-shared");
  Entry& e = entries_[layer];
  torch::Tensor keys = e.k.defined() ? torch::cat({e.k, k}, 2) : k;
  torch::Tensor values = e.v.defined() ? torch::cat({e.v, v}, 2) : v;
  if (layers_[layer].type == LayerType::kSliding && keys.size(2) > sliding_window_ - 1) {
    const int64_t keep = sliding_window_ - 1;
    e.k = keys.narrow(2, keys.size(2) - keep, keep).clone();
    e.v = values.narrow(2, values.size(2) - keep, keep).clone();
  } else {
    e.k = keys;
    e.v = values;
  }
  return {keys, values};
}

void KvCache::commit(const torch::Tensor& valid) {
  const torch::Tensor v = valid.to(torch::kBool);
  key_valid_ = key_valid_.defined() ? torch::cat({key_valid_, v}, 1) : v;
  seen_ += valid.size(1);
}

int64_t KvCache::nbytes() const {
  int64_t total = 0;
  for (const Entry& e : entries_) {
    if (e.k.defined()) total += e.k.nbytes() + e.v.nbytes();
  }
  return total;
}

}  // namespace gemma
