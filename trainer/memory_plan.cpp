#include "trainer/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <sstream>

#include "io/bounded_json.h"
#include "model/gemma4_hf_checkpoint.h"
#include "peft/lora_adapters.h"
#include "peft/target_regex.h"
#include "trainer/training_loop.h"

namespace gemma {

namespace {

using json = nlohmann::json;

constexpr int64_t kNf4BlockSize = 64;         // elements per absmax (bitsandbytes' 4-bit default)
constexpr int64_t kNestedBlockSize = 256;     // absmax codes per nested float32 absmax
constexpr int64_t kOptimizerBlockSize = 256;  // 8-bit AdamW: elements per float32 absmax
constexpr int64_t kMin8bitSize = 4096;        // 8-bit AdamW: smaller tensors keep float32 moments
constexpr int64_t kLogitsChunkBudget = int64_t{128} << 20;

// One Linear of the model: its module path and shape.
struct PlannedLinear {
  std::string path;
  int64_t in = 0, out = 0;
  bool nf4 = false;
  bool lora = false;
};

int64_t nf4_bytes(int64_t numel) {
  const int64_t blocks = (numel + kNf4BlockSize - 1) / kNf4BlockSize;
  const int64_t nested = (blocks + kNestedBlockSize - 1) / kNestedBlockSize;
  // packed 4-bit codes, one uint8 absmax code per block, float32 nested absmax, the two maps
  constexpr int64_t kMapBytes = int64_t{16 + 256} * 4;
  return (numel + 1) / 2 + blocks + nested * 4 + kMapBytes;
}

// Every Linear the model builds for `c` (kv-shared layers have no k/v projections).
std::vector<PlannedLinear> model_linears(const Gemma4Config& c) {
  std::vector<PlannedLinear> out;
  const int64_t H = c.hidden_size;
  const auto add = [&](std::string path, int64_t in, int64_t o) {
    out.push_back({std::move(path), in, o});
  };
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const Gemma4LayerSpec& s = c.layers.at(static_cast<size_t>(i));
    const std::string l = "model.layers." + std::to_string(i) + ".";
    const int64_t q = c.num_attention_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    add(l + "self_attn.q_proj", H, q);
    if (!s.kv_shared) {
      add(l + "self_attn.k_proj", H, kv);
      if (s.has_v_proj) add(l + "self_attn.v_proj", H, kv);
    }
    add(l + "self_attn.o_proj", q, H);
    add(l + "mlp.gate_proj", H, s.intermediate_size);
    add(l + "mlp.up_proj", H, s.intermediate_size);
    add(l + "mlp.down_proj", s.intermediate_size, H);
    if (c.has_ple()) {
      add(l + "per_layer_input_gate", H, c.hidden_size_per_layer_input);
      add(l + "per_layer_projection", c.hidden_size_per_layer_input, H);
    }
    if (c.enable_moe_block) add(l + "router.proj", H, c.num_experts);
  }
  if (c.has_ple())
    add("model.per_layer_model_projection", H, c.num_hidden_layers * c.hidden_size_per_layer_input);
  if (!c.tie_word_embeddings) add("lm_head", H, c.vocab_size);
  return out;
}

// What the run's options say, in the units the counts need.
struct Shape {
  int64_t rows = 1;      // sequences in one micro-batch (DPO: chosen and rejected)
  int64_t T = 1;         // tokens per sequence
  int64_t N = 1;         // rows · T
  int64_t a = 2;         // bytes of an activation element (the compute dtype)
  int64_t r = 8;         // LoRA rank
  bool dropout = false;  // LoRA dropout on: each adapter keeps its own dropped input and mask
  bool fused_attention = true;  // model.attn_implementation sdpa: no scores are materialised
  bool one_pass_norms = true;   // on the CPU: RMSNorm keeps its input as it is (rms_norm_cpu.h)
};

// Bytes autograd keeps from one decoder layer's forward until its backward (no checkpointing):
// each term is a tensor an op saves, as this implementation's modules compute them.
struct LayerActivations {
  int64_t saved = 0;            // kept until the layer's backward
  int64_t attention_saved = 0;  // of which the attention block's (freed last in backward)
  int64_t transient = 0;        // the largest extra the attention backward allocates at once
};

LayerActivations layer_activations(const Gemma4Config& c, int64_t layer, const Shape& s,
                                   const std::vector<PlannedLinear>& linears) {
  const Gemma4LayerSpec& spec = c.layers.at(static_cast<size_t>(layer));
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  const auto targeted = [&](const std::string& name) {
    for (const PlannedLinear& l : linears)
      if (l.path == prefix + name) return l.lora;
    return false;
  };
  const int64_t N = s.N, a = s.a, H = c.hidden_size;
  const int64_t q = c.num_attention_heads * spec.head_dim;
  const int64_t kv = spec.num_kv_heads * spec.head_dim;
  const int64_t I = spec.intermediate_size;
  const int64_t scores = s.rows * c.num_attention_heads * s.T * s.T;  // elements
  const bool grouped = c.num_attention_heads != spec.num_kv_heads;
  // RMSNorm keeps its input: on the CPU as it is with a float32 scale per row, elsewhere (LibTorch
  // ops) in float32, a float32 copy of a bf16 input.
  const auto norm = [&](int64_t dim) {
    return s.one_pass_norms ? N * dim * a + N * 4 : N * dim * 4;
  };
  // A LoRA keeps its input (one shared tensor when there is no dropout; with dropout each keeps
  // its own dropped copy and the scaled mask it was multiplied by) and its rank-r middle.
  const auto lora_inputs = [&](std::initializer_list<const char*> names, int64_t in) {
    int64_t n = 0, bytes = 0;
    for (const char* name : names) n += targeted(name) ? 1 : 0;
    if (n == 0) return int64_t{0};
    bytes = n * N * s.r * a;
    bytes += s.dropout ? n * N * in * 2 * a : N * in * a;  // dropped copy and its scaled mask
    return bytes;
  };

  LayerActivations out;
  int64_t& m = out.saved;
  m += norm(H);  // input_layernorm
  m += lora_inputs({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, H);
  m += norm(q) + N * q * a;                                               // q_norm, RoPE'd q
  if (!spec.kv_shared) m += norm(kv) + (spec.has_v_proj ? norm(kv) : 0);  // k_norm, v_norm
  if (s.fused_attention) {
    // scaled_dot_product_attention keeps K and V as given (GQA without repeating), the mask
    // converted to the compute dtype, its output and the float32 log-sum-exp of each query.
    m += 2 * N * kv * a + s.rows * s.T * s.T * a + N * q * a + N * c.num_attention_heads * 4;
  } else {
    m += grouped ? 2 * N * q * a : 2 * N * kv * a;  // K and V (repeated) for matmuls
    m += scores * 4 + (a == 4 ? 0 : scores * a);    // softmax out; its cast
  }
  m += lora_inputs({"self_attn.o_proj"}, q);  // heads merged
  out.attention_saved = m;
  m += norm(H);  // post_attention_layernorm
  m += norm(H);  // pre_feedforward_layernorm
  m += lora_inputs({"mlp.gate_proj", "mlp.up_proj"}, H);
  m += 3 * N * I * a;                      // gate, act(gate), up
  m += lora_inputs({"mlp.down_proj"}, I);  // act(gate)·up
  m += norm(H);                            // post_feedforward_layernorm
  if (c.has_ple()) {
    const int64_t P = c.hidden_size_per_layer_input;
    m += lora_inputs({"per_layer_input_gate"}, H);
    m += 2 * N * P * a;  // gate, act(gate)
    m += lora_inputs({"per_layer_projection"}, P);
    m += norm(H);  // post_per_layer_input_norm
  }
  if (c.enable_moe_block) {
    const int64_t routed = N * c.top_k_experts, Im = c.moe_intermediate_size;
    m += 3 * norm(H);                              // the extra norms of the two branches
    m += N * c.num_experts * 4;                    // router probabilities
    m += routed * (H + 2 * Im + 2 * Im + Im) * a;  // gathered input, gate_up, act, product
  }
  // Backward of the attention: eager's two float32 gradients of the scores' shape at once
  // (softmax's and the mask's) and the gradients of q, K, V and the merged heads; the fused
  // kernel's contiguous output gradient, the gradients of q, K and V and its float32 work buffers
  // (about one float32 q).
  out.transient = s.fused_attention ? 2 * N * q * a + 2 * N * kv * a + N * q * 4
                                    : scores * (4 + 4) + 4 * N * q * a;
  return out;
}

}  // namespace

int64_t loss_chunk_tokens(int64_t vocab_size) {
  return std::clamp<int64_t>(kLogitsChunkBudget / (std::max<int64_t>(vocab_size, 1) * 4), 1, 1024);
}

std::optional<torch::ScalarType> stored_dtype(const std::string& config_json) {
  const json config = parse_bounded_json(config_json, "config.json");
  for (const json* c :
       {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
    if (c == nullptr) continue;
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (c->contains(key) && (*c)[key].is_string())
        return (*c)[key] == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
    }
  }
  return std::nullopt;
}

torch::ScalarType planned_dtype(const Recipe& recipe, const std::string& config_json) {
  const RecipeDtype d =
      recipe.model.load_in_4bit ? recipe.model.bnb_4bit_compute_dtype : recipe.model.dtype;
  if (d == RecipeDtype::kFloat32) return torch::kFloat32;
  if (d == RecipeDtype::kBfloat16) return torch::kBFloat16;
  return stored_dtype(config_json).value_or(torch::kFloat32);
}

MemoryPlan plan_memory(const Gemma4Config& c, torch::ScalarType dtype, const Recipe& recipe,
                       std::optional<int64_t> device_memory,
                       std::optional<torch::ScalarType> file_dtype) {
  const TrainingSection& t = recipe.training;
  MemoryPlan plan;
  plan.device = recipe.model.device == RecipeDevice::kCuda ? "cuda" : "cpu";
  plan.device_memory = device_memory;
  const bool cuda = recipe.model.device == RecipeDevice::kCuda;

  Shape s;
  s.a = dtype == torch::kFloat32 ? 4 : 2;
  s.r = recipe.peft.r;
  s.dropout = recipe.peft.lora_dropout > 0 && t.method == TrainingMethod::kSft;
  s.fused_attention = recipe.model.attn_implementation == AttentionImplementation::kSdpa;
  s.one_pass_norms = !cuda;
  s.rows = t.per_device_train_batch_size * (t.method == TrainingMethod::kDpo ? 2 : 1);
  s.T = t.max_length.value_or(c.max_position_embeddings);
  s.N = s.rows * s.T;
  const int64_t a = s.a, H = c.hidden_size, N = s.N;

  // ---- which Linears are NF4 and which carry an adapter.
  std::vector<PlannedLinear> linears = model_linears(c);
  const AdapterSpec spec = adapter_spec(recipe);
  std::optional<TargetRegex> pattern;
  if (!spec.target_regex.empty()) pattern.emplace(spec.target_regex, "peft.target_modules");
  const bool all_linear = recipe.peft.target_modules.form == TargetModules::Form::kAllLinear;
  for (PlannedLinear& l : linears) {
    l.nf4 = recipe.model.load_in_4bit && l.path != "lm_head" &&
            l.path.find("router.proj") == std::string::npos;
    l.lora = all_linear ? l.path != "lm_head"
                        : is_adapter_target(l.path, spec, pattern ? &*pattern : nullptr);
  }

  // ---- weights.
  int64_t nf4 = 0, dense = 0, ple_table = 0, largest_nf4 = 0, adapter_params = 0;
  int64_t lora_targets = 0;
  std::vector<int64_t> adapter_sizes;
  for (const PlannedLinear& l : linears) {
    const int64_t numel = l.in * l.out;
    if (l.nf4) {
      nf4 += nf4_bytes(numel);
      largest_nf4 = std::max(largest_nf4, numel);
    } else {
      dense += numel * a;
    }
    if (l.lora) {
      ++lora_targets;
      adapter_sizes.push_back(s.r * l.in);
      adapter_sizes.push_back(l.out * s.r);
      if (recipe.peft.use_dora) adapter_sizes.push_back(l.out);
    }
  }
  for (const int64_t n : adapter_sizes) adapter_params += n;
  // Everything that is not a Linear: embeddings, norms, experts, the PLE table.
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(c)) {
    if (!info.used) continue;
    int64_t numel = 1;
    for (const int64_t d : info.shape) numel *= d;
    const std::string& n = info.name;
    const bool linear = info.shape.size() == 2 && n.find("embed_tokens") == std::string::npos &&
                        n.find("experts") == std::string::npos;
    if (linear) continue;
    if (n.find("embed_tokens_per_layer") != std::string::npos) {
      ple_table += numel * a;
    } else if (n.find("experts") != std::string::npos && recipe.model.load_in_4bit) {
      const int64_t experts = info.shape.at(0);
      nf4 += experts * nf4_bytes(numel / experts);
      largest_nf4 = std::max(largest_nf4, numel / experts);
    } else {
      dense += numel * a;
    }
  }
  // On CUDA the table stays in host memory; on CPU it is used from the checkpoint's read-only
  // mapping when the file holds it in the compute dtype (page cache, not allocated memory).
  const bool ple_mapped = !cuda && file_dtype && *file_dtype == dtype;
  const bool ple_host = ple_table > 0 && ((cuda && recipe.model.ple_on_host) || ple_mapped);
  const auto component = [&](std::string name, int64_t bytes, std::string detail,
                             bool on_device = true) {
    if (bytes != 0)
      plan.components.push_back({std::move(name), bytes, on_device, std::move(detail)});
  };
  if (nf4 > 0)
    component("base weights (NF4)", nf4,
              "4-bit codes, a uint8 absmax per 64 and a float32 absmax per 256 of those");
  component("dense weights", dense,
            "embeddings (tied lm_head), norms" +
                std::string(recipe.model.load_in_4bit ? "" : ", every projection") + " in " +
                (a == 4 ? "float32" : "bfloat16"));
  if (ple_table > 0)
    component("per-layer embedding table", ple_table,
              ple_mapped ? "read from the checkpoint's mapping; only looked-up rows are copied"
              : ple_host ? "in host memory (ple_on_host); only looked-up rows cross"
                         : "on the device",
              !ple_host);

