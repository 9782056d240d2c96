#include "model/activation_checkpointing.h"

#include <mutex>
#include <optional>

#include "model/kept_products.h"

namespace gemma {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Runs the layer once: returns {output, k, v} (k and v undefined unless the layer is a KV source).
variable_list run_layer(Gemma4DecoderLayerImpl& layer, const torch::Tensor& x,
                        const torch::Tensor& ple, const LayerTypeInputs& inputs,
                        const torch::Tensor& source_k, const torch::Tensor& source_v) {
  const Gemma4LayerSpec& spec = layer.self_attn->options().spec;
  const int index = layer.self_attn->options().layer_index;
  SharedKv shared;
  if (spec.kv_shared) shared[spec.kv_source] = {source_k, source_v};
  torch::Tensor out = layer.forward(x, ple, inputs, shared, nullptr);
  if (spec.stores_kv) return {out, shared.at(index).first, shared.at(index).second};
  return {out};
}

// The random-number state a layer's forward starts from: the default CPU generator's and, when the
// layer runs on CUDA, that device's default generator's. LoRA dropout draws its masks from the
// generator of the input's device, so the recomputation in backward must start from the same state
// to draw the same masks, or its gradients belong to a different forward (torch.utils.checkpoint
// with preserve_rng_state=True does the same).
struct RngState {
  torch::Tensor cpu;
  torch::Tensor cuda;  // undefined unless the layer runs on CUDA
  c10::DeviceIndex cuda_index = -1;
};

torch::Tensor read_generator_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void write_generator_state(at::Generator gen, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

at::Generator cuda_generator(c10::DeviceIndex index) {
  // Through the context, so this file needs no CUDA headers; only reached for CUDA tensors.
  return at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, index));
}

// The generators' state now: the CPU's, plus `device`'s when it is a CUDA device.
RngState capture_rng_state(const torch::Device& device) {
  RngState state;
  state.cpu = read_generator_state(at::detail::getDefaultCPUGenerator());
  if (device.is_cuda()) {
    state.cuda_index = device.has_index() ? device.index() : c10::DeviceIndex(0);
    state.cuda = read_generator_state(cuda_generator(state.cuda_index));
  }
  return state;
}

void restore_rng_state(const RngState& state) {
  write_generator_state(at::detail::getDefaultCPUGenerator(), state.cpu);
  if (state.cuda.defined()) write_generator_state(cuda_generator(state.cuda_index), state.cuda);
}

// While alive, the generators are in `state`; afterwards they are back where they were, so that
// the recomputation in backward does not shift the stream of draws that follow it.
class ForkedRngState {
 public:
  ForkedRngState(const RngState& state, const torch::Device& device)
      : outside_(capture_rng_state(device)) {
    restore_rng_state(state);
  }
  ~ForkedRngState() { restore_rng_state(outside_); }
  ForkedRngState(const ForkedRngState&) = delete;
  ForkedRngState& operator=(const ForkedRngState&) = delete;

 private:
  RngState outside_;
};

// Custom autograd functions take defined tensors only: an absent input travels as an empty one.
torch::Tensor to_placeholder(const torch::Tensor& t) { return t.defined() ? t : torch::empty({0}); }
torch::Tensor from_placeholder(const torch::Tensor& t) {
  return t.numel() == 0 ? torch::Tensor() : t;
}

RngState saved_rng_state(AutogradContext* ctx) {
  RngState state;
  state.cpu = ctx->saved_data["rng_cpu"].toTensor();
  if (ctx->saved_data.count("rng_cuda") > 0) {
    state.cuda = ctx->saved_data["rng_cuda"].toTensor();
    state.cuda_index = static_cast<c10::DeviceIndex>(ctx->saved_data["rng_cuda_index"].toInt());
  }
  return state;
}

class CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& ple, const torch::Tensor& source_k,
                               const torch::Tensor& source_v, const torch::Tensor& mask,
                               torch::Tensor cos, torch::Tensor sin, Gemma4DecoderLayerImpl* layer,
                               bool keep_products) {
    const LayerTypeInputs inputs{{cos, sin}, mask};
    // Before the layer draws anything: backward recomputes from this state.
    const RngState rng = capture_rng_state(x.device());
    ctx->saved_data["rng_cpu"] = rng.cpu;
    if (rng.cuda.defined()) {
      ctx->saved_data["rng_cuda"] = rng.cuda;
      ctx->saved_data["rng_cuda_index"] = static_cast<int64_t>(rng.cuda_index);
    }
    variable_list out;
    KeptProducts kept;
    {
      torch::NoGradGuard no_grad;               // nothing inside the layer is kept for backward
      std::optional<KeptProductsScope> record;  // but its frozen products, if asked to
      if (keep_products) record.emplace(kept, KeptProducts::Mode::kRecord);
      out = run_layer(*layer, x, from_placeholder(ple), inputs, from_placeholder(source_k),
                      from_placeholder(source_v));
    }
    if (keep_products) ctx->saved_data["products"] = c10::List<torch::Tensor>(kept.products());
    ctx->save_for_backward({x, ple, source_k, source_v, mask, cos, sin});
    ctx->saved_data["layer"] = reinterpret_cast<int64_t>(layer);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto* layer = reinterpret_cast<Gemma4DecoderLayerImpl*>(  // NOLINT(performance-no-int-to-ptr)
        ctx->saved_data["layer"].toInt());
    // Recompute with gradients on, from detached copies of the inputs.
    const auto leaf = [](const torch::Tensor& placeholder) {
      const torch::Tensor t = from_placeholder(placeholder);
      return t.defined() ? t.detach().requires_grad_(t.is_floating_point()) : torch::Tensor();
    };
    torch::Tensor x = leaf(saved[0]), ple = leaf(saved[1]), k = leaf(saved[2]), v = leaf(saved[3]);
    const LayerTypeInputs inputs{{saved[5], saved[6]}, saved[4]};
    // The forward's frozen products, if kept: they leave the context here, so each is freed
    // once the recomputed graph below is done with it.
    KeptProducts kept;
    const bool replay = ctx->saved_data.count("products") > 0;
    if (replay) {
      for (const torch::Tensor& p : ctx->saved_data["products"].toTensorList())
        kept.products().push_back(p);
      ctx->saved_data.erase("products");
    }
    variable_list outputs, grad_outputs;
    {
      torch::AutoGradMode grad_mode(true);
      variable_list recomputed;
      {
        const ForkedRngState forward_rng(saved_rng_state(ctx), x.device());  // same dropout masks
        std::optional<KeptProductsScope> replaying;
        if (replay) replaying.emplace(kept, KeptProducts::Mode::kReplay);
        recomputed = run_layer(*layer, x, ple, inputs, k, v);
      }
      TORCH_CHECK(kept.remaining() == 0, "kept products: the recomputed layer left ",
                  kept.remaining(), " of its forward's products unused");
      for (size_t i = 0; i < recomputed.size(); ++i) {
        if (recomputed[i].defined() && grads[i].defined()) {
          outputs.push_back(recomputed[i]);
          grad_outputs.push_back(grads[i]);
        }
      }
      // Accumulates into the layer's parameters and into the leaves above.
      torch::autograd::backward(outputs, grad_outputs);
    }
    const auto grad_of = [](const torch::Tensor& t) {
      return t.defined() ? t.grad() : torch::Tensor();
    };
    return {grad_of(x),      grad_of(ple),    grad_of(k),      grad_of(v),     torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor checkpointed_layer_forward(Gemma4DecoderLayerImpl& layer, const torch::Tensor& x,
                                         const torch::Tensor& per_layer_input,
                                         const LayerTypeInputs& inputs, SharedKv& shared,
                                         bool keep_products) {
  const Gemma4LayerSpec& spec = layer.self_attn->options().spec;
  torch::Tensor source_k, source_v;
  if (spec.kv_shared) std::tie(source_k, source_v) = shared.at(spec.kv_source);
  // A custom function's outputs need grad only when an input does. Under frozen embeddings nothing
  // before the first adapted layer does, yet its adapters must still train: then x enters as a
  // leaf that requires grad (transformers' enable_input_require_grads).
  torch::Tensor input = x;
  if (!x.requires_grad()) {
    for (const auto& p : layer.parameters()) {
      if (p.requires_grad()) {
        input = x.detach().requires_grad_(true);
        break;
      }
    }
  }
  const variable_list out = CheckpointedLayer::apply(
      input, to_placeholder(per_layer_input), to_placeholder(source_k), to_placeholder(source_v),
      inputs.mask, inputs.rope.cos, inputs.rope.sin, &layer, keep_products);
  if (spec.stores_kv) shared[layer.self_attn->options().layer_index] = {out[1], out[2]};
  return out[0];
}

}  // namespace gemma
