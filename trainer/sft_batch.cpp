#include "trainer/sft_batch.h"

#include <algorithm>

#include "trainer/chunked_cross_entropy.h"

namespace gemma {

int64_t sft_loss_tokens(const SftExample& example) {
  int64_t n = 0;
  for (size_t t = 1; t < example.labels_mask.size(); ++t) n += example.labels_mask[t] != 0;
  return n;
}

SftBatch collate_sft(const std::vector<const SftExample*>& examples, int64_t pad_id,
                     bool padding_free) {
  TORCH_CHECK(!examples.empty(), "collate_sft: no examples");
  SftBatch batch;
  const auto opts = torch::TensorOptions().dtype(torch::kInt64);
  if (padding_free) {
    int64_t total = 0;
    for (const SftExample* e : examples) total += static_cast<int64_t>(e->input_ids.size());
    batch.input_ids = torch::empty({1, total}, opts);
    batch.labels = torch::empty({1, total}, opts);
    batch.position_ids = torch::empty({1, total}, opts);
    auto ids = batch.input_ids.accessor<int64_t, 2>();
    auto labels = batch.labels.accessor<int64_t, 2>();
    auto pos = batch.position_ids.accessor<int64_t, 2>();
    int64_t at = 0;
    for (const SftExample* e : examples) {
      std::vector<int32_t> lengths = e->seq_lengths;
      if (lengths.empty()) lengths.push_back(static_cast<int32_t>(e->input_ids.size()));
      size_t t = 0;
      for (const int32_t len : lengths) {
        for (int32_t p = 0; p < len; ++p, ++t, ++at) {
          ids[0][at] = e->input_ids[t];
          pos[0][at] = p;
          // TRL: the label at every position 0 is -100 (a document never predicts from the one
          // before it).
          labels[0][at] = (p != 0 && e->labels_mask[t] != 0) ? e->input_ids[t] : kIgnoreIndex;
        }
      }
    }
    batch.num_tokens = total;
  } else {
    size_t width = 0;
    for (const SftExample* e : examples) width = std::max(width, e->input_ids.size());
    const auto rows = static_cast<int64_t>(examples.size());
    const auto cols = static_cast<int64_t>(width);
    batch.input_ids = torch::full({rows, cols}, pad_id, opts);
    batch.labels = torch::full({rows, cols}, kIgnoreIndex, opts);
    batch.attention_mask = torch::zeros({rows, cols}, opts);
    auto ids = batch.input_ids.accessor<int64_t, 2>();
    auto labels = batch.labels.accessor<int64_t, 2>();
    auto mask = batch.attention_mask.accessor<int64_t, 2>();
    for (int64_t b = 0; b < rows; ++b) {
      const SftExample& e = *examples[static_cast<size_t>(b)];
      for (size_t t = 0; t < e.input_ids.size(); ++t) {
        const auto col = static_cast<int64_t>(t);
        ids[b][col] = e.input_ids[t];
        mask[b][col] = 1;
        if (e.labels_mask[t] != 0) labels[b][col] = e.input_ids[t];
      }
      batch.num_tokens += static_cast<int64_t>(e.input_ids.size());
    }
  }
  batch.loss_tokens =
      (batch.labels.narrow(1, 1, batch.labels.size(1) - 1) != kIgnoreIndex).sum().item<int64_t>();
  return batch;
}

}  // namespace gemma
