// The step decoder's plan (raw views of the model's weights, read once) and its step: one
// OpenMP parallel region a token. Each product is split evenly over the threads by output
// features; the small per-row work between products (norms, RoPE, residuals) runs on one thread,
// the heads are shared out; a barrier separates the phases that read what others wrote.
// Compiled with -ffp-contract=off: a*b+c is rounded twice, as LibTorch's elementwise ops round it.
#include "model/gemma4_step_decoder.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/nf4_fused_matmul.h"
#include "kernels/nf4_matmul.h"
#include "model/gemma4_decoder_layer.h"
#include "model/rotary_embedding.h"

namespace gemma {

namespace {

// v rounded to the nearest bf16 (ties to even), as a float.
inline float bf16_value(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return v;  // NaN stays NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

inline uint16_t bf16_bits(float v) {  // of a value bf16 holds exactly
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<uint16_t>(bits >> 16);
}

inline float widen_bf16(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The compute dtype's rounding: identity for float32.
struct Rounding {
  bool bf16 = false;
  float operator()(float v) const { return bf16 ? bf16_value(v) : v; }
};

// [begin, end) of n items for thread t of `threads`.
inline std::pair<int64_t, int64_t> share(int64_t n, int t, int threads) {
  return {n * t / threads, n * (t + 1) / threads};
}

const std::vector<float> kNoWeight;  // a weightless RMSNorm

inline void barrier() {
#pragma omp barrier
}

// Gemma's RMSNorm of `dim` values (float32 inside): x · (mean(x²) + eps)^(-1/2) · w, rounded.
void rms_norm(const float* x, float* y, int64_t dim, const std::vector<float>& weight, float eps,
              Rounding rd) {
  float sum = 0.0f;
  for (int64_t i = 0; i < dim; ++i) sum += x[i] * x[i];
  const float mean = sum / static_cast<float>(dim);
  const float r = 1.0f / std::sqrt(mean + eps);
  if (weight.empty()) {
    for (int64_t i = 0; i < dim; ++i) y[i] = rd(x[i] * r);
  } else {
    for (int64_t i = 0; i < dim; ++i) y[i] = rd((x[i] * r) * weight[i]);
  }
}

// gelu_pytorch_tanh (LibTorch's formula) or the exact erf form.
inline float gelu(float x, bool tanh_form) {
  if (tanh_form) {
    constexpr float kBeta = static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5);
    constexpr float kKappa = 0.044715f;
    const float cube = x * x * x;
    const float inner = kBeta * (x + kKappa * cube);
    return 0.5f * x * (1.0f + std::tanh(inner));
  }
  return x * 0.5f * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2)));
}

// --- 8 lanes at a time (AVX2): tanh, the GeGLU activation, the softcap ------------------------

// e^x for x in [-88, 88] (Cephes' expf: a range reduction by ln 2 in two parts and a degree-6
// polynomial; about 1 ulp).
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
}

// tanh (Cephes' tanhf: an odd polynomial below 0.625, 1 - 2 / (e^2|x| + 1) above; about 2 ulp).
__attribute__((target("avx2,fma"))) inline __m256 tanh8(__m256 x) {
  const __m256 sign = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN)));
  const __m256 z = _mm256_xor_ps(x, sign);  // |x|
  const __m256 e = exp8(_mm256_min_ps(_mm256_add_ps(z, z), _mm256_set1_ps(88.0f)));
  const __m256 far =
      _mm256_sub_ps(_mm256_set1_ps(1.0f),
                    _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
  const __m256 z2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(2.06390887954e-2f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(-5.37397155531e-2f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.33314422036e-1f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(-3.33332819422e-1f));
  const __m256 near = _mm256_fmadd_ps(_mm256_mul_ps(p, z2), z, z);
  const __m256 is_far = _mm256_cmp_ps(z, _mm256_set1_ps(0.625f), _CMP_GT_OQ);
  return _mm256_or_ps(_mm256_blendv_ps(near, far, is_far), sign);
}

// The compute dtype's rounding, 8 lanes (as Rounding; NaN inputs are not expected here).
__attribute__((target("avx2,fma"))) inline __m256 round8(__m256 v, bool bf16) {
  if (!bf16) return v;
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb);
  return _mm256_castsi256_ps(
      _mm256_and_si256(rounded, _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u))));
}

