#include "model/gemma4_model.h"

#include <gtest/gtest.h>

#include <cmath>

#include "model/attention_mask.h"
#include "model/kv_cache.h"
#include "model/rotary_embedding.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::random_model;
using testing::relative_error;

const char* const kTinyConfigs[] = {"tiny-e2b", "tiny-31b", "tiny-moe"};

torch::Tensor forward(Gemma4ForCausalLM& model, const torch::Tensor& ids, KvCache* cache = nullptr,
                      const torch::Tensor& mask = {}, const torch::Tensor& positions = {}) {
  torch::NoGradGuard no_grad;
  Gemma4Input in;
  in.input_ids = ids;
  in.attention_mask = mask;
  in.position_ids = positions;
  return model->forward(in, cache);
}

// Full-sequence logits equal decoding with the KV cache, in chunks of varying size, for sequences
// several sliding windows long (tiny configs have windows of 4-6).
TEST(Gemma4Model, KvCacheDecodingEqualsFullSequence) {
  for (const char* name : kTinyConfigs) {
    const Gemma4Config c = bundled_config(name);
    for (uint64_t seed : {1, 2, 3}) {
      SCOPED_TRACE(std::string(name) + " seed " + std::to_string(seed));
      Gemma4ForCausalLM model = random_model(c, seed);
      const int64_t T = 3 * c.sliding_window + 5;
      const torch::Tensor ids = random_ids(2, T, c.vocab_size, seed + 100);
      const torch::Tensor full = forward(model, ids);
      KvCache cache(c);
      std::vector<torch::Tensor> steps;
      int64_t t = 0;
      for (int64_t chunk : {3, 1, 1, 4, 1}) {
        steps.push_back(forward(model, ids.narrow(1, t, chunk), &cache));
        t += chunk;
      }
      for (; t < T; ++t) steps.push_back(forward(model, ids.narrow(1, t, 1), &cache));
      EXPECT_EQ(cache.seen_tokens(), T);
      const torch::Tensor cached = torch::cat(steps, 1);
      // Fused attention accumulates in another order for each query count: a few ulps.
      EXPECT_LT(relative_error(cached, full), 5e-5);
    }
  }
}

TEST(Gemma4Model, SlidingCacheKeepsOnlyTheWindow) {
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM model = random_model(c, 1);
  KvCache cache(c);
  forward(model, random_ids(1, 200, c.vocab_size, 1), &cache);
  EXPECT_EQ(cache.kept_tokens(LayerType::kSliding), c.sliding_window - 1);
  EXPECT_EQ(cache.kept_tokens(LayerType::kFull), 200);
  // 4 non-shared layers (3 sliding, 1 full) hold K and V; the 2 shared layers hold nothing. A
  // sliding layer's buffer has room for two windows whatever the prompt's length; a full layer's
  // for up to twice the tokens seen.
  const int64_t per_token = int64_t{2} * 2 * 16 * 4;  // K+V, 2 KV heads, head_dim 16, f32
  const int64_t full_per_token = int64_t{2} * 2 * 32 * 4;
  for (int layer : {0, 1, 2}) EXPECT_EQ(cache.entry(layer).length, c.sliding_window - 1);
  EXPECT_EQ(cache.entry(3).length, 200);
  EXPECT_EQ(cache.nbytes(),
            int64_t{6} * c.sliding_window * per_token + int64_t{400} * full_per_token);
  for (int step = 0; step < 3 * c.sliding_window; ++step)
    forward(model, random_ids(1, 1, c.vocab_size, 2 + step), &cache);
  EXPECT_EQ(cache.nbytes(),
            int64_t{6} * c.sliding_window * per_token + int64_t{400} * full_per_token);
}

// The mask against a direct loop over (query, key).
TEST(AttentionMask, SlidingWindowAndPaddingMatchLoop) {
  const int64_t T = 11, W = 4;
  const torch::Tensor valid =
      torch::tensor({1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}, torch::kBool).unsqueeze(0);
  for (bool sliding : {false, true}) {
    AttentionMaskSpec spec;
    spec.query_index = torch::arange(T);
    spec.key_index = torch::arange(T);
    spec.key_valid = valid;
    if (sliding) spec.sliding_window = W;
    const torch::Tensor mask = build_attention_mask(spec);
    ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{1, 1, T, T}));
    for (int64_t q = 0; q < T; ++q) {
      for (int64_t k = 0; k < T; ++k) {
        bool allowed = k <= q && valid[0][k].item<bool>();
        if (sliding) allowed = allowed && q - k < W;  // itself and W-1 earlier tokens
        EXPECT_EQ(mask[0][0][q][k].item<bool>(), allowed) << "q " << q << " k " << k;
      }
    }
  }
}

