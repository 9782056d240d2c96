// The step decoder's plan (raw views of the model's weights, read once) and its step: one
// OpenMP parallel region a token (StepThread). Compiled with -ffp-contract=off: a*b+c is rounded
// twice, as LibTorch's elementwise ops round it.
#include "model/gemma4_step_decoder.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/host_allocator.h"
#include "kernels/nf4_fused_matmul.h"
#include "kernels/nf4_matmul.h"
#include "model/gemma4_decoder_layer.h"
#include "model/rotary_embedding.h"
#include "model/step_decoder_ops.h"

namespace gemma {

using decode_ops::attend;
using decode_ops::gated_gelu;
using decode_ops::rms_norm;
using decode_ops::rope_head;
using decode_ops::Rounding;
using decode_ops::softcap;

namespace {

// [begin, end) of n items for thread t of `threads`.
inline std::pair<int64_t, int64_t> share(int64_t n, int t, int threads) {
  return {n * t / threads, n * (t + 1) / threads};
}

const std::vector<float> kNoWeight;  // a weightless RMSNorm

inline void barrier(){
#pragma omp barrier
}

std::vector<float> floats_of(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

std::vector<float> norm_weight(const RmsNorm& norm) {
  return norm->weight.defined() ? floats_of(norm->weight) : std::vector<float>();
}

// Every Linear of the model with its name.
std::vector<std::pair<std::string, const LinearImpl*>> linears_of(Gemma4ForCausalLM& model) {
  std::vector<std::pair<std::string, const LinearImpl*>> out;
  for (const auto& m : model->named_modules()) {
    if (const auto* lin = m.value()->as<LinearImpl>()) out.emplace_back(m.key(), lin);
  }
  return out;
}

}  // namespace

struct StepLayerPlan {
  Gemma4LayerSpec spec;
  int kv_layer = 0;  // the cache entry it attends over: its own, or its source layer's
  FrozenWeightView q, k, v, o, gate, up, down, ple_gate, ple_proj;  // k.out == 0: KV-shared
  std::vector<float> input_norm, post_attention_norm, pre_ff_norm, post_ff_norm, q_norm, k_norm,
      post_ple_norm;
  float layer_scalar = 1.0f;
};

struct Gemma4StepDecoder::Plan {
  Gemma4Config config;
  Rounding rd;
  float eps = 1e-6f;
  bool gelu_tanh = true;
  int64_t H = 0, V = 0, P = 0, L = 0;
  const void* embed = nullptr;  // [V, H] in the compute dtype
  float embed_scale = 1.0f;
  const void* ple_table = nullptr;  // [V_ple, L·P]
  bool ple_table_bf16 = false;
  int64_t ple_rows = 0;
  FrozenWeightView ple_model_proj;
  std::vector<float> ple_proj_norm;
  float ple_scale = 1.0f;
  std::vector<StepLayerPlan> layers;
  std::vector<float> final_norm;
  FrozenWeightView lm_head;
  std::vector<float> inv_freq[2];  // by LayerType
  int64_t head_dim[2] = {0, 0};
  std::optional<double> softcap;
  // widest per-layer sizes, for the workspace
  int64_t max_q = 0, max_kv = 0, max_intermediate = 0, max_head_dim = 0;
  std::vector<torch::Tensor> keep_alive;
};

// Buffers of one step, grown to the batch and reused.
struct Gemma4StepDecoder::Workspace {
  int64_t batch = -1;
  std::vector<float> x, xn, q, k, v, heads, attn, o, gate, up, act, f, ple_in, ple_ctx, g, p;
  std::vector<float> cos[2], sin[2];  // [B, head_dim / 2] by LayerType
  struct PerThread {
    RowsInputBuffer input;
    std::vector<float> scores, acc, a, b, c;  // a-c: one row or head of scratch each
    std::vector<uint8_t> valid;
  };
  std::vector<PerThread> threads;
  // one counter per product phase of a step: the next output row to hand out (in_chunks)
  std::unique_ptr<std::atomic<int64_t>[]> next_row;
  int64_t phases = 0;
  torch::Tensor logits;
};

std::optional<std::string> Gemma4StepDecoder::unsupported_reason(Gemma4ForCausalLM& model) {
  const Gemma4Config& c = model->config();
  if (!model->device().is_cpu()) return "the model is not on the CPU";
  const auto dtype = model->dtype();
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16)
    return "it computes in float32 or bf16 only";
  if (!best_rows_code(dtype == torch::kBFloat16)) return "the CPU has no AVX2 + FMA";
  if (c.enable_moe_block) return "the MoE block is not supported";
  if (c.attn_implementation != AttentionImplementation::kSdpa)
    return "eager attention was asked for";
  for (const auto& [name, lin] : linears_of(model)) {
    if (lin->adapter()) return name + " has an adapter attached";
    if (lin->is_nf4()) {
      const Nf4Weight& w = *lin->nf4_weight();
      if (!w.packed.device().is_cpu() || w.blocksize != kNf4BlockSize || w.shape.size() != 2 ||
          (w.dtype != torch::kFloat32 && w.dtype != torch::kBFloat16))
        return name + " is NF4 in a layout the decoder does not read";
    } else if (lin->weight.scalar_type() != dtype || !lin->weight.device().is_cpu()) {
      return name + " is not in the compute dtype";
    }
  }
  if (c.has_ple()) {
    const auto t = model->model->embed_tokens_per_layer->weight.scalar_type();
    if (t != torch::kFloat32 && t != torch::kBFloat16) return "the PLE table is not f32 or bf16";
  }
  return std::nullopt;
}

Gemma4StepDecoder::Gemma4StepDecoder(Gemma4ForCausalLM& model, std::optional<RowsCode> code)
    : plan_(std::make_unique<Plan>()), workspace_(std::make_unique<Workspace>()) {
  if (const auto why = unsupported_reason(model)) TORCH_CHECK(false, "Gemma4StepDecoder: ", *why);
  Plan& p = *plan_;
  const Gemma4Config& c = model->config();
  const bool bf16 = model->dtype() == torch::kBFloat16;
  code_ = code ? *code : *best_rows_code(bf16);
  const std::vector<RowsCode> here = rows_codes_here();
  TORCH_CHECK(std::find(here.begin(), here.end(), code_) != here.end(),
              "Gemma4StepDecoder: this CPU does not run the ", rows_code_name(code_), " code");
  TORCH_CHECK(code_ != RowsCode::kAvx512Bf16 || bf16,
              "Gemma4StepDecoder: the avx512_bf16 code multiplies bf16 activations");
  p.config = c;
  p.rd.bf16 = bf16;
  p.eps = static_cast<float>(c.rms_norm_eps);
  p.gelu_tanh = c.hidden_activation != "gelu";
  p.H = c.hidden_size;
  p.V = c.vocab_size;
  p.softcap = c.final_logit_softcapping;
  auto& keep = p.keep_alive;

  const auto view = [&](const LinearImpl& lin) {
    FrozenWeightView w;
    w.in = lin.in_features();
    w.out = lin.out_features();
    if (lin.is_nf4() && w.in % kNf4BlockSize == 0) {
      w.format = FrozenWeightView::Format::kNf4;
      w.nf4 = nf4_rows_weight(*lin.nf4_weight(), bf16, &keep);
      collapse_into_huge_pages(w.nf4.packed, static_cast<size_t>(w.out * w.in / 2));
      return w;
    }
    // A dense weight; an NF4 one whose rows are not whole blocks (a PLE projection of 16 or 32
    // inputs) dequantized once, as the LibTorch path dequantizes it for every product.
    const torch::Tensor t = lin.is_nf4() ? dequantize_nf4_as(*lin.nf4_weight(), model->dtype())
                                         : lin.weight.detach().contiguous();
    keep.push_back(t);
    collapse_into_huge_pages(t.data_ptr(), t.nbytes());
    if (bf16) {
      w.format = FrozenWeightView::Format::kBf16;
      w.bf16 = reinterpret_cast<const uint16_t*>(t.data_ptr());
    } else {
      w.format = FrozenWeightView::Format::kF32;
      w.f32 = t.data_ptr<float>();
    }
    return w;
  };
  // a scalar as LibTorch makes it: float32, then the compute dtype
  const auto scalar = [&](double v) { return p.rd(static_cast<float>(v)); };

  Gemma4TextModelImpl& m = *model->model;
  const torch::Tensor embed = m.embed_tokens->weight.detach().contiguous();
  keep.push_back(embed);
  p.embed = embed.data_ptr();
  // read whole by the tied lm_head every step (a separate lm_head: view() above)
  if (!model->lm_head) collapse_into_huge_pages(p.embed, embed.nbytes());
  p.embed_scale = scalar(std::sqrt(static_cast<double>(p.H)));
  if (model->lm_head) {
    p.lm_head = view(*model->lm_head);
  } else {
    p.lm_head.in = p.H;
    p.lm_head.out = p.V;
    if (bf16) {
      p.lm_head.format = FrozenWeightView::Format::kBf16;
      p.lm_head.bf16 = static_cast<const uint16_t*>(p.embed);
    } else {
      p.lm_head.format = FrozenWeightView::Format::kF32;
      p.lm_head.f32 = static_cast<const float*>(p.embed);
    }
  }
  p.final_norm = norm_weight(m.norm);
  if (c.has_ple()) {
    p.P = c.hidden_size_per_layer_input;
    p.L = c.num_hidden_layers;
    const torch::Tensor table = m.embed_tokens_per_layer->weight.detach().contiguous();
    keep.push_back(table);
    p.ple_table = table.data_ptr();
    p.ple_table_bf16 = table.scalar_type() == torch::kBFloat16;
    p.ple_rows = table.size(0);
    p.ple_model_proj = view(*m.per_layer_model_projection);
    p.ple_proj_norm = norm_weight(m.per_layer_projection_norm);
    p.ple_scale = scalar(std::sqrt(static_cast<double>(p.P)));
  }
  for (LayerType type : {LayerType::kSliding, LayerType::kFull}) {
    for (const Gemma4LayerSpec& s : c.layers) {
      if (s.type != type) continue;
      p.inv_freq[static_cast<int>(type)] =
          floats_of(rope_inverse_frequencies(c.rope(type), s.head_dim));
      p.head_dim[static_cast<int>(type)] = s.head_dim;
      break;
    }
  }
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    auto& layer = *m.layers[i]->as<Gemma4DecoderLayerImpl>();
    StepLayerPlan l;
    l.spec = c.layers[i];
    l.kv_layer = l.spec.kv_shared ? l.spec.kv_source : i;
    Gemma4AttentionImpl& a = *layer.self_attn;
    l.q = view(*a.q_proj);
    l.q_norm = norm_weight(a.q_norm);
    if (!l.spec.kv_shared) {
      l.k = view(*a.k_proj);
      l.k_norm = norm_weight(a.k_norm);
      if (a.v_proj) l.v = view(*a.v_proj);
    }
    l.o = view(*a.o_proj);
    l.gate = view(*layer.mlp->gate_proj);
    l.up = view(*layer.mlp->up_proj);
    l.down = view(*layer.mlp->down_proj);
    l.input_norm = norm_weight(layer.input_layernorm);
    l.post_attention_norm = norm_weight(layer.post_attention_layernorm);
    l.pre_ff_norm = norm_weight(layer.pre_feedforward_layernorm);
    l.post_ff_norm = norm_weight(layer.post_feedforward_layernorm);
    if (layer.per_layer_input_gate) {
      l.ple_gate = view(*layer.per_layer_input_gate);
      l.ple_proj = view(*layer.per_layer_projection);
      l.post_ple_norm = norm_weight(layer.post_per_layer_input_norm);
    }
    l.layer_scalar = floats_of(layer.layer_scalar).at(0);
    p.max_q = std::max(p.max_q, l.q.out);
    p.max_kv = std::max(p.max_kv, l.spec.num_kv_heads * l.spec.head_dim);
    p.max_intermediate = std::max(p.max_intermediate, l.gate.out);
    p.max_head_dim = std::max(p.max_head_dim, l.spec.head_dim);
    p.layers.push_back(std::move(l));
  }
  if (code_ == RowsCode::kAvx2) add_nf4_block_tables(p);
  if (!bf16) narrow_bf16_exact_weights(p);
}

