#include "data/chat_template.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "data/jsonl_reader.h"
#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {
using json = nlohmann::json;

namespace {

constexpr const char* kQuote = "<|\"|>";  // Gemma 4's string delimiter token in tool syntax

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Jinja's `trim` (ASCII whitespace).
std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Jinja's `dictsort`: keys compared case-insensitively.
std::vector<std::string> sorted_keys(const json& object) {
  std::vector<std::string> keys;
  for (auto it = object.begin(); it != object.end(); ++it) keys.push_back(it.key());
  std::stable_sort(keys.begin(), keys.end(),
                   [](const std::string& a, const std::string& b) { return lower(a) < lower(b); });
  return keys;
}

// Jinja truthiness of a JSON value (missing/null, false, 0, "", [] and {} are false).
bool truthy(const json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0.0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return true;
}

const json& field(const json& object, const char* key) {
  static const json kNull;
  if (!object.is_object()) return kNull;
  const auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

std::string string_or_empty(const json& v) { return v.is_string() ? v.get<std::string>() : ""; }

// How `{{ value }}` prints a scalar that is not a string.
std::string scalar_text(const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";  // Python's str()
  if (v.is_null()) return "None";
  return v.dump();
}

// The template's `strip_thinking`: drop every `<|channel>...<channel|>` block, then trim.
std::string strip_thinking(const std::string& text) {
  std::string result;
  size_t start = 0;
  while (true) {
    const size_t close = text.find("<channel|>", start);
    const std::string part =
        text.substr(start, close == std::string::npos ? std::string::npos : close - start);
    const size_t open = part.find("<|channel>");
    result += open == std::string::npos ? part : part.substr(0, open);
    if (close == std::string::npos) break;
    start = close + std::string("<channel|>").size();
  }
  return trim(result);
}

class Renderer {
 public:
  void text(const std::string& t) {
    if (t.empty()) return;
    if (!out_.empty() && !out_.back().control && out_.back().message == message_ &&
        out_.back().trainable == trainable_) {
      out_.back().text += t;
    } else {
      out_.push_back({t, false, message_, trainable_});
    }
  }
  void control(const std::string& token) { out_.push_back({token, true, message_, trainable_}); }
  void quoted(const std::string& s) {
    control(kQuote);
    text(s);
    control(kQuote);
  }
  void attribute(int message, bool trainable) {
    message_ = message;
    trainable_ = trainable;
  }
  std::vector<ChatSegment>& segments() { return out_; }

  // format_argument(argument, escape_keys)
  void argument(const json& v, bool escape_keys) {
    if (v.is_null()) {
      text("null");
    } else if (v.is_string()) {
      quoted(v.get<std::string>());
    } else if (v.is_boolean()) {
      text(v.get<bool>() ? "true" : "false");
    } else if (v.is_object()) {
      text("{");
      bool first = true;
      for (const std::string& key : sorted_keys(v)) {
        if (!first) text(",");
        first = false;
        if (escape_keys) {
          quoted(key);
        } else {
          text(key);
        }
        text(":");
        argument(v[key], escape_keys);
      }
      text("}");
    } else if (v.is_array()) {
      text("[");
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) text(",");
        argument(v[i], escape_keys);
      }
      text("]");
    } else {
      text(scalar_text(v));
    }
  }

  void comma(bool& add_comma) {
    if (add_comma) {
      text(",");
    } else {
      add_comma = true;
    }
  }

  void quoted_list(const json& items) {
    text("[");
    bool first = true;
    for (const json& item : items) {
      if (!first) text(",");
      first = false;
      control(kQuote);
      text(item.is_string() ? item.get<std::string>() : scalar_text(item));
      control(kQuote);
    }
    text("]");
  }