TEST(AttentionMask, PackedDocumentsAreBlockDiagonal) {
  const torch::Tensor positions = torch::tensor({0, 1, 2, 0, 1, 0, 1, 2, 3}).unsqueeze(0);
  const torch::Tensor docs = packed_document_ids(positions);
  EXPECT_TRUE(torch::equal(docs, torch::tensor({0, 0, 0, 1, 1, 2, 2, 2, 2}).unsqueeze(0)));
  AttentionMaskSpec spec;
  spec.query_index = torch::arange(9);
  spec.key_index = torch::arange(9);
  spec.key_valid = torch::ones({1, 9}, torch::kBool);
  spec.query_segment = docs;
  spec.key_segment = docs;
  const torch::Tensor mask = build_attention_mask(spec);
  for (int64_t q = 0; q < 9; ++q) {
    for (int64_t k = 0; k < 9; ++k) {
      const bool allowed = k <= q && docs[0][q].item<int64_t>() == docs[0][k].item<int64_t>();
      EXPECT_EQ(mask[0][0][q][k].item<bool>(), allowed);
    }
  }
}

// Proportional RoPE against a loop that rotates each pair (i, i + d/2) by pos · θ^(-2i/d) for
// i < floor(p·d/2) and leaves every other dim alone (§2.4).
TEST(RotaryEmbedding, ProportionalRopeMatchesLoop) {
  const int64_t d = 512;
  const RopeSpec spec{"proportional", 1e6, 0.25, 1.0};
  const torch::Tensor inv = rope_inverse_frequencies(spec, d);
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({1, 5, 2, d}, torch::kFloat64);
  const torch::Tensor positions = torch::tensor({0, 1, 7, 100, 4095}).unsqueeze(0);
  const torch::Tensor y = apply_rope(x, rope_tables(inv, positions, torch::kFloat64));
  const int64_t rotated = 64;
  for (int64_t t = 0; t < 5; ++t) {
    const double pos = positions[0][t].item<double>();
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t i = 0; i < d / 2; ++i) {
        const double a = x[0][t][h][i].item<double>(), b = x[0][t][h][i + d / 2].item<double>();
        double ya = a, yb = b;
        if (i < rotated) {
          const double angle = pos * std::pow(1e6, -2.0 * static_cast<double>(i) / d);
          ya = a * std::cos(angle) - b * std::sin(angle);
          yb = b * std::cos(angle) + a * std::sin(angle);
        }
        // The library's frequencies are float32 (as transformers'): allow their rounding.
        const double tol = 1e-12 + 2e-7 * std::max(1.0, pos) * (std::abs(a) + std::abs(b));
        EXPECT_NEAR(y[0][t][h][i].item<double>(), ya, tol) << t << " " << i;
        EXPECT_NEAR(y[0][t][h][i + d / 2].item<double>(), yb, tol) << t << " " << i;
      }
    }
  }
  // The rotated dims are 0-63 and 256-319, nothing else.
  const torch::Tensor changed = (y - x).abs().amax({0, 1, 2}) > 0;
  for (int64_t i = 0; i < d; ++i) {
    EXPECT_EQ(changed[i].item<bool>(), (i < 64) || (i >= 256 && i < 320)) << i;
  }
}

TEST(RotaryEmbedding, DefaultRopeRotatesTheWholeHead) {
  const torch::Tensor inv = rope_inverse_frequencies(RopeSpec{}, 256);
  ASSERT_EQ(inv.size(0), 128);
  for (int64_t i = 0; i < 128; ++i) {
    EXPECT_FLOAT_EQ(inv[i].item<float>(),
                    1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / 256.0f));
  }
}

// Right-padded rows give the logits of the unpadded sequences at their real positions.
TEST(Gemma4Model, RightPaddedBatchMatchesSeparateSequences) {
  for (const char* name : kTinyConfigs) {
    SCOPED_TRACE(name);
    const Gemma4Config c = bundled_config(name);
    Gemma4ForCausalLM model = random_model(c, 21);
    const torch::Tensor a = random_ids(1, 13, c.vocab_size, 1);
    const torch::Tensor b = random_ids(1, 8, c.vocab_size, 2);
    const torch::Tensor batch =
        torch::cat({a, torch::cat({b, torch::zeros({1, 5}, torch::kInt64)}, 1)}, 0);
    torch::Tensor mask = torch::ones({2, 13}, torch::kInt64);
    mask[1].narrow(0, 8, 5).zero_();
    const torch::Tensor out = forward(model, batch, nullptr, mask);
    EXPECT_LT(relative_error(out[0], forward(model, a)[0]), 1e-5);
    EXPECT_LT(relative_error(out[1].narrow(0, 0, 8), forward(model, b)[0]), 1e-5);
    EXPECT_FALSE(torch::isnan(out).any().item<bool>());
  }
}