namespace {

// Every product's weight view of the plan.
template <typename Plan>
std::vector<FrozenWeightView*> plan_weights(Plan& p) {
  std::vector<FrozenWeightView*> weights = {&p.ple_model_proj, &p.lm_head};
  for (auto& l : p.layers) {
    for (FrozenWeightView* w :
         {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down, &l.ple_gate, &l.ple_proj})
      weights.push_back(w);
  }
  std::erase_if(weights, [](const FrozenWeightView* w) { return w->out == 0; });
  return weights;
}

// Whether every float32 of [out, in] at `w` is a bf16 value (its low 16 bits zero), as each
// weight of a bf16 checkpoint loaded in float32 is.
bool all_bf16_values(const float* w, int64_t count) {
  std::atomic<bool> exact{true};
  constexpr int64_t kStep = int64_t{1} << 16;  // a float32 checkpoint is known after one step
  at::parallel_for(0, count, kStep, [&](int64_t begin, int64_t end) {
    for (int64_t step = begin; step < end && exact.load(std::memory_order_relaxed); step += kStep) {
      uint32_t low = 0;
      for (int64_t i = step; i < std::min(end, step + kStep); ++i) {
        uint32_t bits;
        std::memcpy(&bits, w + i, sizeof bits);
        low |= bits & 0xffffu;
      }
      if (low != 0) exact.store(false, std::memory_order_relaxed);
    }
  });
  return exact.load();
}

}  // namespace

