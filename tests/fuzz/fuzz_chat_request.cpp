// libFuzzer target: a messages file -> ChatRequest -> rendered Gemma 4 conversation.
#include <cstddef>
#include <cstdint>
#include <string>

#include "data/chat_template.h"
#include "io/input_error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const gemma::ChatRequest request =
        gemma::parse_chat_request(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    (void)gemma::chat_text(gemma::render_chat(request.messages, request.options));
  } catch (const gemma::InputError&) {
  }
  return 0;
}
