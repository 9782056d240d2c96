// libFuzzer target: bytes -> safetensors file -> SafetensorsFile (header validation) -> every view.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "io/input_error.h"
#include "io/safetensors.h"
#include "tests/fuzz/fuzz_scratch_folder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = gemma_fuzz::write_scratch_file(
      "fuzz.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    gemma::SafetensorsFile file(path);
    for (const auto& name : file.names()) (void)file.view(name).sum();
  } catch (const gemma::InputError&) {
  }
  return 0;
}
