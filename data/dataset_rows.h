// DatasetRow: one JSONL row in one of TRL's dataset shapes (trl/data_utils.py; qlora-formats.md
// §4.1), checked and typed: the columns each shape needs, their types, and conversations that
// follow the chat rules (parse_chat_messages plus: no empty model turn). Shared by the SFT reader,
// validate-data and the preference trainers.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/jsonl_reader.h"
#include "data/sft_dataset.h"

namespace gemma {

// A text column or a conversation column of a row: plain text, or messages (conversational).
struct RowPart {
  bool conversational = false;
  std::string text;
  std::vector<ChatMessage> messages;
};

struct DatasetRow {
  DatasetKind kind = DatasetKind::kText;
  // kText: text. kChat: messages. kCompletion, kKto: prompt + completion. kPreference: prompt
  // + chosen + rejected; without a "prompt" column the prompt is the common start of chosen and
  // rejected, cut off both (TRL's extract_prompt).
  RowPart text, messages, prompt, completion, chosen, rejected;
  bool label = false;  // kKto: desirable
  bool conversational = false;
  // Conversations: `tools` (a list, or the same as a JSON string) and chat_template_kwargs.
  nlohmann::json tools = nlohmann::json::array();
  bool enable_thinking = false;
  bool preserve_thinking = false;
};

const char* dataset_kind_name(DatasetKind kind);  // text, chat, completion, preference, kto
std::optional<DatasetKind> dataset_kind_from_name(const std::string& name);

// The shape a row's columns name, as TRL tells them apart: chosen + rejected -> preference,
// prompt + completion + label -> kto, prompt + completion -> completion, messages (or
// ShareGPT's conversations) -> chat, text -> text. A row that is no JSON object or names none of
// these is a RowError.
DatasetKind detect_dataset_kind(const nlohmann::json& row, const std::string& where);

// Checks and types `row` as `kind`. RowError naming `where` (file:line) and the column on a
// missing or mistyped column, an unknown role, turns out of order or an empty model turn.
DatasetRow parse_dataset_row(const nlohmann::json& row, DatasetKind kind, const std::string& where);

}  // namespace gemma
