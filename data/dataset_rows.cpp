#include "data/dataset_rows.h"

#include <algorithm>
#include <array>
#include <utility>

#include "io/bounded_json.h"

namespace gemma {
namespace {

using json = nlohmann::json;

std::string found_text(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "a list";
    case json::value_t::object:
      return "an object";
    case json::value_t::discarded:
      return "nothing";
    default:
      return "a number";
  }
}

std::string column_list(const json& row) {
  std::string out;
  for (const auto& item : row.items()) out += (out.empty() ? "" : ", ") + item.key();
  return out.empty() ? "no columns" : "columns " + out;
}

bool has(const json& row, const char* key) { return row.contains(key) && !row[key].is_null(); }

const json& require(const json& row, const char* key, const std::string& where) {
  if (!row.contains(key)) {
    throw RowError(RowProblem::kMissingField,
                   where + ": no \"" + key + "\" column (the row has " + column_list(row) + ")");
  }
  if (row[key].is_null()) {
    throw RowError(RowProblem::kMissingField, where + ": \"" + key + "\" is null");
  }
  return row[key];
}

// parse_chat_messages' InputErrors, sorted into validate-data's reasons by what they say.
RowProblem classify_chat_error(const std::string& message) {
  if (message.find("unknown role") != std::string::npos) return RowProblem::kUnknownRole;
  if (message.find("must come first") != std::string::npos ||
      message.find("must follow") != std::string::npos)
    return RowProblem::kTurnOrder;
  if (message.find("has no string \"role\"") != std::string::npos) return RowProblem::kMissingField;
  return RowProblem::kMistypedField;
}

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

bool empty_content(const json& content) {
  if (content.is_null()) return true;
  if (content.is_string()) return blank(content.get<std::string>());
  if (content.is_array()) {
    for (const json& part : content) {
      if (!part.is_object()) return false;
      const json type = part.value("type", json());
      if (type != "text") return false;  // an image or audio part is content
      const json text = part.value("text", json());
      if (!text.is_string() || !blank(text.get<std::string>())) return false;
    }
    return true;
  }
  return false;
}

// ShareGPT's {"from", "value"} messages as TRL's maybe_convert_to_chatml renames them.
json to_chatml(json messages) {
  if (!messages.is_array()) return messages;
  for (json& m : messages) {
    if (!m.is_object()) continue;
    if (m.contains("from")) {
      m["role"] = m["from"];
      m.erase("from");
    }
    if (m.contains("value")) {
      m["content"] = m["value"];
      m.erase("value");
    }
  }
  return messages;
}

// A list of messages under the chat rules; `name` is the column, for messages.
std::vector<ChatMessage> parse_messages(const json& list, const std::string& where,
                                        const std::string& name) {
  if (!list.is_array() || list.empty()) {
    throw RowError(RowProblem::kMistypedField,
                   where + ": \"" + name + "\" must be a non-empty list of messages (found " +
                       (list.is_array() ? std::string("an empty list") : found_text(list)) + ")");
  }
  std::vector<ChatMessage> messages;
  try {
    messages = parse_chat_messages(list, where + ": " + name);
  } catch (const InputError& e) {
    throw RowError(classify_chat_error(e.what()), e.what());
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "assistant" && m.tool_calls.empty() && m.reasoning.empty() &&
        m.tool_responses.is_null() && empty_content(m.content)) {
      throw RowError(RowProblem::kEmptyModelTurn,
                     where + ": " + name + "[" + std::to_string(i) +
                         "]: an empty model turn (an assistant message needs content, reasoning "
                         "or tool calls)");
    }
  }
  return messages;
}

// A text-or-conversation column: a string, or a list of messages (TRL's is_conversational). A
// continuation's messages are parsed later, joined to the prompt (parse_continuation).
RowPart parse_part(const json& row, const char* key, const std::string& where,
                   bool continuation = false) {
  const json& v = require(row, key, where);
  RowPart part;
  if (v.is_string()) {
    part.text = v.get<std::string>();
  } else if (v.is_array() && continuation && !v.empty()) {
    part.conversational = true;
  } else if (v.is_array()) {
    part.conversational = true;
    part.messages = parse_messages(v, where, key);
  } else {
    throw RowError(RowProblem::kMistypedField, where + ": \"" + key +
                                                   "\" must be a string or a list of messages "
                                                   "(found " +
                                                   found_text(v) + ")");
  }
  return part;
}

// A conversation column that continues the prompt (completion, chosen, rejected): the chat rules
// (turn order) apply to prompt + continuation as one conversation, so it is checked joined.
void parse_continuation(const json& row, const RowPart& prompt, const char* key,
                        const std::string& where, RowPart* part) {
  if (!prompt.conversational || !part->conversational) return;  // require_same_form said so
  json joined = row["prompt"];
  for (const json& m : row[key]) joined.push_back(m);
  const std::vector<ChatMessage> all =
      parse_messages(joined, where, std::string("prompt + ") + key);
  part->messages.assign(all.begin() + static_cast<std::ptrdiff_t>(prompt.messages.size()),
                        all.end());
}

