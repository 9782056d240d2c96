#include "model/kv_cache.h"

#include <algorithm>

namespace gemma {

namespace {

// A buffer like `t` [B, H, *, d] with `capacity` slots in dim 2, the first `kept` copied from
// t's slots [begin, begin + kept).
torch::Tensor regrown(const torch::Tensor& t, int64_t begin, int64_t kept, int64_t capacity) {
  torch::Tensor grown = torch::empty({t.size(0), t.size(1), capacity, t.size(3)}, t.options());
  if (kept > 0) grown.narrow(2, 0, kept).copy_(t.narrow(2, begin, kept));
  return grown;
}

}  // namespace

KvCache::KvCache(const Gemma4Config& config)
    : layers_(config.layers),
      sliding_window_(config.sliding_window),
      entries_(config.layers.size()) {}

int64_t KvCache::kept_tokens(LayerType type) const {
  if (type == LayerType::kFull) return seen_;
  return std::min(seen_, sliding_window_ - 1);
}

torch::Tensor KvCache::key_valid() const {
  return key_valid_.defined() ? key_valid_.narrow(1, 0, seen_) : torch::Tensor();
}

void KvCache::make_room(Entry& e, int64_t tokens, const torch::Tensor& like) {
  c10::InferenceMode inference;  // the buffers are always inference tensors, updated as such
  const int64_t need = e.length + tokens;
  if (!e.k.defined()) {
    e.k = regrown(like, 0, 0, 2 * need);
    e.v = regrown(like, 0, 0, 2 * need);
    e.begin = 0;
    return;
  }
  const int64_t capacity = e.k.size(2);
  if (e.begin + need <= capacity) return;
  if (need > capacity / 2) {
    // grow: twice what is needed, so that a sliding layer moves its tokens only every W steps
    e.k = regrown(e.k, e.begin, e.length, 2 * need);
    e.v = regrown(e.v, e.begin, e.length, 2 * need);
  } else if (e.length > 0) {
    // move the kept tokens back to the front (through a copy: the ranges may overlap)
    e.k.narrow(2, 0, e.length).copy_(e.k.narrow(2, e.begin, e.length).clone());
    e.v.narrow(2, 0, e.length).copy_(e.v.narrow(2, e.begin, e.length).clone());
  }
  e.begin = 0;
}

void KvCache::keep_after_step(int layer, int64_t tokens) {
  Entry& e = entries_[layer];
  e.length += tokens;
  if (layers_[layer].type != LayerType::kSliding || e.length <= sliding_window_ - 1) return;
  const int64_t drop = e.length - (sliding_window_ - 1);
  e.begin += drop;
  e.length -= drop;
  // After a long prompt: back to room for two windows (views handed out keep the old buffer
  // alive until they are dropped).
  if (e.k.size(2) > 2 * sliding_window_) {
    c10::InferenceMode inference;
    e.k = regrown(e.k, e.begin, e.length, 2 * sliding_window_);
    e.v = regrown(e.v, e.begin, e.length, 2 * sliding_window_);
    e.begin = 0;
  }
}

std::pair<torch::Tensor, torch::Tensor> KvCache::append(int layer, const torch::Tensor& k,
                                                        const torch::Tensor& v) {
  TORCH_CHECK(!layers_.at(layer).kv_shared, "KvCache: layer ", layer, " is KV-shared");
  Entry& e = entries_[layer];
  const int64_t tokens = k.size(2);
  TORCH_CHECK(!e.k.defined() || (e.k.size(0) == k.size(0) && e.k.size(1) == k.size(1) &&
                                 e.k.size(3) == k.size(3) && e.k.scalar_type() == k.scalar_type()),
              "KvCache: layer ", layer, " gets K/V of another shape or dtype");
  make_room(e, tokens, k);
  c10::InferenceMode inference;
  const int64_t end = e.begin + e.length;
  e.k.narrow(2, end, tokens).copy_(k);
  e.v.narrow(2, end, tokens).copy_(v);
  std::pair<torch::Tensor, torch::Tensor> seen = {e.k.narrow(2, e.begin, e.length + tokens),
                                                  e.v.narrow(2, e.begin, e.length + tokens)};
  keep_after_step(layer, tokens);
  return seen;
}

void KvCache::reserve(int64_t tokens) {
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (layers_[i].kv_shared) continue;
    Entry& e = entries_[i];
    TORCH_CHECK(e.k.defined(), "KvCache::reserve: layer ", i, " has no entry yet");
    make_room(e, tokens, e.k);
  }
}

void KvCache::advance(int64_t tokens) {
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (!layers_[i].kv_shared) keep_after_step(static_cast<int>(i), tokens);
  }
}

void KvCache::commit(const torch::Tensor& valid) {
  c10::InferenceMode inference;
  const torch::Tensor v = valid.to(torch::kCPU, torch::kBool);
  const int64_t tokens = v.size(1);
  if (!key_valid_.defined()) {
    key_valid_ = torch::zeros({v.size(0), std::max<int64_t>(64, 2 * tokens)}, v.options());
  } else if (seen_ + tokens > key_valid_.size(1)) {
    torch::Tensor grown =
        torch::zeros({key_valid_.size(0), 2 * (seen_ + tokens)}, key_valid_.options());
    grown.narrow(1, 0, seen_).copy_(key_valid_.narrow(1, 0, seen_));
    key_valid_ = grown;
  }
  key_valid_.narrow(1, seen_, tokens).copy_(v);
  seen_ += tokens;
}

int64_t KvCache::nbytes() const {
  int64_t total = 0;
  for (const Entry& e : entries_) {
    if (e.k.defined()) total += e.k.nbytes() + e.v.nbytes();
  }
  return total;
}

}  // namespace gemma