// Packed documents with restarting positions equal the documents run one by one.
TEST(Gemma4Model, PackedDocumentsMatchSeparateSequences) {
  for (const char* name : kTinyConfigs) {
    SCOPED_TRACE(name);
    const Gemma4Config c = bundled_config(name);
    Gemma4ForCausalLM model = random_model(c, 22);
    const torch::Tensor a = random_ids(1, 9, c.vocab_size, 3);
    const torch::Tensor b = random_ids(1, 7, c.vocab_size, 4);
    const torch::Tensor positions = torch::cat({torch::arange(9), torch::arange(7)}).unsqueeze(0);
    const torch::Tensor out = forward(model, torch::cat({a, b}, 1), nullptr, {}, positions);
    EXPECT_LT(relative_error(out[0].narrow(0, 0, 9), forward(model, a)[0]), 1e-5);
    EXPECT_LT(relative_error(out[0].narrow(0, 9, 7), forward(model, b)[0]), 1e-5);
  }
}

// In f64, the gradient w.r.t. the KV-source layer's k_proj equals central finite differences,
// so the KV-shared layers' contribution reaches the source (§2.5: never detach).
TEST(Gemma4Model, KvSourceGradientMatchesFiniteDifferences) {
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM model = random_model(c, 5, torch::kFloat64);
  const torch::Tensor ids = random_ids(1, 10, c.vocab_size, 6);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const torch::Tensor probe = torch::randn({1, 10, c.vocab_size}, gen, torch::kFloat64);
  const auto loss = [&] {
    Gemma4Input in;
    in.input_ids = ids;
    return (model->forward(in) * probe).sum();
  };
  for (int source : {c.layers[4].kv_source, c.layers[5].kv_source}) {
    SCOPED_TRACE("source layer " + std::to_string(source));
    auto& layer = model->model->layers->at<Gemma4DecoderLayerImpl>(source);
    torch::Tensor w = layer.self_attn->k_proj->weight;
    model->zero_grad();
    loss().backward();
    const torch::Tensor grad = w.grad().clone();
    ASSERT_GT(grad.abs().max().item<double>(), 0.0);
    torch::NoGradGuard no_grad;
    const double eps = 1e-6;
    for (int64_t flat : {0, 17, 100, 333, 511}) {
      const int64_t r = flat / w.size(1), col = flat % w.size(1);
      const double orig = w[r][col].item<double>();
      w[r][col] = orig + eps;
      const double up = loss().item<double>();
      w[r][col] = orig - eps;
      const double down = loss().item<double>();
      w[r][col] = orig;
      const double fd = (up - down) / (2 * eps);
      EXPECT_NEAR(grad[r][col].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd))) << flat;
    }
  }
}

// bf16 differs from f32 by rounding only (MoE routing can flip in bf16, so a dense config here).
TEST(Gemma4Model, Bf16ComputeStaysCloseToF32) {
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM f32 = random_model(c, 9);
  Gemma4ForCausalLM bf16 = random_model(c, 9, torch::kBFloat16);
  const torch::Tensor ids = random_ids(1, 12, c.vocab_size, 2);
  const torch::Tensor a = forward(bf16, ids);
  EXPECT_EQ(a.scalar_type(), torch::kBFloat16);
  // Norm-relative: random tiny Gemma 4 models amplify bf16 rounding at single logits (10-15%).
  const torch::Tensor b = forward(f32, ids);
  EXPECT_LT(((a.to(torch::kFloat32) - b).norm() / b.norm()).item<double>(), 0.1);
}

}  // namespace
}  // namespace gemma

namespace gemma {
namespace {

// Gradient checkpointing on and off give the same gradients for every parameter, KV-sharing
// sources included (their gradient must still arrive from the shared layers).
TEST(Gemma4Model, GradientCheckpointingGivesTheSameGradients) {
  for (const char* name : {"tiny-e2b", "tiny-moe"}) {
    SCOPED_TRACE(name);
    const Gemma4Config c = testing::bundled_config(name);
    Gemma4ForCausalLM model = testing::random_model(c, 12);
    const torch::Tensor ids = testing::random_ids(2, 11, c.vocab_size, 13);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(14);
    const torch::Tensor probe = torch::randn({2, 11, c.vocab_size}, gen, torch::kFloat32);
    std::map<std::string, torch::Tensor> plain;
    for (bool checkpointing : {false, true}) {
      model->model->set_gradient_checkpointing(checkpointing);
      model->zero_grad();
      Gemma4Input in;
      in.input_ids = ids;
      (model->forward(in) * probe).sum().backward();
      for (const auto& p : model->named_parameters()) {
        ASSERT_TRUE(p.value().grad().defined()) << p.key();
        if (!checkpointing) {
          plain[p.key()] = p.value().grad().clone();
        } else {
          EXPECT_TRUE(torch::allclose(p.value().grad(), plain[p.key()], 1e-4, 1e-6)) << p.key();
        }
      }
    }
    // The KV source of the shared layers did get a gradient through them.
    if (c.num_kv_shared_layers > 0) {
      const int source = c.layers.back().kv_source;
      EXPECT_GT(plain["model.layers." + std::to_string(source) + ".self_attn.k_proj.weight"]
                    .abs()
                    .max()
                    .item<float>(),
                0);
    }
  }
}

}  // namespace
}  // namespace gemma