  // format_parameters(properties, required, filter_keys)
  void parameters(const json& properties, bool filter_keys) {
    static const std::set<std::string> kStandard = {"description", "type", "properties", "required",
                                                    "nullable"};
    bool found_first = false;
    if (!properties.is_object()) return;
    for (const std::string& key : sorted_keys(properties)) {
      const json& value = properties[key];
      if (filter_keys && kStandard.count(key)) continue;
      bool add_comma = false;
      if (found_first) text(",");
      found_first = true;
      text(key + ":{");
      if (truthy(field(value, "description"))) {
        text("description:");
        quoted(string_or_empty(field(value, "description")));
        add_comma = true;
      }
      const std::string type = upper(string_or_empty(field(value, "type")));
      if (type == "STRING") {
        if (truthy(field(value, "enum"))) {
          comma(add_comma);
          text("enum:");
          argument(field(value, "enum"), true);
        }
      } else if (type == "ARRAY") {
        const json& items = field(value, "items");
        if (items.is_object() && !items.empty()) {
          comma(add_comma);
          text("items:{");
          bool items_first = true;
          for (const std::string& item_key : sorted_keys(items)) {
            const json& item_value = items[item_key];
            if (item_value.is_null()) continue;
            if (!items_first) text(",");
            items_first = false;
            if (item_key == "properties") {
              text("properties:{");
              if (item_value.is_object()) parameters(item_value, false);
              text("}");
            } else if (item_key == "required") {
              text("required:");
              quoted_list(item_value);
            } else if (item_key == "type") {
              text("type:");
              if (item_value.is_string()) {
                argument(upper(item_value.get<std::string>()), true);
              } else {
                json upper_list = json::array();
                for (const json& t : item_value) upper_list.push_back(upper(string_or_empty(t)));
                argument(upper_list, true);
              }
            } else {
              text(item_key + ":");
              argument(item_value, true);
            }
          }
          text("}");
        }
      }
      if (truthy(field(value, "nullable"))) {
        comma(add_comma);
        text("nullable:true");
      }
      if (type == "OBJECT") {
        const json& props = field(value, "properties");
        if (props.is_object()) {
          comma(add_comma);
          text("properties:{");
          parameters(props, false);
          text("}");
        } else if (value.is_object()) {
          comma(add_comma);
          text("properties:{");
          parameters(value, true);
          text("}");
        }
        if (truthy(field(value, "required"))) {
          comma(add_comma);
          text("required:");
          quoted_list(field(value, "required"));
        }
      }
      comma(add_comma);
      text("type:");
      control(kQuote);
      text(type);
      control(kQuote);
      text("}");
    }
  }

  // format_function_declaration(tool_data)
  void declaration(const json& tool) {
    const json& function = field(tool, "function");
    text("declaration:" + string_or_empty(field(function, "name")) + "{description:");
    quoted(string_or_empty(field(function, "description")));
    const json& params = field(function, "parameters");
    if (truthy(params)) {
      text(",parameters:{");
      if (truthy(field(params, "properties"))) {
        text("properties:{");
        parameters(field(params, "properties"), false);
        text("},");
      }
      if (truthy(field(params, "required"))) {
        text("required:");
        quoted_list(field(params, "required"));
        text(",");
      }
      if (truthy(field(params, "type"))) {
        text("type:");
        quoted(upper(string_or_empty(field(params, "type"))));
        text("}");
      }
    }
    if (function.is_object() && function.contains("response")) {
      const json& response = function["response"];
      text(",response:{");
      if (truthy(field(response, "description"))) {
        text("description:");
        quoted(string_or_empty(field(response, "description")));
        text(",");
      }
      if (upper(string_or_empty(field(response, "type"))) == "OBJECT") {
        text("type:");
        quoted("OBJECT");
        text("}");
      }
    }
    text("}");
  }

  // format_tool_response_block(tool_name, response)
  void tool_response(const std::string& name, const json& response) {
    control("<|tool_response>");
    if (response.is_object()) {
      text("response:" + name + "{");
      bool first = true;
      for (const std::string& key : sorted_keys(response)) {
        if (!first) text(",");
        first = false;
        text(key + ":");
        argument(response[key], false);
      }
      text("}");
    } else {
      text("response:" + name + "{value:");
      argument(response, false);
      text("}");
    }
    control("<tool_response|>");
  }

  // Multimodal placeholders of content parts.
  void placeholder(const std::string& type) {
    if (type == "image" || type == "image_url") control("<|image|>");
    if (type == "audio" || type == "input_audio") control("<|audio|>");
    if (type == "video") control("<|video|>");
  }

 private:
  std::vector<ChatSegment> out_;
  int message_ = -1;
  bool trainable_ = false;
};

