#include "data/sft_tokenization.h"

namespace gemma {
namespace {

void append(std::vector<int>* ids, const std::vector<int>& more) {
  ids->insert(ids->end(), more.begin(), more.end());
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string with_eos(const std::string& text, const std::string& eos_token) {
  return ends_with(text, eos_token) ? text : text + eos_token;
}

std::vector<int> encode_text_with_bos(const Tokenizer& tokenizer, const std::string& text) {
  const int bos = tokenizer.require_special("<bos>");
  std::vector<int> ids = {bos};
  // transformers splits the text on its added tokens first (leftmost match); Gemma's are all
  // `<...>` without inner angle brackets, so at each '<' the only candidate ends at the next '>'.
  size_t start = 0;
  size_t open = text.find('<');
  while (open != std::string::npos) {
    const size_t close = text.find('>', open + 1);
    if (close == std::string::npos) break;
    const size_t next_open = text.find('<', open + 1);
    if (next_open < close) {
      open = next_open;
      continue;
    }
    const std::optional<int> id = tokenizer.special_id(text.substr(open, close - open + 1));
    if (id && tokenizer.is_control(*id)) {
      append(&ids, tokenizer.encode(text.substr(start, open - start)));
      if (!(*id == bos && ids.size() == 1)) ids.push_back(*id);
      start = close + 1;
    }
    open = text.find('<', close + 1);
  }
  append(&ids, tokenizer.encode(text.substr(start)));
  return ids;
}

size_t common_prefix_length(const std::vector<int>& a, const std::vector<int>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

ChatTokens tokenize_conversation(const std::vector<ChatMessage>& messages, const DatasetRow& row,
                                 const Tokenizer& tokenizer, const SftDataOptions& options,
                                 bool add_generation_prompt) {
  ChatOptions chat;
  chat.add_generation_prompt = add_generation_prompt;
  chat.enable_thinking = row.enable_thinking;
  chat.preserve_thinking = row.preserve_thinking;
  chat.empty_thought_channel = options.empty_thought_channel;
  chat.tools = row.tools;
  return tokenize_chat(render_chat(messages, chat), tokenizer);
}

SftExample tokenize_sft_row(const DatasetRow& row, const Tokenizer& tokenizer,
                            const SftDataOptions& options, bool completion_only_loss,
                            const std::string& where) {
  if (options.assistant_only_loss && !row.conversational) {
    throw RowError(RowProblem::kMistypedField,
                   where +
                       ": assistant_only_loss applies to conversational rows (lists of "
                       "messages); this row is plain text");
  }
  SftExample out;
  out.origin = where;
  std::vector<uint8_t> completion_mask;  // empty: not applicable
  std::vector<uint8_t> assistant_mask;
  std::vector<int> ids;
  switch (row.kind) {
    case DatasetKind::kText:
      ids = encode_text_with_bos(tokenizer, with_eos(row.text.text, options.eos_token));
      break;
    case DatasetKind::kChat: {
      ChatTokens t = tokenize_conversation(row.messages.messages, row, tokenizer, options, false);
      ids = std::move(t.ids);
      if (options.assistant_only_loss) assistant_mask = std::move(t.trainable);
      break;
    }
    case DatasetKind::kCompletion: {
      std::vector<int> prompt_ids;
      if (row.conversational) {
        prompt_ids = tokenize_conversation(row.prompt.messages, row, tokenizer, options, true).ids;
        std::vector<ChatMessage> all = row.prompt.messages;
        all.insert(all.end(), row.completion.messages.begin(), row.completion.messages.end());
        ChatTokens t = tokenize_conversation(all, row, tokenizer, options, false);
        ids = std::move(t.ids);
        if (options.assistant_only_loss) assistant_mask = std::move(t.trainable);
      } else {
        prompt_ids = encode_text_with_bos(tokenizer, row.prompt.text);
        ids = encode_text_with_bos(
            tokenizer, row.prompt.text + with_eos(row.completion.text, options.eos_token));
      }
      const size_t prompt_len = common_prefix_length(prompt_ids, ids);
      completion_mask.assign(ids.size(), 1);
      std::fill(completion_mask.begin(),
                completion_mask.begin() + static_cast<std::ptrdiff_t>(prompt_len), 0);
      break;
    }
    case DatasetKind::kPreference:
    case DatasetKind::kKto:
      throw InputError(where +
                       ": SFT takes text, messages or prompt/completion rows; this row is " +
                       dataset_kind_name(row.kind));
  }
  if (options.assistant_only_loss &&
      std::find(assistant_mask.begin(), assistant_mask.end(), 1) == assistant_mask.end()) {
    throw RowError(RowProblem::kNoTrainableTokens,
                   where +
                       ": no assistant tokens to train on (assistant_only_loss trains on the "
                       "model's own tokens; this conversation has no assistant message)");
  }
  out.labels_mask.assign(ids.size(), 1);
  for (size_t t = 0; t < ids.size(); ++t) {
    if (completion_only_loss && !completion_mask.empty() && !completion_mask[t])
      out.labels_mask[t] = 0;
    if (!assistant_mask.empty() && !assistant_mask[t]) out.labels_mask[t] = 0;
  }
  out.input_ids.assign(ids.begin(), ids.end());
  out.seq_lengths = {static_cast<int32_t>(out.input_ids.size())};
  return out;
}

}  // namespace gemma
