// The Gemma 4 chat format (gemma4-architecture.md §4.2), written out in C++: it renders a
// conversation the way the official template (revision "gemma4_v5", the current one) does, as a
// list of segments that say which are control tokens, which message produced them and whether
// they are the model's own tokens (what SFT trains on: the thought channel, tool calls, content
// and the closing `<turn|>\n`, never the `<|turn>model\n` header). Control tokens are placed by
// their strings; user text is always encoded as plain text.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace gemma {

struct ToolCall {
  std::string id;
  std::string name;
  nlohmann::json arguments;  // an object, or null
};

struct ChatMessage {
  std::string role;        // "system", "developer", "user", "assistant", "tool"
  nlohmann::json content;  // a string, a list of parts ({"type": "text", "text": ..}, image, audio,
                           // video), or null
  std::string reasoning;   // `reasoning` / `reasoning_content`: rendered as the thought channel
  std::vector<ToolCall> tool_calls;
  std::string tool_call_id;       // tool messages: which call they answer
  std::string name;               // tool messages: the function's name
  nlohmann::json tool_responses;  // Gemma's native form: responses on the assistant message
};

struct ChatOptions {
  bool add_generation_prompt = false;
  bool enable_thinking = false;
  bool preserve_thinking = false;
  // Revision-dependent: some templates append an empty thought channel after the generation prompt
  // when thinking is off (inspect_chat_template() finds out from a checkpoint's template).
  bool empty_thought_channel = false;
  nlohmann::json tools = nlohmann::json::array();  // OpenAI-style function declarations
};

struct ChatSegment {
  std::string text;
  bool control = false;    // a special token, by its string
  int message = -1;        // index into the messages; -1 template-only, messages.size() the prompt
  bool trainable = false;  // the model's own tokens
};

std::vector<ChatSegment> render_chat(const std::vector<ChatMessage>& messages,
                                     const ChatOptions& options);
// The rendered text, as a Jinja rendering of the template would give it.
std::string chat_text(const std::vector<ChatSegment>& segments);

struct ChatTokens {
  std::vector<int> ids;
  std::vector<int> message;        // per token, as ChatSegment::message
  std::vector<uint8_t> trainable;  // per token
};

// Control segments become their special ids; each run of text between them is encoded as one
// plain-text piece (as a tokenizer splits on special tokens first), and every token is credited to
// the segment where it starts.
ChatTokens tokenize_chat(const std::vector<ChatSegment>& segments, const Tokenizer& tokenizer);

struct ChatRequest {
  std::vector<ChatMessage> messages;
  ChatOptions options;
};

// A messages file: a JSON list of messages, or an object with "messages" and optionally "tools",
// "enable_thinking", "add_generation_prompt". Unknown roles, misplaced system turns and tool
// results without a call are InputErrors naming `where` and the message index.
ChatRequest parse_chat_request(const std::string& json_text, const std::string& where);
std::vector<ChatMessage> parse_chat_messages(const nlohmann::json& messages,
                                             const std::string& where);

struct ChatTemplateInspection {
  bool recognized = false;             // looks like a Gemma 4 template
  bool empty_thought_channel = false;  // appends `<|channel>thought\n<channel|>` to the prompt
  std::string note;                    // what differs, for people
};

// Reads a checkpoint's chat_template.jinja for the revision-dependent options.
ChatTemplateInspection inspect_chat_template(const std::string& jinja_text);

// A chat template about to be copied into another format (GGUF's tokenizer.chat_template, which
// llama.cpp renders): non-empty UTF-8 without NUL, and every Jinja tag opened outside a tag
// (`{{`, `{%`, `{#`) closed by its own closer. InputError naming `where` and the byte otherwise.
void check_chat_template_text(const std::string& jinja_text, const std::string& where);

}  // namespace gemma
