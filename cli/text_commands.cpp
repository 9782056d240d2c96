#include "cli/text_commands.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/cli_flags.h"
#include "data/chat_template.h"
#include "data/jsonl_reader.h"
#include "data/tokenizer.h"
#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/file_identity.h"
#include "io/input_error.h"
#include "model/gemma4_hf_checkpoint.h"
#include "model/gemma4_step_decoder.h"
#include "model/generation.h"
#include "peft/peft_adapter.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The template options of the checkpoint's own chat_template.jinja, when it has one (§4.2:
// revision-dependent); what differs from the built-in template is said on stderr.
ChatOptions template_options(const fs::path& model_dir) {
  ChatOptions options;
  const fs::path file = model_dir / "chat_template.jinja";
  if (!fs::exists(file)) return options;
  const ChatTemplateInspection inspection = inspect_chat_template(read_text_file(file));
  options.empty_thought_channel = inspection.empty_thought_channel;
  if (!inspection.note.empty())
    std::cerr << "gemma-train: note: " << file.string() << ": " << inspection.note << "\n";
  return options;
}

// Everything generation needs from a model folder.
struct TextModel {
  LoadedGemma4 loaded;
  Tokenizer tokenizer;
  ChatOptions chat;
  std::vector<int64_t> stop_ids;
};

TextModel load_text_model(const CliFlags& flags) {
  const fs::path dir = flags.required("model");
  Tokenizer tokenizer = Tokenizer::from_folder(dir);
  Gemma4LoadOptions options;
  options.dtype = flags.dtype("dtype");
  options.device = flags.device("device");
  options.nf4_base = flags.has("load-in-4bit") ? Nf4Base::kAlways : Nf4Base::kAsStored;
  options.attn_implementation = attention_implementation_from_name(
      flags.value("attn-implementation"), "--attn-implementation");
  LoadedGemma4 loaded = load_gemma4(dir, options);
  if (const auto adapter = flags.optional("adapter"))
    load_peft_adapter(loaded.model, loaded.report.prefix, *adapter);
  loaded.model->eval();  // inference: no adapter dropout
  if (tokenizer.vocab_size() > loaded.config.vocab_size) {
    throw InputError(tokenizer.source() + ": " + std::to_string(tokenizer.vocab_size()) +
                     " tokens, more than the model's vocab_size " +
                     std::to_string(loaded.config.vocab_size));
  }
  std::vector<int64_t> stop;
  if (const auto ids = read_generation_stop_ids(dir)) {
    stop = *ids;
  } else {
    for (const char* s : {"<eos>", "<turn|>", "<|tool_response>"}) {
      if (const auto id = tokenizer.special_id(s)) stop.push_back(*id);
    }
  }
  ChatOptions chat = template_options(dir);
  return {std::move(loaded), std::move(tokenizer), chat, stop};
}

std::vector<int64_t> to_int64(const std::vector<int>& ids) { return {ids.begin(), ids.end()}; }

void check_context(const TextModel& m, size_t prompt_tokens, const std::string& what) {
  const int64_t context = m.loaded.config.max_position_embeddings;
  if (static_cast<int64_t>(prompt_tokens) >= context) {
    throw InputError(what + ": " + std::to_string(prompt_tokens) +
                     " tokens, longer than the model's context of " + std::to_string(context));
  }
}

size_t rendered_bytes(const std::vector<ChatSegment>& segments) {
  size_t n = 0;
  for (const ChatSegment& s : segments) n += s.text.size();
  return n;
}

// Before tokenizing: a text of `bytes` bytes is at least bytes / max_piece_bytes tokens, so a
// text that cannot fit the context is refused without tokenizing all of it.
void check_text_fits_context(const TextModel& m, size_t bytes, const std::string& what) {
  const int64_t context = m.loaded.config.max_position_embeddings;
  const size_t at_least = bytes / m.tokenizer.max_piece_bytes();
  if (at_least >= static_cast<size_t>(context)) {
    throw InputError(what + ": " + std::to_string(bytes) + " bytes, at least " +
                     std::to_string(at_least) + " tokens, longer than the model's context of " +
                     std::to_string(context));
  }
}

