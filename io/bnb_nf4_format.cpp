#include "io/bnb_nf4_format.h"

#include <sstream>

#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {
using json = nlohmann::json;

namespace {

// Suffixes after `P.weight` (§1.8); the order is the one bitsandbytes' state dict uses.
constexpr const char* kAbsmax = ".absmax";
constexpr const char* kQuantMap = ".quant_map";
constexpr const char* kNestedAbsmax = ".nested_absmax";
constexpr const char* kNestedQuantMap = ".nested_quant_map";
constexpr const char* kQuantState = ".quant_state.bitsandbytes__nf4";
// bitsandbytes quantizes in blocks of 32 to 4096 values; the element bound is the one
// config.json's tensors are held to (model/gemma4_config.h).
constexpr int64_t kMaxNf4BlockSize = 4096;
constexpr int64_t kMaxNf4Elements = int64_t{1} << 36;

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    case torch::kFloat32:
      return "float32";
    default:
      TORCH_CHECK(false, "bnb NF4: unsupported dtype ", c10::toString(t));
  }
}

torch::ScalarType dtype_from_name(const std::string& name, const std::string& where) {
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  if (name == "float32") return torch::kFloat32;
  throw InputError(where + ": quant_state dtype \"" + name +
                   "\" is not bfloat16, float16 or float32");
}

}  // namespace

std::vector<std::string> bnb_nf4_keys(const std::string& weight_key) {
  return {weight_key,
          weight_key + kAbsmax,
          weight_key + kQuantMap,
          weight_key + kNestedAbsmax,
          weight_key + kNestedQuantMap,
          weight_key + kQuantState};
}

std::string bnb_quant_state_json(const Nf4Weight& w) {
  // json.dumps(default separators): ", " between items and ": " after keys, insertion order.
  std::ostringstream shape;
  for (size_t i = 0; i < w.shape.size(); ++i) shape << (i ? ", " : "") << w.shape[i];
  return "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(w.blocksize) +
         ", \"dtype\": \"" + dtype_name(w.dtype) + "\", \"shape\": [" + shape.str() +
         "], \"nested_blocksize\": " + std::to_string(kNf4NestedBlockSize) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " +
         json(static_cast<double>(w.offset)).dump() + "}";
}

std::vector<std::pair<std::string, torch::Tensor>> bnb_nf4_tensors(const std::string& weight_key,
                                                                   const Nf4Weight& w) {
  const std::string state = bnb_quant_state_json(w);
  torch::Tensor state_bytes = torch::empty({static_cast<int64_t>(state.size())}, torch::kUInt8);
  std::memcpy(state_bytes.data_ptr(), state.data(), state.size());
  const auto keys = bnb_nf4_keys(weight_key);
  return {{keys[0], w.packed.cpu()},           {keys[1], w.absmax_codes.cpu()},
          {keys[2], w.quant_map.cpu()},        {keys[3], w.nested_absmax.cpu()},
          {keys[4], w.nested_quant_map.cpu()}, {keys[5], state_bytes}};
}

bool has_bnb_nf4(const HfCheckpointReader& reader, const std::string& weight_key) {
  return reader.contains(weight_key + kQuantState);
}

Nf4Weight read_bnb_nf4(const HfCheckpointReader& reader, const std::string& weight_key,
                       const std::string& where) {
  const std::string at = where + ": \"" + weight_key + "\"";
  for (const std::string& key : bnb_nf4_keys(weight_key)) {
    if (!reader.contains(key))
      throw InputError(at + ": bitsandbytes 4-bit weight without \"" + key + "\"");
  }
  const torch::Tensor state_bytes = reader.view(weight_key + kQuantState);
  if (state_bytes.scalar_type() != torch::kUInt8)
    throw InputError(at + ": quant_state is not U8 bytes");
  const std::string text(static_cast<const char*>(state_bytes.data_ptr()), state_bytes.numel());
  const json state = parse_json_input(text, at + ": quant_state");
  if (!state.is_object() || !state.contains("quant_type") || state["quant_type"] != "nf4") {
    throw InputError(at + ": quant_state quant_type is not \"nf4\"");
  }
  Nf4Weight w;
  try {
    w.blocksize = state.at("blocksize").get<int64_t>();
    w.dtype = dtype_from_name(state.at("dtype").get<std::string>(), at);
    w.shape = state.at("shape").get<std::vector<int64_t>>();
    w.offset = static_cast<float>(state.at("nested_offset").get<double>());
    if (state.at("nested_blocksize").get<int64_t>() != kNf4NestedBlockSize) {
      throw InputError(at + ": nested_blocksize must be 256");
    }
  } catch (const json::exception& e) {
    throw InputError(at + ": quant_state lacks or mistypes a field (" + std::string(e.what()) +
                     ")");
  }
  if (w.blocksize <= 0 || w.blocksize % 2 != 0 || w.blocksize > kMaxNf4BlockSize)
    throw InputError(at + ": blocksize must be even, from 2 to " +
                     std::to_string(kMaxNf4BlockSize));
  // The shape sizes what is read next: each dimension positive, the product bounded (and so
  // no overflow in the block counts below).
  int64_t elements = 1;
  for (const int64_t d : w.shape) {
    if (d <= 0 || d > kMaxNf4Elements || elements > kMaxNf4Elements / d)
      throw InputError(at + ": quant_state shape " + shape_text(w.shape) +
                       " has a dimension below 1 or more than 2^36 elements");
    elements *= d;
  }
  // The packed bytes may be stored in another dtype (quant_storage): view them as uint8.
  w.packed = reader.view(weight_key).contiguous().view(torch::kUInt8).reshape({-1, 1});
  w.absmax_codes = reader.view(weight_key + kAbsmax).contiguous();
  w.quant_map = reader.view(weight_key + kQuantMap).to(torch::kFloat32).contiguous();
  w.nested_absmax = reader.view(weight_key + kNestedAbsmax).to(torch::kFloat32).contiguous();
  w.nested_quant_map = reader.view(weight_key + kNestedQuantMap).to(torch::kFloat32).contiguous();
  const int64_t n = w.numel(), blocks = (n + w.blocksize - 1) / w.blocksize;
  if (n <= 0 || w.packed.numel() != (n + 1) / 2 || w.absmax_codes.scalar_type() != torch::kUInt8 ||
      w.absmax_codes.numel() != blocks || w.quant_map.numel() != 16 ||
      w.nested_quant_map.numel() != 256 ||
      w.nested_absmax.numel() != (blocks + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize) {
    throw InputError(at + ": the stored sizes do not fit the quant_state shape and blocksize");
  }
  return w;
}

json bnb_quantization_config(const std::string& compute_dtype) {
  return {{"_load_in_4bit", true},
          {"_load_in_8bit", false},
          {"bnb_4bit_compute_dtype", compute_dtype},
          {"bnb_4bit_quant_storage", "uint8"},
          {"bnb_4bit_quant_type", "nf4"},
          {"bnb_4bit_use_double_quant", true},
          {"llm_int8_enable_fp32_cpu_offload", false},
          {"llm_int8_has_fp16_weight", false},
          {"llm_int8_skip_modules", nullptr},
          {"llm_int8_threshold", 6.0},
          {"load_in_4bit", true},
          {"load_in_8bit", false},
          {"quant_method", "bitsandbytes"}};
}

}  // namespace gemma