// The AVX2 code spends most of an NF4 product building each block's tables from its absmax;
// built once here they cost half a byte per weight, kept while the machine has room for them
// twice over (a 31B model's tables would be ~15 GB).
void Gemma4StepDecoder::add_nf4_block_tables(Plan& p) {
  std::vector<FrozenWeightView*> weights = plan_weights(p);
  std::erase_if(weights, [](const FrozenWeightView* w) {
    return w->format != FrozenWeightView::Format::kNf4 || !w->nf4.bf16_values;
  });
  int64_t bytes = 0;
  for (const FrozenWeightView* w : weights) bytes += w->out * w->in / kNf4BlockSize * 32;
  const std::optional<int64_t> available = available_host_memory();
  if (bytes == 0 || !available || *available < 2 * bytes) return;
  for (FrozenWeightView* w : weights) {
    const torch::Tensor tables = nf4_block_tables(w->nf4, w->out * w->in / kNf4BlockSize);
    p.keep_alive.push_back(tables);
    collapse_into_huge_pages(tables.data_ptr(), tables.nbytes());
    w->nf4.block_tables = tables.data_ptr<uint8_t>();
  }
}

// A float32 model loaded from a bf16 checkpoint (most are bf16) holds bf16 values widened to
// float32: decoding, which streams every weight once a token, would read twice the bytes the
// values need. Those weights are read as bf16 instead (the products the same values, summed in
// another order: float32 rounding), while the machine has room for the copies twice over.
void Gemma4StepDecoder::narrow_bf16_exact_weights(Plan& p) {
  std::vector<FrozenWeightView*> weights = plan_weights(p);
  std::erase_if(weights, [](const FrozenWeightView* w) {
    return w->format != FrozenWeightView::Format::kF32 || !all_bf16_values(w->f32, w->out * w->in);
  });
  int64_t bytes = 0;
  for (const FrozenWeightView* w : weights) bytes += w->out * w->in * 2;
  const std::optional<int64_t> available = available_host_memory();
  if (bytes == 0 || !available || *available < 2 * bytes) return;
  for (FrozenWeightView* w : weights) {
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-const-cast): from_blob's pointer, only read
    auto* data = const_cast<float*>(w->f32);
    const torch::Tensor narrowed = torch::from_blob(data, {w->out, w->in}).to(torch::kBFloat16);
    p.keep_alive.push_back(narrowed);
    collapse_into_huge_pages(narrowed.data_ptr(), narrowed.nbytes());
    w->format = FrozenWeightView::Format::kBf16;
    w->bf16 = reinterpret_cast<const uint16_t*>(narrowed.data_ptr());
    w->f32 = nullptr;
    ++narrowed_weights_;
  }
}