  // ---- adapters, their gradients and the optimizer's moments.
  component("LoRA adapters", adapter_params * a,
            std::to_string(lora_targets) + " projections, r=" + std::to_string(s.r));
  component("adapter gradients", adapter_params * a, "one per adapter parameter");
  int64_t moments = 0;
  const bool eight_bit =
      t.optim == OptimizerName::kAdamw8bit || t.optim == OptimizerName::kPagedAdamw8bit;
  for (const int64_t n : adapter_sizes) {
    if (eight_bit && n >= kMin8bitSize) {
      moments += 2 * (n + (n + kOptimizerBlockSize - 1) / kOptimizerBlockSize * 4);
    } else {
      moments += 2 * n * (eight_bit ? 4 : a);
    }
  }
  component("optimizer state", moments,
            eight_bit ? "AdamW 8-bit: uint8 moments with a float32 absmax per 256"
                      : "AdamW: two moments per parameter");

  // ---- activations.
  // A layer's backward at its highest: the layer's saved tensors (recomputed, with
  // checkpointing) down to the attention block's, plus the attention backward's temporaries.
  int64_t saved = 0, layer_backward = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerActivations l = layer_activations(c, i, s, linears);
    saved += l.saved;
    layer_backward =
        std::max(layer_backward, t.gradient_checkpointing
                                     ? std::max(l.saved, l.attention_saved + l.transient)
                                     : l.transient);
  }
  // Shared by every layer: the masks (bool [rows, 1, T, T] per layer type), RoPE tables, and with
  // PLE the per-layer inputs [N, L, P] with their norm's input (float32 off the CPU).
  int64_t shared = 2 * s.rows * s.T * s.T;
  if (c.has_ple()) {
    const int64_t LP = c.num_hidden_layers * c.hidden_size_per_layer_input;
    shared +=
        s.one_pass_norms ? N * LP * 3 * a + N * c.num_hidden_layers * 4 : N * LP * (a + 4 + a);
  }
  int64_t activations = 0;
  std::string activation_detail;
  if (t.gradient_checkpointing) {
    // Each layer keeps its input, KV-source layers their K and V; backward recomputes one layer.
    int64_t kept = c.num_hidden_layers * N * H * a;
    for (const Gemma4LayerSpec& l : c.layers)
      if (l.stores_kv) kept += 2 * N * l.num_kv_heads * l.head_dim * a;
    activation_detail = "checkpointing: each layer's input and the shared K/V";
    if (t.gradient_checkpointing_save_matmuls) {
      // and every frozen projection's output, which the recomputation takes instead of
      // multiplying again (model/kept_products.h)
      for (const PlannedLinear& l : linears)
        if (l.path.rfind("model.layers.", 0) == 0) kept += N * l.out * a;
      activation_detail += ", every frozen projection's output (save_matmuls)";
    }
    activations = kept + shared;
  } else {
    activations = saved + shared;
    activation_detail = "no checkpointing: every layer's saved tensors";
  }
  component(
      "activations kept for backward", activations,
      activation_detail + " (" + std::to_string(s.rows) + " x " + std::to_string(s.T) + " tokens)");
  // Backward's peak is the larger of two moments. The loss: the final norm's input, the hidden
  // states and their gradient, and one logits chunk: the float32 logits and softmax gradient with
  // its cast for the matmul (the same whether the gradient is taken in the forward, as the SFT
  // loss does with a frozen head, or the chunk is recomputed in backward, as DPO's and KTO's). A
  // layer's backward: the gradient flowing down the residual stream, the layer's own saved tensors
  // when checkpointing recomputes them, and its largest temporaries (the attention probabilities'
  // gradients, or one dequantized NF4 weight).
  const int64_t chunk = std::min(loss_chunk_tokens(c.vocab_size), N);
  const int64_t logits = chunk * c.vocab_size * 4;
  const int64_t loss_phase = N * H * ((s.one_pass_norms ? a : 4) + a + a) +
                             (s.one_pass_norms ? N * 4 : 0) + 2 * logits +
                             (a == 4 ? 0 : chunk * c.vocab_size * a);
  const int64_t dequantized = largest_nf4 * (a + 4);
  const int64_t layer_phase = 2 * N * H * 4 + std::max(layer_backward, dequantized);
  if (loss_phase >= layer_phase) {
    component("backward peak: loss and logits chunk", loss_phase,
              std::to_string(chunk) +
                  "-token chunks of float32 logits and their gradient (a "
                  "layer's backward needs less: " +
                  format_bytes(layer_phase) + ")");
  } else {
    component("backward peak: one layer's backward", layer_phase,
              std::string(t.gradient_checkpointing ? "the recomputed layer's tensors, " : "") +
                  "attention gradients" + (largest_nf4 > 0 ? " or one dequantized weight" : "") +
                  " (the loss needs less: " + format_bytes(loss_phase) + ")");
  }
  if (cuda) {
    int64_t sum = 0;
    for (const MemoryComponent& m : plan.components) sum += m.on_device ? m.bytes : 0;
    component("allocator slack and CUDA context", sum / 20 + (int64_t{400} << 20),
              "5% for the caching allocator's fragmentation, 400 MiB of CUDA context and cuBLAS");
  }

  for (const MemoryComponent& m : plan.components)
    (m.on_device ? plan.device_peak_bytes : plan.host_bytes) += m.bytes;

  // ---- with room to spare: the faster setting that still fits.
  if (device_memory && plan.fits() && t.gradient_checkpointing &&
      !t.gradient_checkpointing_save_matmuls) {
    Recipe changed = recipe;
    changed.training.gradient_checkpointing_save_matmuls = true;
    const MemoryPlan p = plan_memory(c, dtype, changed, std::nullopt, file_dtype);
    if (p.device_peak_bytes <= *device_memory)
      plan.faster = MemoryPlanChange{"training.gradient_checkpointing_save_matmuls=true",
                                     p.device_peak_bytes};
  }

  // ---- what to change when it does not fit.
  if (device_memory && plan.device_peak_bytes > *device_memory) {
    const auto try_change = [&](const std::string& what, const std::function<void(Recipe&)>& edit) {
      Recipe changed = recipe;
      edit(changed);
      const MemoryPlan p = plan_memory(c, dtype, changed, std::nullopt, file_dtype);
      if (p.device_peak_bytes < plan.device_peak_bytes)
        plan.changes.push_back({what, p.device_peak_bytes});
    };
    if (s.T > 256)
      try_change("training.max_length=" + std::to_string(s.T / 2),
                 [&](Recipe& r) { r.training.max_length = s.T / 2; });
    if (t.per_device_train_batch_size > 1)
      try_change("training.per_device_train_batch_size=1 (with more gradient_accumulation_steps)",
                 [](Recipe& r) { r.training.per_device_train_batch_size = 1; });
    if (t.gradient_checkpointing_save_matmuls)
      try_change("training.gradient_checkpointing_save_matmuls=false",
                 [](Recipe& r) { r.training.gradient_checkpointing_save_matmuls = false; });
    if (!t.gradient_checkpointing)
      try_change("training.gradient_checkpointing=true",
                 [](Recipe& r) { r.training.gradient_checkpointing = true; });
    if (!recipe.model.load_in_4bit)
      try_change("model.load_in_4bit=true", [](Recipe& r) { r.model.load_in_4bit = true; });
    if (cuda && !recipe.model.ple_on_host && ple_table > 0)
      try_change("model.ple_on_host=true", [](Recipe& r) { r.model.ple_on_host = true; });
    if (!eight_bit)
      try_change("training.optim=paged_adamw_8bit",
                 [](Recipe& r) { r.training.optim = OptimizerName::kPagedAdamw8bit; });
    if (s.r > 8)
      try_change("peft.r=" + std::to_string(s.r / 2), [&](Recipe& r) { r.peft.r = s.r / 2; });
    if (s.dropout) try_change("peft.lora_dropout=0", [](Recipe& r) { r.peft.lora_dropout = 0; });
  }
  return plan;
}

