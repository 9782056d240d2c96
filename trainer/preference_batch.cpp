#include "trainer/preference_batch.h"

#include <algorithm>

#include "trainer/chunked_cross_entropy.h"

namespace gemma {

SequenceBatch collate_sequences(const std::vector<PromptCompletion>& rows, int64_t pad_id,
                                std::optional<int64_t> max_length, SftTruncation truncation) {
  TORCH_CHECK(!rows.empty(), "collate_sequences: no rows");
  // Each row's kept window [begin, end) of prompt + completion.
  std::vector<std::pair<size_t, size_t>> windows;
  size_t width = 0;
  for (const PromptCompletion& r : rows) {
    const size_t n = r.prompt->size() + r.completion->size();
    size_t begin = 0, end = n;
    if (max_length && n > static_cast<size_t>(*max_length)) {
      const auto keep = static_cast<size_t>(*max_length);
      if (truncation == SftTruncation::kKeepStart) {
        end = keep;
      } else {
        begin = n - keep;
      }
    }
    windows.emplace_back(begin, end);
    width = std::max(width, end - begin);
  }
  const auto opts = torch::TensorOptions().dtype(torch::kInt64);
  const auto count = static_cast<int64_t>(rows.size());
  SequenceBatch batch;
  batch.input_ids = torch::full({count, static_cast<int64_t>(width)}, pad_id, opts);
  batch.labels = torch::full({count, static_cast<int64_t>(width)}, kIgnoreIndex, opts);
  batch.attention_mask = torch::zeros({count, static_cast<int64_t>(width)}, opts);
  batch.completion_tokens = torch::zeros({count}, opts);
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto labels = batch.labels.accessor<int64_t, 2>();
  auto mask = batch.attention_mask.accessor<int64_t, 2>();
  auto completion = batch.completion_tokens.accessor<int64_t, 1>();
  for (int64_t b = 0; b < count; ++b) {
    const PromptCompletion& r = rows[static_cast<size_t>(b)];
    const auto [begin, end] = windows[static_cast<size_t>(b)];
    const size_t prompt_len = r.prompt->size();
    for (size_t t = begin; t < end; ++t) {
      const auto col = static_cast<int64_t>(t - begin);
      const bool in_completion = t >= prompt_len;
      const int32_t id = in_completion ? (*r.completion)[t - prompt_len] : (*r.prompt)[t];
      ids[b][col] = id;
      mask[b][col] = 1;
      if (in_completion) {
        labels[b][col] = id;
        ++completion[b];
      }
    }
    batch.num_tokens += static_cast<int64_t>(end - begin);
  }
  return batch;
}

SequenceBatch collate_preference(const std::vector<const PreferenceExample*>& examples,
                                 int64_t pad_id, std::optional<int64_t> max_length,
                                 SftTruncation truncation) {
  std::vector<PromptCompletion> rows;
  rows.reserve(2 * examples.size());
  for (const PreferenceExample* e : examples) rows.push_back({&e->prompt_ids, &e->chosen_ids});
  for (const PreferenceExample* e : examples) rows.push_back({&e->prompt_ids, &e->rejected_ids});
  return collate_sequences(rows, pad_id, max_length, truncation);
}

}  // namespace gemma