// Prompt ids: the chat template around a user prompt, or with --raw `<bos>` + the plain text.
// `what` names the prompt in errors.
std::vector<int64_t> prompt_ids(const TextModel& m, const std::string& prompt, bool raw,
                                bool thinking, const std::string& what) {
  check_text_fits_context(m, prompt.size(), what);
  if (raw) {
    std::vector<int64_t> ids = {m.tokenizer.require_special("<bos>")};
    for (int id : m.tokenizer.encode(prompt)) ids.push_back(id);
    return ids;
  }
  ChatOptions options = m.chat;
  options.add_generation_prompt = true;
  options.enable_thinking = thinking;
  ChatMessage user;
  user.role = "user";
  user.content = prompt;
  return to_int64(tokenize_chat(render_chat({user}, options), m.tokenizer).ids);
}

std::vector<int64_t> messages_ids(const TextModel& m, const ChatRequest& request, bool thinking,
                                  const std::string& what) {
  ChatOptions options = request.options;
  options.empty_thought_channel = m.chat.empty_thought_channel;
  options.enable_thinking = options.enable_thinking || thinking;
  const std::vector<ChatSegment> segments = render_chat(request.messages, options);
  check_text_fits_context(m, rendered_bytes(segments), what);
  return to_int64(tokenize_chat(segments, m.tokenizer).ids);
}

// Prints text as tokens arrive, holding back an incomplete UTF-8 character.
class TextStream {
 public:
  explicit TextStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  void push(int64_t id) {
    ids_.push_back(static_cast<int>(id));
    const std::string text = tokenizer_.decode(ids_);
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0)
      return;  // U+FFFD: wait
    if (text.size() > printed_ && text.compare(0, printed_, text, 0, printed_) == 0) {
      std::fwrite(text.data() + printed_, 1, text.size() - printed_, stdout);
      std::fflush(stdout);
      printed_ = text.size();
    }
  }
  std::string text() const { return tokenizer_.decode(ids_); }

 private:
  const Tokenizer& tokenizer_;
  std::vector<int> ids_;
  size_t printed_ = 0;
};

GenerationOptions generation_options(const CliFlags& flags, const TextModel& m) {
  GenerationOptions g;
  g.max_new_tokens = flags.integer("max-new-tokens");
  if (g.max_new_tokens < 0) throw InputError("--max-new-tokens must be >= 0");
  g.sampling.temperature = flags.number("temperature");
  g.sampling.top_k = flags.integer("top-k");
  g.sampling.top_p = flags.number("top-p");
  g.sampling.seed = static_cast<uint64_t>(flags.integer("seed"));
  if (g.sampling.temperature < 0) throw InputError("--temperature must be >= 0");
  if (g.sampling.top_k < 0) throw InputError("--top-k must be >= 0");
  if (g.sampling.top_p <= 0 || g.sampling.top_p > 1) throw InputError("--top-p must be in (0, 1]");
  g.stop_ids = m.stop_ids;
  g.use_cache = !flags.has("no-cache");
  g.step_decoder = !flags.has("no-step-decoder");
  return g;
}

void report_speed(const GenerationResult& r) {
  std::fprintf(stderr,
               "\n[prefill %lld tokens in %.3f s: %.1f tokens/s; decode %lld tokens in %.3f s: "
               "%.1f tokens/s]\n",
               static_cast<long long>(r.prefill_tokens), r.prefill_seconds,
               r.prefill_seconds > 0 ? r.prefill_tokens / r.prefill_seconds : 0.0,
               static_cast<long long>(r.decode_tokens), r.decode_seconds,
               r.decode_seconds > 0 ? r.decode_tokens / r.decode_seconds : 0.0);
}

// --warmup: the prompts generated once, untimed and unprinted, with at most 2 new tokens. The
// first forward of a process pays for what later ones reuse (MKL's and OpenMP's start, first
// touches of fresh memory): ~0.1 s on a 2-core machine for bench-100m's 128-token prefill.
void warm_up(const CliFlags& flags, TextModel& m, const std::vector<std::vector<int64_t>>& prompts,
             GenerationOptions g) {
  if (!flags.has("warmup")) return;
  g.max_new_tokens = std::min<int64_t>(g.max_new_tokens, 2);
  generate(m.loaded.model, prompts, g);
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out;
}