// act = rd(rd(gelu(gate)) · other) over n values; `other` may be `act`.
__attribute__((target("avx2,fma"))) void gated_gelu(const float* gate, const float* other,
                                                    float* act, int64_t n, bool tanh_form,
                                                    Rounding rd) {
  int64_t i = 0;
  if (tanh_form) {
    const __m256 beta = _mm256_set1_ps(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5));
    const __m256 kappa = _mm256_set1_ps(0.044715f), half = _mm256_set1_ps(0.5f),
                 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
      const __m256 x = _mm256_loadu_ps(gate + i);
      const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
      const __m256 inner = _mm256_mul_ps(beta, _mm256_add_ps(x, _mm256_mul_ps(kappa, cube)));
      const __m256 g = _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, tanh8(inner)));
      const __m256 y = _mm256_mul_ps(round8(g, rd.bf16), _mm256_loadu_ps(other + i));
      _mm256_storeu_ps(act + i, round8(y, rd.bf16));
    }
  }
  for (; i < n; ++i) act[i] = rd(rd(gelu(gate[i], tanh_form)) * other[i]);
}

// v = rd(rd(tanh(rd(v / cap))) · cap) over n values: the final logit softcap.
__attribute__((target("avx2,fma"))) void softcap(float* v, int64_t n, float cap, Rounding rd) {
  const __m256 vcap = _mm256_set1_ps(cap);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 t = tanh8(round8(_mm256_div_ps(_mm256_loadu_ps(v + i), vcap), rd.bf16));
    _mm256_storeu_ps(v + i, round8(_mm256_mul_ps(round8(t, rd.bf16), vcap), rd.bf16));
  }
  for (; i < n; ++i) v[i] = rd(rd(std::tanh(rd(v[i] / cap))) * cap);
}

// The activations of a cache entry: float32 or bf16 bits.
template <typename T>
inline float load_value(const T* p);
template <>
inline float load_value<float>(const float* p) {
  return *p;
}
template <>
inline float load_value<uint16_t>(const uint16_t* p) {
  return widen_bf16(*p);
}

template <typename T>
__attribute__((target("avx2,fma"))) inline __m256 load8(const T* p);
template <>
__attribute__((target("avx2,fma"))) inline __m256 load8<float>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
__attribute__((target("avx2,fma"))) inline __m256 load8<uint16_t>(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

template <typename T>
__attribute__((target("avx2,fma"))) float dot(const float* q, const T* k, int64_t d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8(k + i + 8), s1);
  }
  for (; i + 8 <= d; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), s0);
  const __m256 s = _mm256_add_ps(s0, s1);
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  float sum = _mm_cvtss_f32(v);
  for (; i < d; ++i) sum += q[i] * load_value(k + i);
  return sum;
}

// acc += a · v
template <typename T>
__attribute__((target("avx2,fma"))) void add_scaled(float a, const T* v, float* acc, int64_t d) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, load8(v + i), _mm256_loadu_ps(acc + i)));
  for (; i < d; ++i) acc[i] += a * load_value(v + i);
}

// One query head over its keys [0, n) (rows of `d` at `keys`/`values`, `valid[j]` false for a
// padding key): float32 scores and softmax, as the fused attention kernel computes them; scaling
// 1.0 (Gemma 4's QK norms take its place). out [d] rounded to the compute dtype.
template <typename T>
void attend(const float* q, const T* keys, const T* values, const bool* valid, int64_t n, int64_t d,
            float* scores, float* acc, float* out, Rounding rd) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = valid[j] ? dot(q, keys + j * d, d) : -std::numeric_limits<float>::infinity();
    best = std::max(best, scores[j]);
  }
  std::fill(acc, acc + d, 0.0f);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (!valid[j]) continue;
    const float p = std::exp(scores[j] - best);
    sum += p;
    add_scaled(p, values + j * d, acc, d);
  }
  for (int64_t i = 0; i < d; ++i) out[i] = rd(acc[i] / sum);
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