Gemma4StepDecoder::~Gemma4StepDecoder() = default;

// One thread's part of a step. Every thread runs the same sequence of phases; products hand out
// their outputs in chunks (in_chunks), the rest is split by heads or runs on thread 0, and a
// barrier separates phases that read what another thread wrote.
class Gemma4StepDecoder::StepThread {
 public:
  StepThread(const Plan& plan, RowsCode code, Workspace& ws, int thread, int threads)
      : p_(plan),
        rd_(plan.rd),
        code_(code),
        ws_(ws),
        mine_(ws.threads[thread]),
        t_(thread),
        threads_(threads),
        B_(ws.batch) {}

  void run(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
           KvCache& cache) {
    embed(tokens, positions);
    for (size_t i = 0; i < p_.layers.size(); ++i) {
      const StepLayerPlan& l = p_.layers[i];
      const std::vector<float>& next_norm =
          i + 1 < p_.layers.size() ? p_.layers[i + 1].input_norm : p_.final_norm;
      attention(l, cache);
      feed_forward(l, next_norm);
      if (l.ple_gate.out > 0) per_layer_embedding(l, static_cast<int64_t>(i), next_norm);
    }
    head();
  }

 private:
  // The outputs of one product phase in chunks, to whichever thread asks next: a thread slowed by
  // the machine's other work takes fewer. A chunk is about 128 KB of a dense weight (streamed
  // from memory) or 128K NF4 weights (bound by the lookups); smaller chunks throughout cost more
  // than they balance (bench-100m bf16 decoding: 32 KB 97 tokens/s, 128 KB 109). Near a phase's
  // end they shrink to what is left over twice the threads, down to 16 KB, so that the threads
  // reach the next barrier together (OpenMP's guided schedule; bench-100m bf16: about half the
  // time a thread waits at barriers, 0.17 -> 0.10 ms a token). Each phase has its own counter of
  // the next output row, reset before the step.
  template <typename Work>
  void in_chunks(const FrozenWeightView& w, Work&& work) {
    std::atomic<int64_t>& next = ws_.next_row[phase_++];
    const int64_t per_row = w.format == FrozenWeightView::Format::kNf4    ? w.in
                            : w.format == FrozenWeightView::Format::kBf16 ? 2 * w.in
                                                                          : 4 * w.in;
    const int64_t most = std::max<int64_t>(4, (int64_t{128} << 10) / std::max<int64_t>(1, per_row));
    const int64_t least = std::max<int64_t>(1, (int64_t{16} << 10) / std::max<int64_t>(1, per_row));
    int64_t begin = next.load(std::memory_order_relaxed);
    for (;;) {
      if (begin >= w.out) return;
      const int64_t size = std::clamp<int64_t>((w.out - begin) / (int64_t{2} * threads_),
                                               std::min(least, most), most);
      if (!next.compare_exchange_weak(begin, begin + size, std::memory_order_relaxed)) continue;
      work(begin, std::min(w.out, begin + size));
      begin = next.load(std::memory_order_relaxed);
    }
  }