std::string format_bytes(int64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1 << 30));
  } else if (bytes >= (int64_t{1} << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1 << 20));
  } else if (bytes >= 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024);
  } else {
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  }
  return buf;
}

std::string memory_plan_table(const MemoryPlan& plan) {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "%-34s %12s  %-6s  %s\n", "component", "bytes", "where", "how");
  out << line;
  for (const MemoryComponent& m : plan.components) {
    std::snprintf(line, sizeof line, "%-34s %12s  %-6s  ", m.name.c_str(),
                  format_bytes(m.bytes).c_str(), m.on_device ? plan.device.c_str() : "host");
    out << line << m.detail << "\n";
  }
  out << "predicted peak on " << plan.device << ": " << format_bytes(plan.device_peak_bytes) << " ("
      << plan.device_peak_bytes << " bytes)";
  if (plan.device != "cpu") out << "; host: " << format_bytes(plan.host_bytes);
  out << "\n";
  if (plan.device_memory) {
    out << (plan.fits() ? "fits in " : "does not fit in ") << format_bytes(*plan.device_memory)
        << "\n";
    for (const MemoryPlanChange& c : plan.changes)
      out << "  " << c.change << ": " << format_bytes(c.device_peak_bytes) << "\n";
    if (plan.faster)
      out << "room for " << plan.faster->change
          << " (fewer matmuls a step): " << format_bytes(plan.faster->device_peak_bytes) << "\n";
  }
  return out.str();
}

nlohmann::json memory_plan_json(const MemoryPlan& plan) {
  json components = json::array();
  for (const MemoryComponent& m : plan.components)
    components.push_back({{"name", m.name},
                          {"bytes", m.bytes},
                          {"where", m.on_device ? plan.device : "host"},
                          {"detail", m.detail}});
  json out = {{"device", plan.device},
              {"device_peak_bytes", plan.device_peak_bytes},
              {"host_bytes", plan.host_bytes},
              {"components", components}};
  if (plan.device_memory) {
    out["device_memory_bytes"] = *plan.device_memory;
    out["fits"] = plan.fits();
    json changes = json::array();
    for (const MemoryPlanChange& c : plan.changes)
      changes.push_back({{"change", c.change}, {"device_peak_bytes", c.device_peak_bytes}});
    out["changes"] = changes;
    if (plan.faster)
      out["faster"] = {{"change", plan.faster->change},
                       {"device_peak_bytes", plan.faster->device_peak_bytes}};
  }
  return out;
}

}  // namespace gemma