struct LayerPlan {
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
  std::vector<LayerPlan> layers;
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
  std::vector<bool> valid_storage;
  struct PerThread {
    RowsInputBuffer input;
    std::vector<float> scores, acc, a, b, c;  // a-c: one row or head of scratch each
    std::vector<uint8_t> valid;
  };
  std::vector<PerThread> threads;
  // one chunk counter per product phase of a step (in_chunks)
  std::unique_ptr<std::atomic<int64_t>[]> next_chunk;
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
      return w;
    }
    // A dense weight; an NF4 one whose rows are not whole blocks (a PLE projection of 16 or 32
    // inputs) dequantized once, as the LibTorch path dequantizes it for every product.
    const torch::Tensor t = lin.is_nf4() ? dequantize_nf4_as(*lin.nf4_weight(), model->dtype())
                                         : lin.weight.detach().contiguous();
    keep.push_back(t);
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
    LayerPlan l;
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
}

Gemma4StepDecoder::~Gemma4StepDecoder() = default;

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
  const KvCache::Entry& first = cache.entry(p.layers.front().kv_layer);
  TORCH_CHECK(first.k.defined() && first.k.size(0) == B,
              "Gemma4StepDecoder::step: the cache holds no prefill of ", B, " sequences");
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
    ws.next_chunk = std::make_unique<std::atomic<int64_t>[]>(phases);
    ws.phases = phases;
  }
  for (int64_t i = 0; i < phases; ++i) ws.next_chunk[i].store(0, std::memory_order_relaxed);

#pragma omp parallel num_threads(threads)
  run(omp_get_thread_num(), omp_get_num_threads(), tokens, positions, cache, ws);

  cache.advance(1);
  cache.commit(torch::ones({B, 1}, torch::kBool));
  return ws.logits;
}