// --input prompts.jsonl --output out.jsonl: one batch per --batch-size lines, left-padded.
int run_batched(const CliFlags& flags, TextModel& m, const GenerationOptions& g) {
  const fs::path input = flags.required("input");
  const fs::path output = flags.required("output");
  const bool raw = flags.has("raw");
  // Bounded lines, UTF-8 and JSON checked, nesting limited; a bad line stops the command.
  JsonlReader reader(input);
  std::vector<std::vector<int64_t>> prompts;
  JsonlRow row;
  while (reader.next(&row)) {
    const std::string& at = row.where;
    const json& j = row.value;
    if (j.is_object() && j.contains("prompt") && j.contains("messages"))
      throw InputError(at + ": both \"prompt\" and \"messages\": give one of them");
    if (j.is_object() && j.contains("prompt") && j["prompt"].is_string()) {
      prompts.push_back(
          prompt_ids(m, j["prompt"].get<std::string>(), raw, flags.has("thinking"), at));
    } else if (j.is_object() && j.contains("messages")) {
      ChatRequest request;
      request.messages = parse_chat_messages(j["messages"], at);
      request.options.add_generation_prompt = true;
      prompts.push_back(messages_ids(m, request, flags.has("thinking"), at));
    } else {
      throw InputError(at + ": expected {\"prompt\": \"...\"} or {\"messages\": [...]}");
    }
    check_context(m, prompts.back().size(), at);
  }
  if (prompts.empty()) throw InputError(input.string() + ": no prompts");
  const int64_t batch = flags.integer("batch-size");
  if (batch <= 0) throw InputError("--batch-size must be positive");
  std::string out_text;
  GenerationResult total;
  warm_up(flags, m,
          {prompts.begin(), prompts.begin() + std::min<int64_t>(batch, std::ssize(prompts))}, g);
  for (size_t start = 0; start < prompts.size(); start += static_cast<size_t>(batch)) {
    const size_t end = std::min(prompts.size(), start + static_cast<size_t>(batch));
    const std::vector<std::vector<int64_t>> chunk(prompts.begin() + static_cast<long>(start),
                                                  prompts.begin() + static_cast<long>(end));
    const GenerationResult r = generate(m.loaded.model, chunk, g);
    for (size_t i = 0; i < chunk.size(); ++i) {
      std::vector<int> ids(r.tokens[i].begin(), r.tokens[i].end());
      const json row = {{"index", start + i},
                        {"completion", m.tokenizer.decode(ids)},
                        {"ids", r.tokens[i]},
                        {"finish_reason", r.finish_reason[i]}};
      out_text += row.dump() + "\n";
    }
    total.prefill_tokens += r.prefill_tokens;
    total.prefill_seconds += r.prefill_seconds;
    total.decode_tokens += r.decode_tokens * static_cast<int64_t>(chunk.size());
    total.decode_seconds += r.decode_seconds;
  }
  write_file_atomically(output, out_text, flags.existing_output());
  std::fprintf(stderr, "wrote %zu completions to %s", prompts.size(), output.c_str());
  report_speed(total);
  return 0;
}

}  // namespace

int run_generate_command(const CliFlags& flags) {
  const int sources = flags.has("prompt") + flags.has("messages") + flags.has("input");
  if (sources != 1)
    throw InputError("generate: give exactly one of --prompt, --messages or --input");
  if (flags.has("input") != flags.has("output"))
    throw InputError("generate: --input and --output go together");
  TextModel m = load_text_model(flags);
  GenerationOptions g = generation_options(flags, m);
  std::shared_ptr<Gemma4StepDecoder> step_decoder;  // built by the first call, then reused
  g.step_decoder_slot = &step_decoder;
  if (flags.has("input")) return run_batched(flags, m, g);

  std::vector<int64_t> prompt;
  if (flags.has("prompt")) {
    prompt = prompt_ids(m, flags.required("prompt"), flags.has("raw"), flags.has("thinking"),
                        "--prompt");
  } else {
    const std::string path = flags.required("messages");
    const std::string text = read_text_file(path, kMaxJsonlLineBytes);
    ChatRequest request = parse_chat_request(text, path);
    if (!parse_json_input(text, path).contains("add_generation_prompt"))
      request.options.add_generation_prompt = true;
    prompt = messages_ids(m, request, flags.has("thinking"), path);
  }
  check_context(m, prompt.size(), "prompt");
  g.max_new_tokens = std::min<int64_t>(g.max_new_tokens, m.loaded.config.max_position_embeddings -
                                                             static_cast<int64_t>(prompt.size()));
  warm_up(flags, m, {prompt}, g);
  const bool print_ids = flags.has("ids");
  TextStream stream(m.tokenizer);
  bool first = true;
  const GenerationResult r = generate(m.loaded.model, {prompt}, g, [&](size_t, int64_t token) {
    if (print_ids) {
      std::printf("%s%lld", first ? "" : ",", static_cast<long long>(token));
      std::fflush(stdout);
      first = false;
    } else {
      stream.push(token);
    }
  });
  std::printf("\n");
  report_speed(r);
  return 0;
}