// Trims the text at the two ends of segments [from, end) (Jinja's `| trim` on a rendered macro).
void trim_range(std::vector<ChatSegment>& segments, size_t from) {
  for (size_t i = from; i < segments.size() && !segments[i].control; ++i) {
    std::string& t = segments[i].text;
    t.erase(0, std::find_if(t.begin(), t.end(), [](char c) { return !is_space(c); }) - t.begin());
    if (!t.empty()) break;
  }
  for (size_t i = segments.size(); i > from && !segments[i - 1].control; --i) {
    std::string& t = segments[i - 1].text;
    while (!t.empty() && is_space(t.back())) t.pop_back();
    if (!t.empty()) break;
  }
}

}  // namespace

std::vector<ChatSegment> render_chat(const std::vector<ChatMessage>& messages,
                                     const ChatOptions& options) {
  Renderer r;
  enum class Prev { kNone, kThink, kTool, kToolCall, kToolResponse } prev = Prev::kNone;
  r.control("<bos>");

  // System turn: a leading system/developer message, tool declarations, the thinking switch.
  size_t first = 0;
  const bool system_first =
      !messages.empty() && (messages[0].role == "system" || messages[0].role == "developer");
  if (options.enable_thinking || truthy(options.tools) || system_first) {
    r.attribute(system_first ? 0 : -1, false);
    r.control("<|turn>");
    r.text("system\n");
    if (options.enable_thinking) {
      r.control("<|think|>");
      r.text("\n");
      prev = Prev::kThink;
    }
    if (system_first) {
      const json& content = messages[0].content;
      if (content.is_string()) {
        r.text(trim(content.get<std::string>()));
      } else if (content.is_array()) {
        for (const json& item : content) r.text(trim(string_or_empty(field(item, "text"))) + " ");
      }
      first = 1;
    }
    if (truthy(options.tools)) {
      for (const json& tool : options.tools) {
        r.control("<|tool>");
        const size_t start = r.segments().size();
        r.declaration(tool);
        trim_range(r.segments(), start);
        r.control("<tool|>");
      }
      prev = Prev::kTool;
    }
    r.control("<turn|>");
    r.text("\n");
  }

  int last_user = -1;
  for (size_t i = first; i < messages.size(); ++i) {
    if (messages[i].role == "user") last_user = static_cast<int>(i);
  }

  std::string prev_non_tool_role;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "tool") continue;  // rendered inside the turn of the call it answers
    prev = Prev::kNone;
    const bool model = m.role == "assistant";
    const std::string role = model ? "model" : m.role;
    const int index = static_cast<int>(i);
    // The header is not the model's own output; everything else of a model turn is.
    r.attribute(index, false);
    if (!(model && prev_non_tool_role == "assistant")) {
      r.control("<|turn>");
      r.text(role + "\n");
    }
    r.attribute(index, model);

    const bool thinking_gate =
        static_cast<int>(i) > last_user || (options.preserve_thinking && !m.tool_calls.empty());
    if (!m.reasoning.empty() && thinking_gate) {
      r.control("<|channel>");
      r.text("thought\n" + m.reasoning + "\n");
      r.control("<channel|>");
    }
    for (const ToolCall& call : m.tool_calls) {
      r.control("<|tool_call>");
      r.text("call:" + call.name + "{");
      if (call.arguments.is_object()) {
        bool first_arg = true;
        for (const std::string& key : sorted_keys(call.arguments)) {
          if (!first_arg) r.text(",");
          first_arg = false;
          r.text(key + ":");
          r.argument(call.arguments[key], false);
        }
      }
      r.text("}");
      r.control("<tool_call|>");
      prev = Prev::kToolCall;
    }

    bool responded = false;
    if (truthy(m.tool_responses)) {
      for (const json& tr : m.tool_responses) {
        const std::string name =
            truthy(field(tr, "name")) ? string_or_empty(field(tr, "name")) : "unknown";
        r.tool_response(name, field(tr, "response"));
        responded = true;
        prev = Prev::kToolResponse;
      }
    } else if (!m.tool_calls.empty()) {
      for (size_t k = i + 1; k < messages.size() && messages[k].role == "tool"; ++k) {
        const ChatMessage& t = messages[k];
        r.attribute(static_cast<int>(k), false);
        std::string name = t.name.empty() ? "unknown" : t.name;
        for (const ToolCall& call : m.tool_calls) {
          if (call.id == t.tool_call_id) name = call.name;
        }
        if (t.content.is_array()) {
          std::string joined;
          for (const json& part : t.content) {
            if (string_or_empty(field(part, "type")) == "text")
              joined += string_or_empty(field(part, "text"));
          }
          r.tool_response(name, joined);
          for (const json& part : t.content) r.placeholder(string_or_empty(field(part, "type")));
        } else {
          r.tool_response(name, t.content);
        }
        responded = true;
        prev = Prev::kToolResponse;
      }
      r.attribute(index, model);
    }

    std::string captured;
    const size_t content_start = r.segments().size();
    if (m.content.is_string()) {
      captured =
          model ? strip_thinking(m.content.get<std::string>()) : trim(m.content.get<std::string>());
      r.text(captured);
    } else if (m.content.is_array()) {
      for (const json& item : m.content) {
        const std::string type = string_or_empty(field(item, "type"));
        if (type == "text") {
          const std::string t = string_or_empty(field(item, "text"));
          const std::string piece = model ? strip_thinking(t) : trim(t);
          captured += piece;
          r.text(piece);
        } else {
          r.placeholder(type);
          if (r.segments().size() > content_start && r.segments().back().control)
            captured += r.segments().back().text;
        }
      }
    }
    const bool has_content = !trim(captured).empty();

    std::string next_role;
    for (size_t j = i + 1; j < messages.size(); ++j) {
      if (messages[j].role != "tool") {
        next_role = messages[j].role;
        break;
      }
    }
    const bool continues_into_next =
        model && next_role == "assistant" && (m.tool_calls.empty() || responded);
    if (prev == Prev::kToolCall && !responded) {
      r.control("<|tool_response>");  // the model stops here to wait for the tool
    } else if (continues_into_next) {
      // the next assistant message goes on in this turn
    } else if (!(responded && !has_content && next_role.empty())) {
      r.control("<turn|>");
      r.text("\n");
    }
    prev_non_tool_role = m.role;
  }

  if (options.add_generation_prompt) {
    r.attribute(static_cast<int>(messages.size()), false);
    if (prev != Prev::kToolResponse && prev != Prev::kToolCall) {
      r.control("<|turn>");
      r.text("model\n");
      if (options.empty_thought_channel && !options.enable_thinking) {
        r.control("<|channel>");
        r.text("thought\n");
        r.control("<channel|>");
      }
    } else if (prev == Prev::kToolResponse && options.enable_thinking) {
      r.control("<|channel>");
      r.text("thought\n");
    }
  }
  return std::move(r.segments());
}

