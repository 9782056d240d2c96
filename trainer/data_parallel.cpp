#include "trainer/data_parallel.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace gemma {

std::vector<int64_t> rank_rows(const std::vector<int64_t>& rows, int rank, int world_size,
                               int64_t per_rank) {
  const auto n = static_cast<int64_t>(rows.size());
  int64_t begin = 0, end = 0;
  if (n >= per_rank * world_size) {
    begin = per_rank * rank;
    end = begin + per_rank;
  } else {
    begin = n * rank / world_size;
    end = n * (rank + 1) / world_size;
  }
  return {rows.begin() + begin, rows.begin() + end};
}

void all_reduce_gradients(ProcessGroup& group, const NamedTensors& params, int64_t bucket_bytes) {
  if (group.world_size() == 1) return;
  const int64_t bucket_elems = std::max<int64_t>(1, bucket_bytes / 4);
  size_t i = 0;
  while (i < params.size()) {
    // The parameters [i, j) fill one bucket (a parameter larger than a bucket gets its own).
    size_t j = i;
    int64_t elems = 0;
    while (j < params.size() && (j == i || elems + params[j].second.numel() <= bucket_elems)) {
      elems += params[j].second.numel();
      ++j;
    }
    const torch::Device device = params[i].second.device();
    torch::Tensor bucket = torch::empty({elems}, torch::dtype(torch::kFloat32).device(device));
    int64_t offset = 0;
    for (size_t k = i; k < j; ++k) {
      const torch::Tensor& p = params[k].second;
      torch::Tensor slot = bucket.narrow(0, offset, p.numel());
      if (p.grad().defined()) {
        slot.copy_(p.grad().reshape({-1}));
      } else {
        slot.zero_();
      }
      offset += p.numel();
    }
    group.all_reduce_sum(bucket);
    offset = 0;
    for (size_t k = i; k < j; ++k) {
      torch::Tensor p = params[k].second;
      const torch::Tensor summed = bucket.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(summed);
      } else {
        p.mutable_grad() = summed.to(p.scalar_type()).clone();
      }
      offset += p.numel();
    }
    i = j;
  }
}

WindowMetrics merge_rank_metrics(ProcessGroup& group, const WindowMetrics& mine) {
  if (group.world_size() == 1) return mine;
  const std::vector<std::string> all = group.all_gather(nlohmann::json(mine).dump());
  std::vector<std::map<std::string, std::pair<double, int64_t>>> sums(mine.size());
  for (const std::string& text : all) {
    const WindowMetrics theirs = nlohmann::json::parse(text).get<WindowMetrics>();
    for (size_t k = 0; k < std::min(theirs.size(), sums.size()); ++k) {
      for (const auto& [name, value] : theirs[k]) {
        auto& [sum, count] = sums[k][name];
        sum += value;
        ++count;
      }
    }
  }
  WindowMetrics merged(mine.size());
  for (size_t k = 0; k < sums.size(); ++k) {
    for (const auto& [name, sum_count] : sums[k])
      merged[k][name] = sum_count.first / static_cast<double>(sum_count.second);
  }
  return merged;
}

}  // namespace gemma