// Columns that go together are both text or both conversations.
void require_same_form(const RowPart& first, const char* first_name, const RowPart& other,
                       const char* other_name, const std::string& where) {
  if (first.conversational == other.conversational) return;
  throw RowError(RowProblem::kMistypedField,
                 where + ": \"" + other_name + "\" must be " +
                     (first.conversational ? "a list of messages" : "a string") + " like \"" +
                     first_name + "\" (found " +
                     (other.conversational ? "a list of messages" : "a string") + ")");
}

void parse_template_columns(const json& row, const std::string& where, DatasetRow* out) {
  if (has(row, "tools")) {
    json tools = row["tools"];
    if (tools.is_string()) {  // TRL: json.loads when the column holds JSON text
      try {
        tools = parse_bounded_json(tools.get<std::string>(), where + ": \"tools\"");
      } catch (const InputError& e) {  // nested too deep
        throw RowError(RowProblem::kMistypedField, e.what());
      } catch (const json::exception&) {
        throw RowError(RowProblem::kMistypedField,
                       where +
                           ": \"tools\" is a string that is not JSON (expected a list of "
                           "function declarations, or the same as JSON text)");
      }
    }
    if (!tools.is_array()) {
      throw RowError(RowProblem::kMistypedField,
                     where + ": \"tools\" must be a list of function declarations (found " +
                         found_text(tools) + ")");
    }
    for (size_t i = 0; i < tools.size(); ++i) {
      if (!tools[i].is_object()) {
        throw RowError(RowProblem::kMistypedField, where + ": tools[" + std::to_string(i) +
                                                       "] must be an object (found " +
                                                       found_text(tools[i]) + ")");
      }
    }
    out->tools = tools;
  }
  if (has(row, "chat_template_kwargs")) {
    const json& kwargs = row["chat_template_kwargs"];
    if (!kwargs.is_object()) {
      throw RowError(RowProblem::kMistypedField,
                     where + ": \"chat_template_kwargs\" must be an object (found " +
                         found_text(kwargs) + ")");
    }
    for (const auto& item : kwargs.items()) {
      bool* flag = item.key() == "enable_thinking"     ? &out->enable_thinking
                   : item.key() == "preserve_thinking" ? &out->preserve_thinking
                                                       : nullptr;
      if (!flag) {
        throw RowError(RowProblem::kMistypedField,
                       where + ": chat_template_kwargs: unknown key \"" + item.key() +
                           "\" (the Gemma 4 template reads enable_thinking and preserve_thinking)");
      }
      if (!item.value().is_boolean()) {
        throw RowError(RowProblem::kMistypedField, where + ": chat_template_kwargs." + item.key() +
                                                       " must be true or false (found " +
                                                       found_text(item.value()) + ")");
      }
      *flag = item.value().get<bool>();
    }
  }
}

// TRL's extract_prompt for a preference row without "prompt": the prompt is the longest common
// prefix of chosen and rejected (characters of strings, whole messages of conversations); when
// the character before the split is a space, the split moves left so the completions start with
// it. As in Python, a pair where one is a prefix of the other splits before the last element of
// the shorter one. Deliberate difference: with no common prefix at all TRL looks at the last
// character (Python's index -1); here the prompt is just empty.
json with_extracted_prompt(const json& row, const std::string& where) {
  const json& chosen = row["chosen"];
  const json& rejected = row["rejected"];
  json out = row;
  if (chosen.is_string() && rejected.is_string()) {
    const std::string& a = chosen.get_ref<const std::string&>();
    const std::string& b = rejected.get_ref<const std::string&>();
    // Python compares code points: the split is at the start of a character (the strings
    // are valid UTF-8; continuation bytes are 10xxxxxx).
    const auto char_start = [&](size_t i) {
      while (i > 0 && i < a.size() && (static_cast<unsigned char>(a[i]) & 0xC0) == 0x80) --i;
      return i;
    };
    const size_t n = std::min(a.size(), b.size());
    size_t i = 0;
    while (i < n && a[i] == b[i]) ++i;
    if (n == 0) {
      i = 0;
    } else if (i == n) {  // no difference: Python's loop variable stays at the last character
      const std::string& shorter = a.size() <= b.size() ? a : b;
      i = shorter.size() - 1;
      while (i > 0 && (static_cast<unsigned char>(shorter[i]) & 0xC0) == 0x80) --i;
    } else {
      i = char_start(i);
    }
    if (i > 0 && a[i - 1] == ' ') --i;
    out["prompt"] = a.substr(0, i);
    out["chosen"] = a.substr(i);
    out["rejected"] = b.substr(i);
  } else if (chosen.is_array() && rejected.is_array()) {
    const size_t n = std::min(chosen.size(), rejected.size());
    size_t i = 0;
    while (i < n && chosen[i] == rejected[i]) ++i;
    if (i == n && n > 0) i = n - 1;
    if (i == 0) {
      throw RowError(RowProblem::kMissingField,
                     where +
                         ": no \"prompt\" column, and \"chosen\" and \"rejected\" do not start "
                         "with the same messages (the implicit prompt is their common start; give "
                         "a \"prompt\")");
    }
    out["prompt"] = json(chosen.begin(), chosen.begin() + static_cast<std::ptrdiff_t>(i));
    out["chosen"] = json(chosen.begin() + static_cast<std::ptrdiff_t>(i), chosen.end());
    out["rejected"] = json(rejected.begin() + static_cast<std::ptrdiff_t>(i), rejected.end());
  }
  return out;  // other types: parse_dataset_row names the mistyped column
}

}  // namespace

