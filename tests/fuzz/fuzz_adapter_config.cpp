// libFuzzer target: adapter_config.json text -> read_peft_adapter_config (the options and targets
// of a PEFT adapter folder, without its weights). Any input must load or throw InputError.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "io/input_error.h"
#include "peft/peft_adapter_config.h"
#include "tests/fuzz/fuzz_scratch_folder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gemma_fuzz::write_scratch_file("adapter_config.json",
                                 std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const gemma::AdapterSpec spec = gemma::read_peft_adapter_config(gemma_fuzz::scratch_folder());
    if (spec.lora.r <= 0) __builtin_trap();  // refused by the reader
  } catch (const gemma::InputError&) {
  }
  return 0;
}
