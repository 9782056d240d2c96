#include "model/generation.h"

#include <gtest/gtest.h>

#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::random_model;

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

GenerationOptions greedy(int64_t n) {
  GenerationOptions g;
  g.max_new_tokens = n;
  g.sampling.temperature = 0;
  return g;
}

// Greedy decoding with the cache equals the argmax chain of full-sequence logits.
TEST(Generation, GreedyEqualsArgmaxOfFullLogits) {
  for (const char* name : {"tiny-e2b", "tiny-31b", "tiny-moe"}) {
    SCOPED_TRACE(name);
    const Gemma4Config c = bundled_config(name);
    Gemma4ForCausalLM model = random_model(c, 3);
    std::vector<int64_t> seq = to_vector(random_ids(1, 5, c.vocab_size, 1)[0]);
    const GenerationResult r = generate(model, {seq}, greedy(3 * c.sliding_window));
    torch::NoGradGuard no_grad;
    for (int64_t token : r.tokens[0]) {
      Gemma4Input in;
      in.input_ids = torch::tensor(seq, torch::kInt64).unsqueeze(0);
      const int64_t expected = model->forward(in)[0][-1].argmax().item<int64_t>();
      EXPECT_EQ(token, expected);
      seq.push_back(expected);
    }
  }
}

TEST(Generation, CacheAndNoCacheGiveTheSameTokens) {
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM model = random_model(c, 4);
  const std::vector<int64_t> prompt = to_vector(random_ids(1, 6, c.vocab_size, 2)[0]);
  for (double temperature : {0.0, 1.0}) {
    GenerationOptions g = greedy(16);
    g.sampling.temperature = temperature;
    g.sampling.seed = 9;
    const auto with = generate(model, {prompt}, g).tokens;
    g.use_cache = false;
    EXPECT_EQ(generate(model, {prompt}, g).tokens, with) << temperature;
  }
}

TEST(Generation, SameSeedSameSample) {
  const Gemma4Config c = bundled_config("tiny-31b");
  Gemma4ForCausalLM model = random_model(c, 5);
  const std::vector<int64_t> prompt = to_vector(random_ids(1, 4, c.vocab_size, 3)[0]);
  GenerationOptions g = greedy(24);
  g.sampling = {1.5, 0, 1.0, 123};
  const auto a = generate(model, {prompt}, g).tokens;
  EXPECT_EQ(generate(model, {prompt}, g).tokens, a);
  g.sampling.seed = 124;
  EXPECT_NE(generate(model, {prompt}, g).tokens, a);
}

TEST(Generation, StopsOnStopIds) {
  const Gemma4Config c = bundled_config("tiny-31b");
  Gemma4ForCausalLM model = random_model(c, 5);
  const std::vector<int64_t> prompt = {2, 7, 9};
  const GenerationResult free_run = generate(model, {prompt}, greedy(10));
  GenerationOptions g = greedy(10);
  g.stop_ids = {free_run.tokens[0][3]};
  const GenerationResult r = generate(model, {prompt}, g);
  ASSERT_LE(r.tokens[0].size(), 4u);
  EXPECT_EQ(r.tokens[0].back(), free_run.tokens[0][3]);
  EXPECT_EQ(r.finish_reason[0], "stop");
  EXPECT_EQ(free_run.finish_reason[0], "length");
}

// Left-padded batches give each prompt the tokens it gets alone.
TEST(Generation, LeftPaddedBatchEqualsSinglePrompts) {
  for (const char* name : {"tiny-e2b", "tiny-moe"}) {
    SCOPED_TRACE(name);
    const Gemma4Config c = bundled_config(name);
    Gemma4ForCausalLM model = random_model(c, 6);
    const std::vector<std::vector<int64_t>> prompts = {
        to_vector(random_ids(1, 9, c.vocab_size, 4)[0]),
        to_vector(random_ids(1, 3, c.vocab_size, 5)[0]),
        to_vector(random_ids(1, 6, c.vocab_size, 6)[0])};
    const GenerationResult batch = generate(model, prompts, greedy(12));
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(batch.tokens[i], generate(model, {prompts[i]}, greedy(12)).tokens[0]) << i;
    }
  }
}

// A prompt fed into a cache that already holds a prefix continues as one long prompt would.
TEST(Generation, ContinuesAnExternalCache) {
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM model = random_model(c, 7);
  const std::vector<int64_t> first = to_vector(random_ids(1, 7, c.vocab_size, 8)[0]);
  const std::vector<int64_t> second = to_vector(random_ids(1, 4, c.vocab_size, 9)[0]);
  KvCache cache(c);
  const GenerationResult a = generate(model, {first}, greedy(5), {}, &cache);
  EXPECT_EQ(cache.seen_tokens(), static_cast<int64_t>(first.size() + a.tokens[0].size() - 1));
  std::vector<int64_t> rest(a.tokens[0].end() - 1, a.tokens[0].end());
  rest.insert(rest.end(), second.begin(), second.end());
  const GenerationResult b = generate(model, {rest}, greedy(6), {}, &cache);
  std::vector<int64_t> whole = first;
  whole.insert(whole.end(), a.tokens[0].begin(), a.tokens[0].end());
  whole.insert(whole.end(), second.begin(), second.end());
  EXPECT_EQ(b.tokens[0], generate(model, {whole}, greedy(6)).tokens[0]);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  torch::manual_seed(0);
  const torch::Tensor logits = torch::randn({4, 50});
  const torch::Tensor argmax = logits.argmax(-1);
  EXPECT_TRUE(torch::equal(Sampler({1.0, 1, 1.0, 3}).next(logits), argmax));
  EXPECT_TRUE(torch::equal(Sampler({1.0, 0, 1e-6, 3}).next(logits), argmax));
  EXPECT_TRUE(torch::equal(Sampler({0.0, 0, 1.0, 3}).next(logits), argmax));
}

TEST(Sampler, TopKNeverPicksOutsideTheTopK) {
  torch::manual_seed(1);
  const torch::Tensor logits = torch::randn({1, 100}) * 0.1;
  const torch::Tensor top = std::get<1>(logits.topk(5, -1))[0];
  Sampler s({1.0, 5, 1.0, 7});
  for (int i = 0; i < 200; ++i) {
    const int64_t t = s.next(logits)[0].item<int64_t>();
    EXPECT_TRUE((top == t).any().item<bool>()) << t;
  }
}

}  // namespace
}  // namespace gemma