const char* dataset_kind_name(DatasetKind kind) {
  switch (kind) {
    case DatasetKind::kText:
      return "text";
    case DatasetKind::kChat:
      return "chat";
    case DatasetKind::kCompletion:
      return "completion";
    case DatasetKind::kPreference:
      return "preference";
    case DatasetKind::kKto:
      return "kto";
  }
  return "text";
}

std::optional<DatasetKind> dataset_kind_from_name(const std::string& name) {
  for (DatasetKind k : {DatasetKind::kText, DatasetKind::kChat, DatasetKind::kCompletion,
                        DatasetKind::kPreference, DatasetKind::kKto}) {
    if (name == dataset_kind_name(k)) return k;
  }
  return std::nullopt;
}

DatasetKind detect_dataset_kind(const json& row, const std::string& where) {
  if (!row.is_object()) {
    throw RowError(RowProblem::kNotAnObject,
                   where + ": expected a JSON object (one row), found " + found_text(row));
  }
  if (row.contains("chosen") && row.contains("rejected")) return DatasetKind::kPreference;
  if (row.contains("prompt") && row.contains("completion"))
    return row.contains("label") ? DatasetKind::kKto : DatasetKind::kCompletion;
  if (row.contains("messages") || row.contains("conversations")) return DatasetKind::kChat;
  if (row.contains("text")) return DatasetKind::kText;
  throw RowError(RowProblem::kUnknownColumns,
                 where +
                     ": expected a dataset row (text; messages; prompt + completion; prompt + "
                     "chosen + rejected; prompt + completion + label), found " +
                     column_list(row));
}

DatasetRow parse_dataset_row(const json& row, DatasetKind kind, const std::string& where) {
  if (!row.is_object()) {
    throw RowError(RowProblem::kNotAnObject,
                   where + ": expected a JSON object (one row), found " + found_text(row));
  }
  // TRL reads "prompt" first and "messages" otherwise, and fails on a row with a prompt but no
  // completion; a row with both is refused here rather than read as either.
  const char* conversation = row.contains("messages") ? "messages" : "conversations";
  if (row.contains("prompt") && row.contains(conversation)) {
    throw RowError(RowProblem::kAmbiguousColumns,
                   where + ": both \"prompt\" and \"" + conversation +
                       "\" (a row is a conversation in \"" + conversation +
                       "\" or a \"prompt\" with its continuation, not both)");
  }
  DatasetRow out;
  out.kind = kind;
  switch (kind) {
    case DatasetKind::kText: {
      const json& text = require(row, "text", where);
      if (!text.is_string()) {
        throw RowError(RowProblem::kMistypedField,
                       where + ": \"text\" must be a string (found " + found_text(text) + ")");
      }
      out.text.text = text.get<std::string>();
      break;
    }
    case DatasetKind::kChat: {
      const char* key =
          has(row, "messages") || !row.contains("conversations") ? "messages" : "conversations";
      const json& list = require(row, key, where);
      out.messages.conversational = true;
      out.messages.messages =
          parse_messages(std::string(key) == "conversations" ? to_chatml(list) : list, where, key);
      out.conversational = true;
      break;
    }
    case DatasetKind::kCompletion:
    case DatasetKind::kKto: {
      out.prompt = parse_part(row, "prompt", where);
      out.completion = parse_part(row, "completion", where, true);
      require_same_form(out.prompt, "prompt", out.completion, "completion", where);
      parse_continuation(row, out.prompt, "completion", where, &out.completion);
      out.conversational = out.prompt.conversational;
      if (kind == DatasetKind::kKto) {
        const json& label = require(row, "label", where);
        if (!label.is_boolean()) {
          throw RowError(
              RowProblem::kMistypedField,
              where + ": \"label\" must be true or false (found " + found_text(label) + ")");
        }
        out.label = label.get<bool>();
      }
      break;
    }
    case DatasetKind::kPreference: {
      if (!has(row, "prompt") && has(row, "chosen") && has(row, "rejected")) {
        return parse_dataset_row(with_extracted_prompt(row, where), kind, where);
      }
      out.chosen = parse_part(row, "chosen", where, true);
      out.rejected = parse_part(row, "rejected", where, true);
      require_same_form(out.chosen, "chosen", out.rejected, "rejected", where);
      out.prompt = parse_part(row, "prompt", where);
      require_same_form(out.prompt, "prompt", out.chosen, "chosen", where);
      parse_continuation(row, out.prompt, "chosen", where, &out.chosen);
      parse_continuation(row, out.prompt, "rejected", where, &out.rejected);
      out.conversational = out.chosen.conversational;
      break;
    }
  }
  if (out.conversational) parse_template_columns(row, where, &out);
  return out;
}

}  // namespace gemma
