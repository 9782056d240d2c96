// libFuzzer target: bytes -> safetensors file -> SafetensorsFile (header validation) -> every view.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "io/input_error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      "/tmp/fuzz_safetensors_" + std::to_string(::getpid()) + ".safetensors";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    gemma::SafetensorsFile file(path);
    for (const auto& name : file.names()) (void)file.view(name).sum();
  } catch (const gemma::InputError&) {
  }
  return 0;
}
