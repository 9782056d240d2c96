// libFuzzer target: config.json text -> Gemma4Config. Any input must parse or throw InputError.
#include <cstddef>
#include <cstdint>
#include <string>

#include "io/input_error.h"
#include "model/gemma4_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    gemma::parse_gemma4_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const gemma::InputError&) {
  }
  return 0;
}