std::string chat_text(const std::vector<ChatSegment>& segments) {
  std::string out;
  for (const ChatSegment& s : segments) out += s.text;
  return out;
}

ChatTokens tokenize_chat(const std::vector<ChatSegment>& segments, const Tokenizer& tokenizer) {
  ChatTokens out;
  const auto push = [&](int id, const ChatSegment& s) {
    out.ids.push_back(id);
    out.message.push_back(s.message);
    out.trainable.push_back(s.trainable ? 1 : 0);
  };
  size_t i = 0;
  while (i < segments.size()) {
    if (segments[i].control) {
      push(tokenizer.require_special(segments[i].text), segments[i]);
      ++i;
      continue;
    }
    // One run of text up to the next control token, encoded as one piece of plain text.
    std::string run;
    std::vector<std::pair<size_t, size_t>> owner;  // (start offset, segment index)
    size_t j = i;
    for (; j < segments.size() && !segments[j].control; ++j) {
      owner.emplace_back(run.size(), j);
      run += segments[j].text;
    }
    for (const TokenSpan& t : tokenizer.encode_with_offsets(run)) {
      size_t seg = owner.front().second;
      for (const auto& [start, index] : owner) {
        if (start <= t.begin && !segments[index].text.empty()) seg = index;
      }
      push(t.id, segments[seg]);
    }
    i = j;
  }
  return out;
}

