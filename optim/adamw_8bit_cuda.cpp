// The reference follows the kernel element by element with whole-tensor float32 ops: the state is
// padded to whole 256-blocks the way the kernel's spare lanes see it (g = 0, codes 128 and 0), so
// the block maxima, and with them every code, come out the same. What can still differ from the
// kernel is the last bit of a fused multiply-add or of __powf/__fdividef, so the tests compare
// with a tolerance rather than bit for bit.
#include "optim/adamw_8bit_cuda.h"

#include <cmath>
#include <map>
#include <mutex>
#include <utility>

#include "optim/blockwise_8bit.h"

#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "kernels/adamw_8bit_cuda_kernels.h"
#endif

namespace gemma {

namespace {

// bitsandbytes' dynamic maps on `device`, copied once per device.
const torch::Tensor& map_on(bool is_signed, const torch::Device& device) {
  static std::mutex mutex;
  static std::map<std::pair<bool, std::string>, torch::Tensor> maps;
  const std::lock_guard<std::mutex> lock(mutex);
  torch::Tensor& slot = maps[{is_signed, device.str()}];
  if (!slot.defined()) slot = dynamic_codebook(is_signed).map.to(device).contiguous();
  return slot;
}

struct FloatHyper {
  float lr, beta1, beta2, eps, weight_decay, correction1, correction2, step_size;
};

FloatHyper float_hyper(const AdamWStepHyper& h) {
  FloatHyper f{};
  f.lr = static_cast<float>(h.lr);
  f.beta1 = static_cast<float>(h.beta1);
  f.beta2 = static_cast<float>(h.beta2);
  f.eps = static_cast<float>(h.eps);
  f.weight_decay = static_cast<float>(h.weight_decay);
  const auto t = static_cast<float>(h.step);
  f.correction1 = 1.0f - std::pow(f.beta1, t);
  f.correction2 = std::sqrt(1.0f - std::pow(f.beta2, t));
  f.step_size = (-f.lr * f.correction2) / f.correction1;
  return f;
}

// p <- T(p + step), then T(p * (1 - lr*wd)) when decaying: two roundings to the parameter's
// dtype, as the kernel stores them.
torch::Tensor stepped_and_decayed(const torch::Tensor& p, const torch::Tensor& step,
                                  torch::ScalarType dtype, const FloatHyper& f) {
  torch::Tensor out = p.add(step).to(dtype).to(torch::kFloat32);
  if (f.weight_decay > 0.0f) out = out.mul(1.0f - f.lr * f.weight_decay).to(dtype);
  return out.to(torch::kFloat32);
}

}  // namespace

torch::Tensor nearest_code_reference(const torch::Tensor& map, const torch::Tensor& x,
                                     bool is_signed) {
  const auto index_opts = x.options().dtype(torch::kLong);
  torch::Tensor pivot = torch::full_like(x, 127, index_opts);
  torch::Tensor lower_index = torch::zeros_like(x, index_opts);
  torch::Tensor upper_index = torch::full_like(x, 255, index_opts);
  torch::Tensor lower = torch::full_like(x, is_signed ? -1.0 : 0.0);
  torch::Tensor upper = torch::ones_like(x);
  for (int64_t step = 64; step > 0; step /= 2) {
    const torch::Tensor value = map.index({pivot});
    const torch::Tensor above = x > value;
    lower_index = torch::where(above, pivot, lower_index);
    lower = torch::where(above, value, lower);
    upper_index = torch::where(above, upper_index, pivot);
    upper = torch::where(above, upper, value);
    pivot = torch::where(above, pivot + step, pivot - step);
  }
  const torch::Tensor value = map.index({pivot});
  const torch::Tensor up = torch::where(x > (upper + value) * 0.5, upper_index, pivot);
  const torch::Tensor down = torch::where(x < (lower + value) * 0.5, lower_index, pivot);
  return torch::where(x > value, up, down);
}

void adamw_8bit_cuda_step_reference(torch::Tensor& param, const torch::Tensor& grad,
                                    torch::Tensor& state1, torch::Tensor& state2,
                                    torch::Tensor& absmax1, torch::Tensor& absmax2,
                                    const AdamWStepHyper& hyper) {
  torch::NoGradGuard no_grad;
  const FloatHyper f = float_hyper(hyper);
  const int64_t n = param.numel(), block = kBlockwise8bitBlockSize;
  const int64_t blocks = (n + block - 1) / block, pad = blocks * block - n;
  const torch::Tensor& map1 = map_on(true, param.device());
  const torch::Tensor& map2 = map_on(false, param.device());
  const auto padded = [&](const torch::Tensor& t, double value) {
    return torch::constant_pad_nd(t.reshape(-1), {0, pad}, value);
  };
  const torch::Tensor g = padded(grad.to(torch::kFloat32), 0.0);
  const torch::Tensor c1 = padded(state1.to(torch::kLong), 128.0);
  const torch::Tensor c2 = padded(state2.to(torch::kLong), 0.0);
  const torch::Tensor finite = torch::isfinite(g);

  torch::Tensor v = map2.index({c2}).view({blocks, block}).mul(absmax2.view({blocks, 1}));
  v = v.reshape(-1).mul(f.beta2).add(g.mul(1.0f - f.beta2).mul(g));
  torch::Tensor m = map1.index({c1}).view({blocks, block}).mul(absmax1.view({blocks, 1}));
  m = m.reshape(-1).mul(f.beta1).add(g.mul(1.0f - f.beta1));
  const torch::Tensor zero = torch::zeros({}, m.options());
  m = torch::where(finite, m, zero);
  v = torch::where(finite, v, zero);
  const torch::Tensor max1 = m.abs().view({blocks, block}).amax(1);
  const torch::Tensor max2 = v.abs().view({blocks, block}).amax(1);

  const torch::Tensor p = param.reshape(-1).to(torch::kFloat32);
  const torch::Tensor mn = m.slice(0, 0, n), vn = v.slice(0, 0, n);
  const torch::Tensor step = mn.div(vn.sqrt().add(f.correction2 * f.eps)).mul(f.step_size);
  const torch::Tensor updated = stepped_and_decayed(p, step, param.scalar_type(), f);
  param.copy_(torch::where(finite.slice(0, 0, n), updated, p).view_as(param));

  torch::Tensor q1 = nearest_code_reference(
      map1, m.view({blocks, block}).div(max1.view({-1, 1})).reshape(-1), true);
  const torch::Tensor flipped = torch::signbit(map1.index({q1})) != torch::signbit(m);
  q1 = torch::where(flipped, torch::where(m > 0, q1 + 1, q1 + 255), q1).remainder(256);
  const torch::Tensor q2 = nearest_code_reference(
      map2, v.view({blocks, block}).div(max2.view({-1, 1})).reshape(-1), false);
  state1.copy_(q1.slice(0, 0, n).to(torch::kUInt8).view_as(state1));
  state2.copy_(q2.slice(0, 0, n).to(torch::kUInt8).view_as(state2));
  absmax1.copy_(max1);
  absmax2.copy_(max2);
}

void adamw_8bit_cuda_step(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& state1,
                          torch::Tensor& state2, torch::Tensor& absmax1, torch::Tensor& absmax2,
                          const AdamWStepHyper& hyper) {
#ifdef GEMMA_WITH_CUDA
  const torch::ScalarType dtype = param.scalar_type();
  const bool supported =
      dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16;
  if (param.is_cuda() && supported && param.is_contiguous() && state1.is_contiguous() &&
      state2.is_contiguous()) {
    const torch::Tensor g = grad.to(dtype).contiguous();
    const FloatHyper f = float_hyper(hyper);
    const cuda::AdamW8bitHyper h{f.lr,  f.beta1,        f.beta2,
                                 f.eps, f.weight_decay, static_cast<int>(hyper.step)};
    const cuda::ParamType type = dtype == torch::kFloat32    ? cuda::ParamType::kFloat32
                                 : dtype == torch::kBFloat16 ? cuda::ParamType::kBFloat16
                                                             : cuda::ParamType::kFloat16;
    cuda::launch_adamw_8bit_blockwise(
        param.data_ptr(), g.data_ptr(), type, state1.data_ptr<uint8_t>(),
        state2.data_ptr<uint8_t>(), absmax1.data_ptr<float>(), absmax2.data_ptr<float>(),
        map_on(true, param.device()).data_ptr<float>(),
        map_on(false, param.device()).data_ptr<float>(), param.numel(), h,
        c10::cuda::getCurrentCUDAStream(param.device().index()).stream());
    return;
  }
#endif
  adamw_8bit_cuda_step_reference(param, grad, state1, state2, absmax1, absmax2, hyper);
}

void adamw_32bit_state_cuda_step(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& m,
                                 torch::Tensor& v, const AdamWStepHyper& hyper) {
  torch::NoGradGuard no_grad;
  const FloatHyper f = float_hyper(hyper);
  const torch::Tensor g = grad.to(torch::kFloat32);
  m.mul_(f.beta1).add_(g.mul(1.0f - f.beta1));
  v.mul_(f.beta2).add_(g.mul(g).mul(1.0f - f.beta2));
  const torch::Tensor p = param.to(torch::kFloat32);
  const torch::Tensor step = m.div(v.sqrt().add(f.eps * f.correction2)).mul(f.step_size);
  param.copy_(stepped_and_decayed(p, step, param.scalar_type(), f));
}

}  // namespace gemma