int run_chat_command(const CliFlags& flags) {
  TextModel m = load_text_model(flags);
  GenerationOptions g = generation_options(flags, m);
  std::shared_ptr<Gemma4StepDecoder> step_decoder;  // built by the first call, then reused
  g.step_decoder_slot = &step_decoder;
  std::vector<ChatMessage> history;
  if (const auto system = flags.optional("system"))
    history.push_back({"system", *system, "", {}, "", "", {}});
  KvCache cache(m.loaded.config);
  std::vector<int64_t> fed;  // what the cache holds
  std::cerr << "gemma-train chat: type a message; /reset clears the conversation, /exit or end of "
               "input quits\n";
  std::string line;
  while (true) {
    std::cout << "user> " << std::flush;
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      history.resize(flags.has("system") ? 1 : 0);
      cache = KvCache(m.loaded.config);
      fed.clear();
      continue;
    }
    history.push_back({"user", line, "", {}, "", "", {}});
    ChatOptions options = m.chat;
    options.add_generation_prompt = true;
    options.enable_thinking = flags.has("thinking");
    const std::vector<ChatSegment> segments = render_chat(history, options);
    check_text_fits_context(m, rendered_bytes(segments), "conversation");
    const std::vector<int64_t> ids = to_int64(tokenize_chat(segments, m.tokenizer).ids);
    check_context(m, ids.size(), "conversation");
    // Reuse the cache when the new rendering extends what it holds; otherwise start again.
    if (fed.size() > ids.size() || !std::equal(fed.begin(), fed.end(), ids.begin())) {
      cache = KvCache(m.loaded.config);
      fed.clear();
    }
    const std::vector<int64_t> new_ids(ids.begin() + static_cast<long>(fed.size()), ids.end());
    std::cout << "model> " << std::flush;
    TextStream stream(m.tokenizer);
    GenerationOptions turn = g;
    turn.max_new_tokens =
        std::min<int64_t>(g.max_new_tokens, m.loaded.config.max_position_embeddings -
                                                static_cast<int64_t>(ids.size()));
    const GenerationResult r = generate(
        m.loaded.model, {new_ids}, turn, [&](size_t, int64_t t) { stream.push(t); }, &cache);
    std::cout << "\n";
    fed = ids;
    fed.insert(fed.end(), r.tokens[0].begin(), r.tokens[0].end() - (r.tokens[0].empty() ? 0 : 1));
    history.push_back({"assistant", stream.text(), "", {}, "", "", {}});
  }
  return 0;
}

int run_tokenize_command(const CliFlags& flags) {
  if (flags.has("text") == flags.has("messages"))
    throw InputError("tokenize: give exactly one of --text or --messages");
  const Tokenizer tokenizer = Tokenizer::from_folder(flags.required("model"));
  std::vector<int> ids;
  if (flags.has("text")) {
    if (flags.has("bos")) ids.push_back(tokenizer.require_special("<bos>"));
    for (int id : tokenizer.encode(flags.required("text"))) ids.push_back(id);
  } else {
    const std::string path = flags.required("messages");
    ChatRequest request = parse_chat_request(read_text_file(path, kMaxJsonlLineBytes), path);
    request.options.empty_thought_channel =
        template_options(flags.required("model")).empty_thought_channel;
    ids = tokenize_chat(render_chat(request.messages, request.options), tokenizer).ids;
  }
  std::printf("%s\n", join_ids(to_int64(ids)).c_str());
  return 0;
}

}  // namespace gemma