namespace {

// A list of content parts: each {"type": "text", "text": "..."} or a multimodal placeholder part
// ({"type": "image", ...}); anything else would render as nothing, so it is refused.
void check_content_parts(const json& parts, const std::string& at) {
  static const std::set<std::string> kPlaceholders = {"image", "image_url", "audio", "input_audio",
                                                      "video"};
  for (size_t p = 0; p < parts.size(); ++p) {
    const json& part = parts[p];
    const std::string where = at + ": content[" + std::to_string(p) + "]";
    if (!part.is_object())
      throw InputError(where + " is not an object (expected {\"type\": \"text\", \"text\": ...})");
    const json& type = field(part, "type");
    if (!type.is_string()) throw InputError(where + " has no string \"type\"");
    const std::string& name = type.get_ref<const std::string&>();
    if (name == "text") {
      if (!field(part, "text").is_string())
        throw InputError(where + ": a \"text\" part needs a string \"text\"");
    } else if (!kPlaceholders.count(name)) {
      throw InputError(where + ": unknown part type \"" + error_excerpt(name) +
                       "\" (expected text, image, image_url, audio, input_audio or video)");
    }
  }
}

}  // namespace

std::vector<ChatMessage> parse_chat_messages(const json& list, const std::string& where) {
  if (!list.is_array()) throw InputError(where + ": messages must be a list");
  if (list.empty()) throw InputError(where + ": no messages (the list is empty)");
  static const std::set<std::string> kRoles = {"system",    "developer", "user",
                                               "assistant", "model",     "tool"};
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    const std::string at = where + ": messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw InputError(at + " is not an object");
    if (!m.contains("role") || !m["role"].is_string())
      throw InputError(at + " has no string \"role\"");
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (!kRoles.count(msg.role)) {
      throw InputError(at + ": unknown role \"" + error_excerpt(msg.role) +
                       "\" (expected system, developer, user, assistant or tool)");
    }
    if (msg.role == "model") msg.role = "assistant";
    if ((msg.role == "system" || msg.role == "developer") && i != 0) {
      throw InputError(at + ": a " + msg.role + " message must come first");
    }
    msg.content = m.value("content", json());
    if (!msg.content.is_null() && !msg.content.is_string() && !msg.content.is_array() &&
        msg.role != "tool") {
      throw InputError(at + ": content must be a string or a list of parts");
    }
    if (msg.content.is_array()) check_content_parts(msg.content, at);
    for (const char* key : {"reasoning", "reasoning_content", "thinking"}) {
      if (m.contains(key) && m[key].is_string()) msg.reasoning = m[key].get<std::string>();
    }
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      if (msg.role != "assistant")
        throw InputError(at + ": only assistant messages carry tool_calls");
      if (!m["tool_calls"].is_array()) throw InputError(at + ": tool_calls must be a list");
      for (const json& c : m["tool_calls"]) {
        const json& f = field(c, "function");
        if (!f.is_object() || !f.contains("name") || !f["name"].is_string()) {
          throw InputError(at + ": each tool call needs function.name");
        }
        ToolCall call;
        call.id = string_or_empty(field(c, "id"));
        call.name = f["name"].get<std::string>();
        call.arguments = field(f, "arguments");
        if (call.arguments.is_string()) {  // OpenAI sends arguments as JSON text
          try {
            call.arguments = parse_bounded_json(call.arguments.get<std::string>(), at);
          } catch (const json::exception&) {
            throw InputError(at + ": tool call \"" + error_excerpt(call.name) +
                             "\" has arguments that are not JSON");
          }
        }
        if (!call.arguments.is_null() && !call.arguments.is_object()) {
          throw InputError(at + ": tool call \"" + error_excerpt(call.name) +
                           "\" arguments must be an object");
        }
        msg.tool_calls.push_back(std::move(call));
      }
    }
    msg.tool_responses = m.value("tool_responses", json());
    msg.tool_call_id = string_or_empty(field(m, "tool_call_id"));
    msg.name = string_or_empty(field(m, "name"));
    if (msg.role == "tool") {
      const bool after_call =
          !out.empty() && (out.back().role == "tool" || !out.back().tool_calls.empty());
      if (!after_call)
        throw InputError(at + ": a tool message must follow an assistant message with tool_calls");
    }
    out.push_back(std::move(msg));
  }
  return out;
}

