// One entry point for NF4: CUDA tensors go to the CUDA kernels (when built in), CPU tensors to the
// vectorized path for float32/bfloat16, anything else to the reference.
#include "kernels/nf4.h"

#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "kernels/nf4_cuda_kernels.h"
#endif

namespace gemma {

bool nf4_cuda_available() {
#ifdef GEMMA_WITH_CUDA
  return torch::cuda::is_available();
#else
  return false;
#endif
}

Nf4Weight quantize_nf4_cuda(const torch::Tensor& weight) {
#ifdef GEMMA_WITH_CUDA
  TORCH_CHECK(weight.is_cuda(), "quantize_nf4_cuda: a CUDA tensor");
  Nf4Weight w;
  w.shape = weight.sizes().vec();
  w.dtype = weight.scalar_type();
  const auto opts = weight.options();
  w.quant_map = nf4_code_table().to(weight.device());
  w.nested_quant_map = dynamic_map(true).to(weight.device());
  const torch::Tensor x = weight.reshape(-1).to(torch::kFloat32).contiguous();
  const int64_t n = x.numel(), blocks = (n + w.blocksize - 1) / w.blocksize;
  torch::Tensor absmax = torch::empty({blocks}, opts.dtype(torch::kFloat32));
  w.packed = torch::empty({(n + 1) / 2, 1}, opts.dtype(torch::kUInt8));
  cuda::launch_nf4_quantize(x.data_ptr<float>(), n, w.quant_map.data_ptr<float>(),
                            absmax.data_ptr<float>(), w.packed.data_ptr<uint8_t>(),
                            c10::cuda::getCurrentCUDAStream().stream());
  double_quantize_absmax(absmax, w);
  return w;
#else
  TORCH_CHECK(false, "gemma-train was built without its CUDA kernels");
#endif
}

torch::Tensor dequantize_nf4_cuda(const Nf4Weight& w) {
#ifdef GEMMA_WITH_CUDA
  TORCH_CHECK(w.packed.is_cuda(), "dequantize_nf4_cuda: CUDA tensors");
  const bool bf16 = w.dtype == torch::kBFloat16;
  TORCH_CHECK(bf16 || w.dtype == torch::kFloat32, "dequantize_nf4_cuda: bf16 or f32 output");
  const torch::Tensor absmax = dequantize_nf4_absmax(w).contiguous();
  const torch::Tensor lut = w.quant_map.to(torch::kFloat32).contiguous();
  torch::Tensor out = torch::empty({w.numel()}, w.packed.options().dtype(w.dtype));
  cuda::launch_nf4_dequantize(w.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(),
                              lut.data_ptr<float>(), w.numel(),
                              bf16 ? nullptr : out.data_ptr<float>(),
                              bf16 ? reinterpret_cast<uint16_t*>(out.data_ptr()) : nullptr,
                              c10::cuda::getCurrentCUDAStream().stream());
  return out.view(w.shape);
#else
  TORCH_CHECK(false, "gemma-train was built without its CUDA kernels");
#endif
}

Nf4Weight quantize_nf4(const torch::Tensor& weight, Nf4Backend backend) {
  if (backend == Nf4Backend::kAuto) {
    if (weight.is_cuda()) {
      backend = nf4_cuda_available() ? Nf4Backend::kCuda : Nf4Backend::kReference;
    } else {
      backend = Nf4Backend::kCpu;
    }
  }
  switch (backend) {
    case Nf4Backend::kCuda:
      return quantize_nf4_cuda(weight);
    case Nf4Backend::kCpu:
      return quantize_nf4_cpu(weight);
    default:
      return quantize_nf4_reference(weight);
  }
}

torch::Tensor dequantize_nf4(const Nf4Weight& w, Nf4Backend backend) {
  const bool fast_dtype = w.dtype == torch::kBFloat16 || w.dtype == torch::kFloat32;
  if (backend == Nf4Backend::kAuto) {
    if (w.packed.is_cuda()) {
      backend = nf4_cuda_available() && fast_dtype ? Nf4Backend::kCuda : Nf4Backend::kReference;
    } else {
      backend = fast_dtype ? Nf4Backend::kCpu : Nf4Backend::kReference;
    }
  }
  switch (backend) {
    case Nf4Backend::kCuda:
      return dequantize_nf4_cuda(w);
    case Nf4Backend::kCpu:
      return dequantize_nf4_cpu(w);
    default:
      return dequantize_nf4_reference(w);
  }
}

}  // namespace gemma
