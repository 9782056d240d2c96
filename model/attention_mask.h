// Which keys each query may attend to (gemma4-architecture.md §5.1): causal by sequence index,
// within the sliding window on sliding layers (a query sees itself and W-1 earlier tokens), never
// a padding key, and, for packed rows, only keys of the same document.
#pragma once

#include <optional>

#include <torch/torch.h>

namespace gemma {

struct AttentionMaskSpec {
  torch::Tensor query_index;    // [T] absolute sequence index of each query (int64)
  torch::Tensor key_index;      // [Tk] absolute sequence index of each key (int64)
  torch::Tensor key_valid;      // [B, Tk] bool: false for padding keys
  torch::Tensor query_segment;  // [B, T] document id per query, or undefined (one document)
  torch::Tensor key_segment;    // [B, Tk], defined with query_segment
  std::optional<int64_t> sliding_window;
};

// [B, 1, T, Tk] bool, true where attention is allowed.
torch::Tensor build_attention_mask(const AttentionMaskSpec& spec);

// Document ids of packed rows: a new document starts wherever a position does not follow its
// predecessor by exactly one (as transformers' find_packed_sequence_indices). [B, T] -> [B, T].
torch::Tensor packed_document_ids(const torch::Tensor& position_ids);

}  // namespace gemma
