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

namespace {

// A window's metrics as CBOR: per micro-batch, name -> [sum, count, only_when_counted] (CBOR keeps
// a double's bits, NaN included).
std::string encode_metrics(const WindowMetrics& window) {
  nlohmann::json out = nlohmann::json::array();
  for (const MicroBatchMetrics& m : window) {
    nlohmann::json names = nlohmann::json::object();
    for (const auto& [name, s] : m) names[name] = {s.sum, s.count, s.only_when_counted};
    out.push_back(names);
  }
  const std::vector<uint8_t> cbor = nlohmann::json::to_cbor(out);
  return {cbor.begin(), cbor.end()};
}

WindowMetrics decode_metrics(const std::string& bytes) {
  WindowMetrics window;
  for (const nlohmann::json& m : nlohmann::json::from_cbor(bytes)) {
    MicroBatchMetrics& out = window.emplace_back();
    for (const auto& [name, v] : m.items())
      out[name] = {v.at(0).get<double>(), v.at(1).get<double>(), v.at(2).get<bool>()};
  }
  return window;
}

}  // namespace

std::vector<std::map<std::string, double>> merge_rank_metrics(ProcessGroup& group,
                                                              const TrainingObjective& objective,
                                                              const WindowMetrics& mine) {
  WindowMetrics total = mine;
  if (group.world_size() > 1) {
    total.assign(mine.size(), {});
    for (const std::string& bytes : group.all_gather(encode_metrics(mine))) {
      const WindowMetrics theirs = decode_metrics(bytes);
      for (size_t k = 0; k < std::min(theirs.size(), total.size()); ++k) {
        for (const auto& [name, s] : theirs[k]) {
          MetricSum& t = total[k][name];
          t.sum += s.sum;
          t.count += s.count;
          t.only_when_counted = s.only_when_counted;
        }
      }
    }
  }
  std::vector<std::map<std::string, double>> merged(total.size());
  for (size_t k = 0; k < total.size(); ++k) {
    for (const auto& [name, s] : total[k])
      if (s.count > 0 || !s.only_when_counted) merged[k][name] = s.value();
    objective.add_derived_metrics(merged[k]);
  }
  return merged;
}

}  // namespace gemma
