// libFuzzer target: bytes -> parse_gguf (header, metadata, tensor infos, bounds and alignment).
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "io/gguf_reader.h"
#include "io/input_error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    (void)gemma::parse_gguf(in, size, "fuzz.gguf");
  } catch (const gemma::InputError&) {
  }
  return 0;
}
