// libFuzzer target: one JSONL line -> JSON -> dataset shape -> typed row -> SFT tokenization
// (bundled tokenizer) and bfd packing, or for preference rows (implicit prompts included) DPO's
// and KTO's tokenization and the unpairing. Bad input must end in an InputError, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "data/dataset_rows.h"
#include "data/jsonl_reader.h"
#include "data/preference_dataset.h"
#include "data/sft_dataset.h"
#include "data/sft_tokenization.h"
#include "io/input_error.h"

#ifndef GEMMA_SOURCE_DIR
#define GEMMA_SOURCE_DIR "."
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const gemma::Tokenizer tokenizer = gemma::Tokenizer::from_folder(
      std::filesystem::path(GEMMA_SOURCE_DIR) / "configs" / "tokenizer");
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    if (gemma::find_invalid_utf8(text) != std::string::npos) return 0;
    const nlohmann::json value = gemma::parse_json_row(text, "fuzz:1");
    const gemma::DatasetKind kind = gemma::detect_dataset_kind(value, "fuzz:1");
    const gemma::DatasetRow row = gemma::parse_dataset_row(value, kind, "fuzz:1");
    if (kind == gemma::DatasetKind::kPreference || kind == gemma::DatasetKind::kKto) {
      const gemma::SftDataOptions options;
      try {
        if (kind == gemma::DatasetKind::kPreference) {
          const gemma::PreferenceExample e =
              gemma::tokenize_preference_row(row, tokenizer, options, "fuzz:1");
          if (e.chosen_ids.empty() && e.rejected_ids.empty()) __builtin_trap();
          (void)gemma::preference_example_json(e);
          for (const gemma::DatasetRow& r : gemma::unpair_preference_rows({row}))
            (void)gemma::kto_example_json(gemma::tokenize_kto_row(r, tokenizer, options, "fuzz:1"));
        } else {
          (void)gemma::kto_example_json(gemma::tokenize_kto_row(row, tokenizer, options, "fuzz:1"));
        }
      } catch (const gemma::InputError&) {
      }
      return 0;
    }
    for (const bool assistant_only : {false, true}) {
      gemma::SftDataOptions options;
      options.assistant_only_loss = assistant_only;
      try {
        const gemma::SftExample e =
            gemma::tokenize_sft_row(row, tokenizer, options, true, "fuzz:1");
        if (e.input_ids.size() != e.labels_mask.size()) __builtin_trap();
        (void)gemma::pack_sft_examples({e, e}, 7, gemma::SftPacking::kBfd);
        (void)gemma::sft_example_json(e);
      } catch (const gemma::InputError&) {
      }
    }
  } catch (const gemma::InputError&) {
  }
  return 0;
}