  // Outputs [begin, end) of `w` for every row of `x` into y [B, w.out], rounded.
  void product_range(const FrozenWeightView& w, const RowsInput& x, float* y, int64_t begin,
                     int64_t end) {
    rows_product(w, x, code_, y, begin, end);
    if (!rd_.bf16) return;
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t o = begin; o < end; ++o) y[b * w.out + o] = rd_(y[b * w.out + o]);
  }

  void product(const FrozenWeightView& w, const RowsInput& x, float* y) {
    in_chunks(w, [&](int64_t begin, int64_t end) { product_range(w, x, y, begin, end); });
  }

  // x [B, width] in the forms this thread's code reads.
  RowsInput input(const float* x, int64_t width) {
    return mine_.input.prepare(x, B_, width, code_);
  }

  // §2.2: embeddings × √H, this step's RoPE tables, the per-layer inputs; then the first layer's
  // input norm.
  void embed(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions) {
    const int64_t H = p_.H;
    if (t_ == 0) {
      for (int64_t b = 0; b < B_; ++b) {
        float* x = ws_.x.data() + b * H;
        if (rd_.bf16) {
          const auto* row = static_cast<const uint16_t*>(p_.embed) + tokens[b] * H;
          for (int64_t i = 0; i < H; ++i) x[i] = rd_(bf16::to_float(row[i]) * p_.embed_scale);
        } else {
          const float* row = static_cast<const float*>(p_.embed) + tokens[b] * H;
          for (int64_t i = 0; i < H; ++i) x[i] = row[i] * p_.embed_scale;
        }
        for (int type = 0; type < 2; ++type) {
          const int64_t half = p_.head_dim[type] / 2;
          const auto pos = static_cast<float>(positions[b]);
          for (int64_t i = 0; i < half; ++i) {
            const float angle = pos * p_.inv_freq[type][i];
            ws_.cos[type][b * half + i] = rd_(std::cos(angle));
            ws_.sin[type][b * half + i] = rd_(std::sin(angle));
          }
        }
      }
    }
    barrier();
    if (p_.P > 0) {
      product(p_.ple_model_proj, input(ws_.x.data(), H), ws_.ple_ctx.data());
      barrier();
      if (t_ == 0) per_layer_inputs(tokens);
    }
    if (t_ == 0) {
      for (int64_t b = 0; b < B_; ++b)
        rms_norm(ws_.x.data() + b * H, ws_.xn.data() + b * H, H, p_.layers[0].input_norm, p_.eps,
                 rd_);
    }
    barrier();
  }

  // §2.2 a-c: (norm(projection · H^-1/2) + PLE row · √P) · 2^-1/2, for every layer.
  void per_layer_inputs(const std::vector<int64_t>& tokens) {
    const int64_t LP = p_.L * p_.P;
    const auto inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p_.H)));
    const auto half_power = static_cast<float>(std::pow(2.0, -0.5));
    float* normed = mine_.a.data();
    for (int64_t b = 0; b < B_; ++b) {
      float* ctx = ws_.ple_ctx.data() + b * LP;
      for (int64_t i = 0; i < LP; ++i) ctx[i] = rd_(ctx[i] * inv_sqrt_h);
      for (int64_t l = 0; l < p_.L; ++l) {
        rms_norm(ctx + l * p_.P, normed, p_.P, p_.ple_proj_norm, p_.eps, rd_);
        float* out = ws_.ple_in.data() + b * LP + l * p_.P;
        for (int64_t i = 0; i < p_.P; ++i) {
          const int64_t at = tokens[b] * LP + l * p_.P + i;
          const float raw = p_.ple_table_bf16
                                ? bf16::to_float(static_cast<const uint16_t*>(p_.ple_table)[at])
                                : static_cast<const float*>(p_.ple_table)[at];
          const float token_part = rd_(rd_(raw) * p_.ple_scale);
          out[i] = rd_(rd_(normed[i] + token_part) * half_power);
        }
      }
    }
  }

  // §2.3 steps 1-3 and §2.4: q, k, v; QK norms, RoPE, V norm; this step's K/V into the cache;
  // attention over the kept keys and this step's; o_proj, post-attention norm, residual; then
  // the feed-forward's input norm.
  void attention(const StepLayerPlan& l, KvCache& cache) {
    const Gemma4LayerSpec& s = l.spec;
    const int type = static_cast<int>(s.type);
    const int64_t d = s.head_dim, nH = l.q.out / d, kvH = s.num_kv_heads, half = d / 2;
    {
      const RowsInput x = input(ws_.xn.data(), p_.H);
      product(l.q, x, ws_.q.data());
      if (l.k.out > 0) product(l.k, x, ws_.k.data());
      if (l.v.out > 0) product(l.v, x, ws_.v.data());
    }
    barrier();
    const KvCache::Entry& e = cache.entry(l.kv_layer);
    const int64_t capacity = e.k.size(2), slot = e.begin + e.length;
    {
      const int64_t q_units = B_ * nH, units = q_units + (l.k.out > 0 ? B_ * kvH : 0);
      const auto [begin, end] = share(units, t_, threads_);
      for (int64_t u = begin; u < end; ++u) {
        if (u < q_units) {
          const int64_t b = u / nH, h = u % nH;
          rms_norm(ws_.q.data() + b * l.q.out + h * d, mine_.a.data(), d, l.q_norm, p_.eps, rd_);
          rope_head(mine_.a.data(), ws_.heads.data() + b * l.q.out + h * d,
                    ws_.cos[type].data() + b * half, ws_.sin[type].data() + b * half, half, rd_);
          continue;
        }
        const int64_t b = (u - q_units) / kvH, h = (u - q_units) % kvH, width = kvH * d;
        const float* k_raw = ws_.k.data() + b * width + h * d;
        const float* v_raw = l.v.out > 0 ? ws_.v.data() + b * width + h * d : k_raw;  // K = V
        float* key = mine_.b.data();
        float* value = mine_.c.data();
        rms_norm(k_raw, mine_.a.data(), d, l.k_norm, p_.eps, rd_);
        rope_head(mine_.a.data(), key, ws_.cos[type].data() + b * half,
                  ws_.sin[type].data() + b * half, half, rd_);
        rms_norm(v_raw, value, d, kNoWeight, p_.eps, rd_);
        const int64_t at = ((b * kvH + h) * capacity + slot) * d;
        if (rd_.bf16) {
          auto* kp = static_cast<uint16_t*>(e.k.data_ptr()) + at;
          auto* vp = static_cast<uint16_t*>(e.v.data_ptr()) + at;
          for (int64_t i = 0; i < d; ++i) {
            kp[i] = bf16::from_float(key[i]);
            vp[i] = bf16::from_float(value[i]);
          }
        } else {
          std::memcpy(e.k.data_ptr<float>() + at, key, d * sizeof(float));
          std::memcpy(e.v.data_ptr<float>() + at, value, d * sizeof(float));
        }
      }
    }
    barrier();
    {
      const int64_t n = e.length + 1, groups = nH / kvH, seen = cache.seen_tokens();
      const int64_t stride = cache.key_valid_stride();
      const bool* key_valid = cache.key_valid_data();
      auto* valid = reinterpret_cast<bool*>(mine_.valid.data());
      const auto [begin, end] = share(B_ * nH, t_, threads_);
      for (int64_t u = begin; u < end; ++u) {
        const int64_t b = u / nH, h = u % nH, kvh = h / groups;
        for (int64_t j = 0; j < e.length; ++j)
          valid[j] = key_valid[b * stride + seen - e.length + j];
        valid[e.length] = true;
        const int64_t base = ((b * kvH + kvh) * capacity + e.begin) * d;
        const float* q = ws_.heads.data() + b * l.q.out + h * d;
        float* out = ws_.attn.data() + b * l.q.out + h * d;
        if (rd_.bf16) {
          attend(q, static_cast<const uint16_t*>(e.k.data_ptr()) + base,
                 static_cast<const uint16_t*>(e.v.data_ptr()) + base, valid, n, d,
                 mine_.scores.data(), mine_.acc.data(), out, rd_);
        } else {
          attend(q, e.k.data_ptr<float>() + base, e.v.data_ptr<float>() + base, valid, n, d,
                 mine_.scores.data(), mine_.acc.data(), out, rd_);
        }
      }
    }
    barrier();
    product(l.o, input(ws_.attn.data(), l.o.in), ws_.o.data());
    barrier();
    if (t_ == 0) {
      for (int64_t b = 0; b < B_; ++b) {
        float* x = ws_.x.data() + b * p_.H;
        add_normed(ws_.o.data() + b * p_.H, l.post_attention_norm, x);
        rms_norm(x, ws_.xn.data() + b * p_.H, p_.H, l.pre_ff_norm, p_.eps, rd_);
      }
    }
    barrier();
  }

  // x += rd(norm(y)), rounded (a residual).
  void add_normed(const float* y, const std::vector<float>& weight, float* x) {
    float* normed = mine_.a.data();
    rms_norm(y, normed, p_.H, weight, p_.eps, rd_);
    for (int64_t i = 0; i < p_.H; ++i) x[i] = rd_(x[i] + normed[i]);
  }

  // §2.3 step 4 and §2.6: the GeGLU MLP (gate and up in the same chunks, so the activation needs
  // no barrier), its post-norm and residual; without PLE the layer scalar and the next input norm.
  void feed_forward(const StepLayerPlan& l, const std::vector<float>& next_norm) {
    {
      const RowsInput x = input(ws_.xn.data(), p_.H);
      const int64_t I = l.gate.out;
      in_chunks(l.gate, [&](int64_t begin, int64_t end) {
        product_range(l.gate, x, ws_.gate.data(), begin, end);
        product_range(l.up, x, ws_.up.data(), begin, end);
        for (int64_t b = 0; b < B_; ++b) {
          const int64_t at = b * I + begin;
          gated_gelu(ws_.gate.data() + at, ws_.up.data() + at, ws_.act.data() + at, end - begin,
                     p_.gelu_tanh, rd_);
        }
      });
    }
    barrier();
    product(l.down, input(ws_.act.data(), l.down.in), ws_.f.data());
    barrier();
    if (t_ == 0) {
      for (int64_t b = 0; b < B_; ++b) {
        float* x = ws_.x.data() + b * p_.H;
        add_normed(ws_.f.data() + b * p_.H, l.post_ff_norm, x);
        if (l.ple_gate.out > 0) continue;
        for (int64_t i = 0; i < p_.H; ++i) x[i] = rd_(x[i] * l.layer_scalar);
        rms_norm(x, ws_.xn.data() + b * p_.H, p_.H, next_norm, p_.eps, rd_);
      }
    }
    barrier();
  }

  // §2.3 step 5: gelu(gate(x)) · this layer's per-layer input, projected back, normed, added;
  // step 6: the layer scalar; then the next input norm.
  void per_layer_embedding(const StepLayerPlan& l, int64_t index,
                           const std::vector<float>& next_norm) {
    {
      const RowsInput x = input(ws_.x.data(), p_.H);
      const int64_t LP = p_.L * p_.P;
      in_chunks(l.ple_gate, [&](int64_t begin, int64_t end) {
        product_range(l.ple_gate, x, ws_.g.data(), begin, end);
        for (int64_t b = 0; b < B_; ++b) {
          float* g = ws_.g.data() + b * p_.P + begin;
          gated_gelu(g, ws_.ple_in.data() + b * LP + index * p_.P + begin, g, end - begin,
                     p_.gelu_tanh, rd_);
        }
      });
    }
    barrier();
    product(l.ple_proj, input(ws_.g.data(), p_.P), ws_.p.data());
    barrier();
    if (t_ == 0) {
      for (int64_t b = 0; b < B_; ++b) {
        float* x = ws_.x.data() + b * p_.H;
        add_normed(ws_.p.data() + b * p_.H, l.post_ple_norm, x);
        for (int64_t i = 0; i < p_.H; ++i) x[i] = rd_(x[i] * l.layer_scalar);
        rms_norm(x, ws_.xn.data() + b * p_.H, p_.H, next_norm, p_.eps, rd_);
      }
    }
    barrier();
  }

  // The lm_head on the final-normed rows, then the final softcap.
  void head() {
    float* logits = ws_.logits.data_ptr<float>();
    const RowsInput x = input(ws_.xn.data(), p_.H);
    in_chunks(p_.lm_head, [&](int64_t begin, int64_t end) {
      product_range(p_.lm_head, x, logits, begin, end);
      if (!p_.softcap) return;
      for (int64_t b = 0; b < B_; ++b)
        softcap(logits + b * p_.V + begin, end - begin, static_cast<float>(*p_.softcap), rd_);
    });
  }

  const Plan& p_;
  const Rounding rd_;
  const RowsCode code_;
  Workspace& ws_;
  Workspace::PerThread& mine_;
  const int t_, threads_;
  const int64_t B_;
  int64_t phase_ = 0;
};

