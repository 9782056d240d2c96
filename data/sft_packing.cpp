// pack_sft_examples: TRL 1.16's pack_dataset (trl/data_utils.py `_pack_bfd` with
// on_seq_length_overflow="truncate", `_pack_wrapped`), batch by batch as datasets.map(batched=True)
// hands it the rows.
#include <algorithm>
#include <deque>
#include <map>
#include <numeric>

#include "data/sft_dataset.h"
#include "io/input_error.h"

namespace gemma {
namespace {

// Best fit decreasing over one batch. TRL keeps the open bins' free space in a segment tree and a
// FIFO of bins per free-space value; the smallest free space that still fits is a lower_bound in
// an ordered map of the same FIFOs.
void pack_bfd_batch(const std::vector<SftExample>& examples, size_t begin, size_t end,
                    int64_t max_length, std::vector<SftExample>* out) {
  std::vector<size_t> order;  // non-empty rows, as TRL filters empty sequences first
  for (size_t i = begin; i < end; ++i) {
    if (!examples[i].input_ids.empty()) order.push_back(i);
  }
  const auto length = [&](size_t i) {
    return std::min<int64_t>(static_cast<int64_t>(examples[i].input_ids.size()), max_length);
  };
  // pyarrow's sort is stable: equal lengths stay in dataset order.
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return length(a) > length(b); });

  std::vector<std::vector<size_t>> bins;                // rows per bin, in creation order
  std::map<int64_t, std::deque<size_t>> bins_by_space;  // free space -> bins, first come first
  for (const size_t row : order) {
    const int64_t len = length(row);
    auto fit = bins_by_space.lower_bound(len);
    size_t bin = 0;
    int64_t space = max_length;
    if (fit != bins_by_space.end()) {
      space = fit->first;
      bin = fit->second.front();
      fit->second.pop_front();
      if (fit->second.empty()) bins_by_space.erase(fit);
    } else {
      bin = bins.size();
      bins.emplace_back();
    }
    bins[bin].push_back(row);
    space -= len;
    if (space > 0) bins_by_space[space].push_back(bin);
  }

  for (const std::vector<size_t>& rows : bins) {
    SftExample packed;
    packed.origin = examples[rows.front()].origin;
    for (const size_t row : rows) {
      const SftExample& e = examples[row];
      const auto len = static_cast<std::ptrdiff_t>(length(row));
      const size_t start = packed.input_ids.size();
      packed.input_ids.insert(packed.input_ids.end(), e.input_ids.begin(),
                              e.input_ids.begin() + len);
      packed.labels_mask.insert(packed.labels_mask.end(), e.labels_mask.begin(),
                                e.labels_mask.begin() + len);
      packed.labels_mask[start] = 0;  // the collator: label -100 where position_ids == 0
      packed.seq_lengths.push_back(static_cast<int32_t>(len));
    }
    out->push_back(std::move(packed));
  }
}

// The batch's tokens concatenated and cut every max_length tokens (documents cross rows).
void pack_wrapped_batch(const std::vector<SftExample>& examples, size_t begin, size_t end,
                        int64_t max_length, std::vector<SftExample>* out) {
  SftExample current;
  for (size_t i = begin; i < end; ++i) {
    const SftExample& e = examples[i];
    for (size_t t = 0; t < e.input_ids.size(); ++t) {
      if (current.input_ids.empty()) current.origin = e.origin;
      current.input_ids.push_back(e.input_ids[t]);
      current.labels_mask.push_back(e.labels_mask[t]);
      if (static_cast<int64_t>(current.input_ids.size()) == max_length) {
        current.seq_lengths = {static_cast<int32_t>(max_length)};
        out->push_back(std::move(current));
        current = SftExample();
      }
    }
  }
  if (!current.input_ids.empty()) {
    current.seq_lengths = {static_cast<int32_t>(current.input_ids.size())};
    out->push_back(std::move(current));
  }
}

}  // namespace

std::vector<SftExample> pack_sft_examples(const std::vector<SftExample>& examples,
                                          int64_t max_length, SftPacking packing) {
  if (packing == SftPacking::kNone) return examples;
  if (max_length <= 0) {
    throw InputError("packing needs a positive max_length (found " + std::to_string(max_length) +
                     ")");
  }
  std::vector<SftExample> out;
  for (size_t begin = 0; begin < examples.size(); begin += kSftPackingBatchRows) {
    const size_t end = std::min(examples.size(), begin + kSftPackingBatchRows);
    if (packing == SftPacking::kBfd) {
      pack_bfd_batch(examples, begin, end, max_length, &out);
    } else {
      pack_wrapped_batch(examples, begin, end, max_length, &out);
    }
  }
  return out;
}

}  // namespace gemma