ChatRequest parse_chat_request(const std::string& json_text, const std::string& where) {
  const json root = parse_json_input(json_text, where);
  ChatRequest request;
  if (root.is_array()) {
    request.messages = parse_chat_messages(root, where);
  } else if (root.is_object() && root.contains("messages")) {
    request.messages = parse_chat_messages(root["messages"], where);
    if (root.contains("tools") && !root["tools"].is_null()) {
      if (!root["tools"].is_array()) throw InputError(where + ": \"tools\" must be a list");
      for (size_t i = 0; i < root["tools"].size(); ++i) {
        const json& fn = field(root["tools"][i], "function");
        if (!fn.is_object() || !fn.contains("name") || !fn["name"].is_string()) {
          throw InputError(where + ": tools[" + std::to_string(i) + "] needs function.name");
        }
      }
      request.options.tools = root["tools"];
    }
    for (const auto& [key, flag] :
         {std::pair<const char*, bool*>{"enable_thinking", &request.options.enable_thinking},
          {"add_generation_prompt", &request.options.add_generation_prompt}}) {
      if (!root.contains(key)) continue;
      if (!root[key].is_boolean())
        throw InputError(where + ": \"" + key + "\" must be true or false");
      *flag = root[key].get<bool>();
    }
  } else {
    throw InputError(where + ": expected a list of messages or an object with \"messages\"");
  }
  if (request.messages.empty()) throw InputError(where + ": no messages");
  return request;
}

ChatTemplateInspection inspect_chat_template(const std::string& jinja_text) {
  ChatTemplateInspection out;
  const bool has_turns = jinja_text.find("<|turn>") != std::string::npos &&
                         jinja_text.find("<turn|>") != std::string::npos;
  out.recognized = has_turns && jinja_text.find("strip_thinking") != std::string::npos &&
                   jinja_text.find("<|tool_call>") != std::string::npos;
  // The revisions that close an empty thought channel right after the generation prompt.
  out.empty_thought_channel =
      jinja_text.find("<|channel>thought\\n<channel|>") != std::string::npos ||
      jinja_text.find("<|channel>thought\n<channel|>") != std::string::npos;
  if (!out.recognized) {
    out.note = has_turns
                   ? "it uses Gemma 4 turn markers but differs from the built-in Gemma 4 template; "
                     "gemma-train renders conversations with its built-in template"
                   : "it is not a Gemma 4 chat template (no <|turn>/<turn|> markers); "
                     "gemma-train renders conversations with its built-in Gemma 4 template";
  } else if (out.empty_thought_channel) {
    out.note =
        "this revision appends an empty thought channel after the generation prompt when thinking "
        "is off";
  }
  return out;
}

void check_chat_template_text(const std::string& jinja_text, const std::string& where) {
  if (jinja_text.empty()) throw InputError(where + ": the chat template is empty");
  const size_t bad = find_invalid_utf8(jinja_text);
  if (bad != std::string::npos)
    throw InputError(where + ": the chat template is not valid UTF-8 at byte " +
                     std::to_string(bad + 1));
  const size_t nul = jinja_text.find('\0');
  if (nul != std::string::npos)
    throw InputError(where + ": the chat template has a NUL byte at byte " +
                     std::to_string(nul + 1));
  // Jinja's delimiters: outside a tag, "{{", "{%" and "{#" open one; inside, only its own closer
  // ends it (a "{{" inside a string of a tag is still inside the tag).
  size_t i = 0;
  while (true) {
    const size_t open = jinja_text.find('{', i);
    if (open == std::string::npos || open + 1 >= jinja_text.size()) return;
    const char kind = jinja_text[open + 1];
    const char* closer = kind == '{' ? "}}" : kind == '%' ? "%}" : kind == '#' ? "#}" : nullptr;
    if (closer == nullptr) {
      i = open + 1;
      continue;
    }
    const size_t close = jinja_text.find(closer, open + 2);
    if (close == std::string::npos) {
      throw InputError(where + ": the chat template opens \"{" + std::string(1, kind) +
                       "\" at byte " + std::to_string(open + 1) + " and never closes it");
    }
    i = close + 2;
  }
}

}  // namespace gemma
