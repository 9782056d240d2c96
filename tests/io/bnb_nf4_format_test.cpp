// bitsandbytes' serialized NF4 form read back: the round trip, and a quant_state that is damaged
// (fields of the wrong type, shapes that would size reads without bound) as one InputError.
#include "io/bnb_nf4_format.h"

#include <gtest/gtest.h>

#include "io/input_error.h"
#include "io/safetensors.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::ScratchDir;

constexpr const char* kKey = "w.weight";

// The checkpoint folder `dir` holding one NF4 weight whose quant_state JSON is `state`
// (the real one when empty).
void write_nf4_checkpoint(const std::filesystem::path& dir, const Nf4Weight& w,
                          const std::string& state = "") {
  std::vector<std::pair<std::string, torch::Tensor>> tensors = bnb_nf4_tensors(kKey, w);
  if (!state.empty()) {
    for (auto& [key, t] : tensors) {
      if (key.find("quant_state") == std::string::npos) continue;
      t = torch::from_blob(const_cast<char*>(state.data()), {static_cast<int64_t>(state.size())},
                           torch::kUInt8)
              .clone();
    }
  }
  write_safetensors(dir / "model.safetensors", tensors);
}

std::string read_error(const std::filesystem::path& dir) {
  try {
    const HfCheckpointReader reader(dir);
    read_bnb_nf4(reader, kKey, "ckpt");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(BnbNf4Format, RoundTripsAndRefusesDamagedQuantStates) {
  ScratchDir dir;
  torch::manual_seed(2);
  const Nf4Weight w = quantize_nf4(torch::randn({8, 64}));
  write_nf4_checkpoint(dir.path(), w);
  {
    const HfCheckpointReader reader(dir.path());
    ASSERT_TRUE(has_bnb_nf4(reader, kKey));
    const Nf4Weight back = read_bnb_nf4(reader, kKey, "ckpt");
    EXPECT_EQ(back.shape, w.shape);
    EXPECT_TRUE(torch::equal(dequantize_nf4(back), dequantize_nf4(w)));
  }
  const std::string good = bnb_quant_state_json(w);
  const auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from << " not in " << s;
    return s.replace(at, from.size(), to);
  };
  const struct {
    std::string state, needle;
  } cases[] = {
      {with("\"quant_type\": \"nf4\"", "\"quant_type\": 4"), "quant_type is not \"nf4\""},
      {"[1, 2]", "quant_type is not \"nf4\""},
      {"{\"quant_type\": \"nf4\", \"a\": 1e999}", "not valid JSON"},
      {with("\"shape\": [8, 64]", "\"shape\": [1099511627776, 1099511627776]"),
       "more than 2^36 elements"},
      {with("\"shape\": [8, 64]", "\"shape\": [8, 0]"), "a dimension below 1"},
      {with("\"shape\": [8, 64]", "\"shape\": [-8, -64]"), "a dimension below 1"},
      {with("\"blocksize\": 64", "\"blocksize\": 1048576"),
       "blocksize must be even, from 2 to 4096"},
      {with("\"blocksize\": 64", "\"blocksize\": \"64\""), "lacks or mistypes a field"},
  };
  for (const auto& c : cases) {
    write_nf4_checkpoint(dir.path(), w, c.state);
    const std::string error = read_error(dir.path());
    EXPECT_NE(error.find(c.needle), std::string::npos) << c.state << "\n -> " << error;
  }
}

}  // namespace
}  // namespace gemma