torch::Tensor Gemma4StepDecoder::step(const std::vector<int64_t>& tokens,
                                      const std::vector<int64_t>& positions, KvCache& cache) {
  c10::InferenceMode inference;
  const Plan& p = *plan_;
  const auto B = static_cast<int64_t>(tokens.size());
  TORCH_CHECK(B > 0 && positions.size() == tokens.size(),
              "Gemma4StepDecoder::step: one token and one position per sequence");
  for (const int64_t t : tokens)
    TORCH_CHECK(t >= 0 && t < p.V && (p.P == 0 || t < p.ple_rows),
                "Gemma4StepDecoder::step: token id ", t, " outside the vocabulary");
  // Nothing in the parallel region may throw: every entry is checked here.
  const auto kv_dtype = p.rd.bf16 ? torch::kBFloat16 : torch::kFloat32;
  for (const StepLayerPlan& l : p.layers) {
    const KvCache::Entry& e = cache.entry(l.kv_layer);
    TORCH_CHECK(e.k.defined() && e.k.size(0) == B && e.k.size(1) == l.spec.num_kv_heads &&
                    e.k.size(3) == l.spec.head_dim && e.k.scalar_type() == kv_dtype &&
                    e.k.is_cpu() && e.k.is_contiguous() && e.v.is_contiguous(),
                "Gemma4StepDecoder::step: the cache holds no prefill of ", B,
                " sequences by this model");
  }
  TORCH_CHECK(cache.seen_tokens() > 0, "Gemma4StepDecoder::step: the cache holds no prefill");
  cache.reserve(1);

  Workspace& ws = *workspace_;
  const int threads = std::max(1, at::get_num_threads());
  if (ws.batch != B || static_cast<int>(ws.threads.size()) < threads) {
    const auto n = [&](int64_t width) { return static_cast<size_t>(B * width); };
    ws.batch = B;
    ws.x.resize(n(p.H));
    ws.xn.resize(n(std::max(p.H, p.max_q)));
    ws.q.resize(n(p.max_q));
    ws.k.resize(n(p.max_kv));
    ws.v.resize(n(p.max_kv));
    ws.heads.resize(n(p.max_q));
    ws.attn.resize(n(p.max_q));
    ws.o.resize(n(p.H));
    ws.gate.resize(n(p.max_intermediate));
    ws.up.resize(n(p.max_intermediate));
    ws.act.resize(n(p.max_intermediate));
    ws.f.resize(n(p.H));
    ws.ple_in.resize(n(p.L * p.P));
    ws.ple_ctx.resize(n(p.L * p.P));
    ws.g.resize(n(p.P));
    ws.p.resize(n(p.H));
    for (int t = 0; t < 2; ++t) {
      ws.cos[t].resize(n(p.head_dim[t] / 2));
      ws.sin[t].resize(n(p.head_dim[t] / 2));
    }
    ws.threads.resize(threads);
  }
  const int64_t longest = cache.seen_tokens() + 1;
  for (auto& t : ws.threads) {
    t.scores.resize(longest);
    t.valid.resize(longest);
    t.acc.resize(p.max_head_dim);
    for (auto* v : {&t.a, &t.b, &t.c}) v->resize(std::max({p.H, p.P, p.max_head_dim}));
  }
  ws.logits = torch::empty({B, p.V}, torch::kFloat32);
  // at most 8 product phases a layer, the PLE projection and the lm_head
  const int64_t phases = 8 * static_cast<int64_t>(p.layers.size()) + 2;
  if (ws.phases != phases) {
    ws.next_row = std::make_unique<std::atomic<int64_t>[]>(phases);
    ws.phases = phases;
  }
  for (int64_t i = 0; i < phases; ++i) ws.next_row[i].store(0, std::memory_order_relaxed);

#pragma omp parallel num_threads(threads)
  StepThread(p, code_, ws, omp_get_thread_num(), omp_get_num_threads())
      .run(tokens, positions, cache);

  cache.advance(1);
  cache.commit(torch::ones({B, 1}, torch::kBool));
  return ws.logits;
}

}  // namespace gemma