void Gemma4StepDecoder::run(int t, int threads, const std::vector<int64_t>& tokens,
                            const std::vector<int64_t>& positions, KvCache& cache, Workspace& ws) {
  const Plan& p = *plan_;
  const Rounding rd = p.rd;
  const int64_t B = ws.batch, H = p.H;
  Workspace::PerThread& mine = ws.threads[t];

  // The products hand out their outputs in chunks, to whichever thread asks next: a thread slowed
  // by the machine's other work takes fewer. A chunk is about 128 KB of a dense weight (streamed
  // from memory) or 128K NF4 weights (bound by the lookups); smaller chunks cost more than they
  // balance (measured: 32 KB 97 tokens/s, 128 KB 109 on bench-100m bf16). Every thread steps
  // through the same products in the same order, each with its own counter (reset per step).
  int64_t phase = 0;
  const auto in_chunks = [&](const FrozenWeightView& w, auto&& work) {
    std::atomic<int64_t>& next = ws.next_chunk[phase++];
    const int64_t per_row = w.format == FrozenWeightView::Format::kNf4    ? w.in
                            : w.format == FrozenWeightView::Format::kBf16 ? 2 * w.in
                                                                          : 4 * w.in;
    const int64_t size = std::max<int64_t>(4, (int64_t{128} << 10) / std::max<int64_t>(1, per_row));
    for (;;) {
      const int64_t begin = next.fetch_add(1, std::memory_order_relaxed) * size;
      if (begin >= w.out) return;
      work(begin, std::min(w.out, begin + size));
    }
  };
  // Outputs [begin, end) of `w` for every row of `x`, rounded to the compute dtype.
  const auto product_range = [&](const FrozenWeightView& w, const RowsInput& x, float* y,
                                 int64_t begin, int64_t end) {
    rows_product(w, x, code_, y, begin, end);
    if (rd.bf16) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t o = begin; o < end; ++o) y[b * w.out + o] = rd(y[b * w.out + o]);
    }
  };
  const auto product = [&](const FrozenWeightView& w, const RowsInput& x, float* y) {
    in_chunks(w, [&](int64_t begin, int64_t end) { product_range(w, x, y, begin, end); });
  };
  const auto input = [&](const float* x, int64_t width) {
    return mine.input.prepare(x, B, width, code_);
  };

  // --- 1. embeddings × √H, RoPE tables, per-layer inputs (§2.2) -----------------------------
  if (t == 0) {
    for (int64_t b = 0; b < B; ++b) {
      float* x = ws.x.data() + b * H;
      if (rd.bf16) {
        const auto* row = static_cast<const uint16_t*>(p.embed) + tokens[b] * H;
        for (int64_t i = 0; i < H; ++i) x[i] = rd(widen_bf16(row[i]) * p.embed_scale);
      } else {
        const float* row = static_cast<const float*>(p.embed) + tokens[b] * H;
        for (int64_t i = 0; i < H; ++i) x[i] = row[i] * p.embed_scale;
      }
      for (int type = 0; type < 2; ++type) {
        const int64_t half = p.head_dim[type] / 2;
        const auto pos = static_cast<float>(positions[b]);
        for (int64_t i = 0; i < half; ++i) {
          const float angle = pos * p.inv_freq[type][i];
          ws.cos[type][b * half + i] = rd(std::cos(angle));
          ws.sin[type][b * half + i] = rd(std::sin(angle));
        }
      }
    }
  }
  barrier();
  if (p.P > 0) {
    const int64_t LP = p.L * p.P;
    product(p.ple_model_proj, input(ws.x.data(), H), ws.ple_ctx.data());
    barrier();
    if (t == 0) {
      const float inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(H)));
      const auto half_power = static_cast<float>(std::pow(2.0, -0.5));
      float* normed = mine.a.data();
      for (int64_t b = 0; b < B; ++b) {
        float* ctx = ws.ple_ctx.data() + b * LP;
        for (int64_t i = 0; i < LP; ++i) ctx[i] = rd(ctx[i] * inv_sqrt_h);
        for (int64_t l = 0; l < p.L; ++l) {
          rms_norm(ctx + l * p.P, normed, p.P, p.ple_proj_norm, p.eps, rd);
          float* out = ws.ple_in.data() + b * LP + l * p.P;
          for (int64_t i = 0; i < p.P; ++i) {
            const int64_t at = tokens[b] * LP + l * p.P + i;
            const float raw = p.ple_table_bf16
                                  ? widen_bf16(static_cast<const uint16_t*>(p.ple_table)[at])
                                  : static_cast<const float*>(p.ple_table)[at];
            const float token_part = rd(rd(raw) * p.ple_scale);
            out[i] = rd(rd(normed[i] + token_part) * half_power);
          }
        }
      }
    }
  }
  if (t == 0) {
    for (int64_t b = 0; b < B; ++b)
      rms_norm(ws.x.data() + b * H, ws.xn.data() + b * H, H, p.layers[0].input_norm, p.eps, rd);
  }
  barrier();

  const int64_t valid_stride = cache.key_valid_stride();
  const bool* key_valid = cache.key_valid_data();
  const int64_t seen = cache.seen_tokens();
  for (size_t li = 0; li < p.layers.size(); ++li) {
    const LayerPlan& l = p.layers[li];
    const Gemma4LayerSpec& s = l.spec;
    const int type = static_cast<int>(s.type);
    const int64_t d = s.head_dim, nH = l.q.out / d, kvH = s.num_kv_heads, half = d / 2;

    // --- 2. q, k, v projections -------------------------------------------------------------
    {
      const RowsInput x = input(ws.xn.data(), H);
      product(l.q, x, ws.q.data());
      if (l.k.out > 0) product(l.k, x, ws.k.data());
      if (l.v.out > 0) product(l.v, x, ws.v.data());
    }
    barrier();

    // --- 3. QK norms, RoPE, V norm; this step's K/V into the cache ----------------------------
    const KvCache::Entry& e = cache.entry(l.kv_layer);
    const int64_t capacity = e.k.size(2), slot = e.begin + e.length;
    {
      const int64_t q_units = B * nH, units = q_units + (l.k.out > 0 ? B * kvH : 0);
      const auto [begin, end] = share(units, t, threads);
      float* scratch = mine.a.data();
      const auto rope = [&](const float* x, float* out, int64_t b) {
        const float* c = ws.cos[type].data() + b * half;
        const float* sn = ws.sin[type].data() + b * half;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          out[i] = rd(rd(x1 * c[i]) + rd(-x2 * sn[i]));
          out[i + half] = rd(rd(x2 * c[i]) + rd(x1 * sn[i]));
        }
      };
      for (int64_t u = begin; u < end; ++u) {
        if (u < q_units) {
          const int64_t b = u / nH, h = u % nH;
          const float* q = ws.q.data() + b * l.q.out + h * d;
          rms_norm(q, scratch, d, l.q_norm, p.eps, rd);
          rope(scratch, ws.heads.data() + b * l.q.out + h * d, b);
          continue;
        }
        const int64_t b = (u - q_units) / kvH, h = (u - q_units) % kvH;
        const int64_t kv_width = kvH * d;
        const float* k_raw = ws.k.data() + b * kv_width + h * d;
        const float* v_raw = l.v.out > 0 ? ws.v.data() + b * kv_width + h * d : k_raw;
        const int64_t at = ((b * kvH + h) * capacity + slot) * d;
        float* roped = mine.b.data();
        float* value = mine.c.data();
        rms_norm(k_raw, scratch, d, l.k_norm, p.eps, rd);
        rope(scratch, roped, b);
        rms_norm(v_raw, value, d, kNoWeight, p.eps, rd);
        if (rd.bf16) {
          auto* kp = static_cast<uint16_t*>(e.k.data_ptr()) + at;
          auto* vp = static_cast<uint16_t*>(e.v.data_ptr()) + at;
          for (int64_t i = 0; i < d; ++i) {
            kp[i] = bf16_bits(roped[i]);
            vp[i] = bf16_bits(value[i]);
          }
        } else {
          std::memcpy(e.k.data_ptr<float>() + at, roped, d * sizeof(float));
          std::memcpy(e.v.data_ptr<float>() + at, value, d * sizeof(float));
        }
      }
    }
    barrier();

    // --- 4. attention over the kept keys and this step's -----------------------------------
    {
      const int64_t n = e.length + 1, groups = nH / kvH;
      const auto [begin, end] = share(B * nH, t, threads);
      for (int64_t u = begin; u < end; ++u) {
        const int64_t b = u / nH, h = u % nH, kvh = h / groups;
        auto* valid = reinterpret_cast<bool*>(mine.valid.data());
        for (int64_t j = 0; j < e.length; ++j)
          valid[j] = key_valid[b * valid_stride + seen - e.length + j];
        valid[e.length] = true;
        const int64_t base = ((b * kvH + kvh) * capacity + e.begin) * d;
        const float* q = ws.heads.data() + b * l.q.out + h * d;
        float* out = ws.attn.data() + b * l.q.out + h * d;
        if (rd.bf16) {
          attend(q, static_cast<const uint16_t*>(e.k.data_ptr()) + base,
                 static_cast<const uint16_t*>(e.v.data_ptr()) + base, valid, n, d,
                 mine.scores.data(), mine.acc.data(), out, rd);
        } else {
          attend(q, e.k.data_ptr<float>() + base, e.v.data_ptr<float>() + base, valid, n, d,
                 mine.scores.data(), mine.acc.data(), out, rd);
        }
      }
    }
    barrier();

    // --- 5. o_proj, post-attention norm, residual; the feed-forward's norm ----------------------
    product(l.o, input(ws.attn.data(), l.o.in), ws.o.data());
    barrier();
    if (t == 0) {
      float* normed = mine.a.data();
      for (int64_t b = 0; b < B; ++b) {
        float* x = ws.x.data() + b * H;
        rms_norm(ws.o.data() + b * H, normed, H, l.post_attention_norm, p.eps, rd);
        for (int64_t i = 0; i < H; ++i) x[i] = rd(x[i] + normed[i]);
        rms_norm(x, ws.xn.data() + b * H, H, l.pre_ff_norm, p.eps, rd);
      }
    }
    barrier();

    // --- 6. GeGLU MLP: gate and up share a split, so act needs no barrier ---------------------
    {
      const RowsInput x = input(ws.xn.data(), H);
      in_chunks(l.gate, [&](int64_t begin, int64_t end) {
        product_range(l.gate, x, ws.gate.data(), begin, end);
        product_range(l.up, x, ws.up.data(), begin, end);
        const int64_t I = l.gate.out;
        for (int64_t b = 0; b < B; ++b) {
          const int64_t at = b * I + begin;
          gated_gelu(ws.gate.data() + at, ws.up.data() + at, ws.act.data() + at, end - begin,
                     p.gelu_tanh, rd);
        }
      });
    }
    barrier();
    product(l.down, input(ws.act.data(), l.down.in), ws.f.data());
    barrier();
    const bool ple = l.ple_gate.out > 0;
    const std::vector<float>& next_norm =
        li + 1 < p.layers.size() ? p.layers[li + 1].input_norm : p.final_norm;
    if (t == 0) {
      float* normed = mine.a.data();
      for (int64_t b = 0; b < B; ++b) {
        float* x = ws.x.data() + b * H;
        rms_norm(ws.f.data() + b * H, normed, H, l.post_ff_norm, p.eps, rd);
        for (int64_t i = 0; i < H; ++i) x[i] = rd(x[i] + normed[i]);
        if (!ple) {
          for (int64_t i = 0; i < H; ++i) x[i] = rd(x[i] * l.layer_scalar);
          rms_norm(x, ws.xn.data() + b * H, H, next_norm, p.eps, rd);
        }
      }
    }
    barrier();
    if (!ple) continue;

    // --- 7. per-layer embedding block, then the layer scalar ------------------------------------
    {
      const RowsInput x = input(ws.x.data(), H);
      in_chunks(l.ple_gate, [&](int64_t begin, int64_t end) {
        product_range(l.ple_gate, x, ws.g.data(), begin, end);
        const int64_t LP = p.L * p.P;
        for (int64_t b = 0; b < B; ++b) {
          float* g = ws.g.data() + b * p.P + begin;
          gated_gelu(g, ws.ple_in.data() + b * LP + static_cast<int64_t>(li) * p.P + begin, g,
                     end - begin, p.gelu_tanh, rd);
        }
      });
    }
    barrier();
    product(l.ple_proj, input(ws.g.data(), p.P), ws.p.data());
    barrier();
    if (t == 0) {
      float* normed = mine.a.data();
      for (int64_t b = 0; b < B; ++b) {
        float* x = ws.x.data() + b * H;
        rms_norm(ws.p.data() + b * H, normed, H, l.post_ple_norm, p.eps, rd);
        for (int64_t i = 0; i < H; ++i) x[i] = rd(rd(x[i] + normed[i]) * l.layer_scalar);
        rms_norm(x, ws.xn.data() + b * H, H, next_norm, p.eps, rd);
      }
    }
    barrier();
  }

  // --- 8. lm_head and the final softcap -------------------------------------------------------
  float* logits = ws.logits.data_ptr<float>();
  const RowsInput x = input(ws.xn.data(), H);
  in_chunks(p.lm_head, [&](int64_t begin, int64_t end) {
    product_range(p.lm_head, x, logits, begin, end);
    if (!p.softcap) return;
    for (int64_t b = 0; b < B; ++b)
      softcap(logits + b * p.V + begin, end - begin, static_cast<float>(*p.softcap), rd);
  });
}

}  // namespace gemma
