// The per-row arithmetic of the step decoder (model/gemma4_step_decoder.h), in plain loops and
// AVX2: LibTorch's formulas for Gemma's RMSNorm, RoPE, the GeGLU activation, the final softcap
// and attention over a KV cache, each rounded to bf16 where the LibTorch path makes a bf16 tensor
// (Rounding: the identity for float32). Callers check for AVX2 + FMA first.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/bf16_bits.h"

namespace gemma::decode_ops {

// The compute dtype's rounding: identity for float32.
struct Rounding {
  bool bf16 = false;
  float operator()(float v) const { return bf16 ? bf16::rounded(v) : v; }
};

// Gemma's RMSNorm of `dim` values (float32 inside): x · (mean(x²) + eps)^(-1/2) · w, rounded;
// an empty `weight` is the weightless form.
void rms_norm(const float* x, float* y, int64_t dim, const std::vector<float>& weight, float eps,
              Rounding rd);

// RoPE of one head in the rotate-half layout: out[i] = x[i]·cos[i] - x[i+h]·sin[i],
// out[i+h] = x[i+h]·cos[i] + x[i]·sin[i] for i < h = half, each product and sum rounded.
void rope_head(const float* x, float* out, const float* cos, const float* sin, int64_t half,
               Rounding rd);

// act = rd(rd(gelu(gate)) · other) over n values (gelu_pytorch_tanh, or the erf form when
// !tanh_form); `other` may be `act`.
void gated_gelu(const float* gate, const float* other, float* act, int64_t n, bool tanh_form,
                Rounding rd);

// v = rd(rd(tanh(rd(v / cap))) · cap) over n values: the final logit softcap.
void softcap(float* v, int64_t n, float cap, Rounding rd);

// One query head q [d] over keys and values [n, d] (float32, or bf16 bits for T = uint16_t);
// valid[j] false masks key j. Float32 scores with scaling 1.0 (Gemma 4's QK norms take its place)
// and softmax, as the fused attention kernel computes them; out [d] rounded. `scores` [n] and
// `acc` [d] are scratch.
template <typename T>
void attend(const float* q, const T* keys, const T* values, const bool* valid, int64_t n, int64_t d,
            float* scores, float* acc, float* out, Rounding rd);

}  // namespace gemma::decode_ops
