// CPU: mkstemp + unlink + ftruncate (zero pages) + mmap(MAP_SHARED); the tensor's deleter
// unmaps. CUDA: kernels/cuda_managed_memory.h behind torch::from_blob.
#include "optim/paged_state.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda_managed_memory.h"
#endif

namespace gemma {

torch::Tensor paged_zeros(torch::IntArrayRef shape, torch::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (bytes == 0) return torch::zeros(shape, dtype);
  std::string pattern =
      (std::filesystem::temp_directory_path() / "gemma-optim-state-XXXXXX").string();
  std::vector<char> path(pattern.begin(), pattern.end());
  path.push_back('\0');
  const int fd = mkstemp(path.data());
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "paged state: mkstemp");
  unlink(path.data());  // the mapping keeps the file alive; nothing is left behind on exit
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    close(fd);
    throw std::system_error(err, std::generic_category(), "paged state: ftruncate");
  }
  void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (data == MAP_FAILED)
    throw std::system_error(err, std::generic_category(), "paged state: mmap");
  return torch::from_blob(
      data, shape, [bytes](void* p) { munmap(p, bytes); }, torch::TensorOptions().dtype(dtype));
}

torch::Tensor managed_zeros(torch::IntArrayRef shape, torch::ScalarType dtype,
                            const torch::Device& device) {
#ifdef GEMMA_WITH_CUDA
  TORCH_CHECK(device.is_cuda(), "managed_zeros: a CUDA device");
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  const auto options = torch::TensorOptions().dtype(dtype).device(device);
  if (bytes == 0) return torch::zeros(shape, options);
  void* data = cuda::managed_alloc_zeroed(bytes);
  return torch::from_blob(
      data, shape, [](void* p) { cuda::managed_free(p); }, options);
#else
  TORCH_CHECK(false,
              "paged optimizer state on CUDA: gemma-train was built without its CUDA "
              "kernels (no CUDA toolkit at build time)");
#endif
}

torch::Tensor state_zeros(const torch::Tensor& param, torch::ScalarType dtype, bool paged) {
  if (paged && param.numel() >= kPagedMinElements) {
    if (param.device().is_cpu()) return paged_zeros(param.sizes(), dtype);
    if (param.device().is_cuda()) return managed_zeros(param.sizes(), dtype, param.device());
  }
  return torch::zeros(param.sizes(), param.options().dtype(dtype));
}

void prefetch_state(const torch::Tensor& state) {
#ifdef GEMMA_WITH_CUDA
  if (!state.defined() || !state.is_cuda() || state.numel() == 0) return;
  if (!cuda::is_managed(state.data_ptr())) return;
  const int device = state.device().index();
  cuda::managed_prefetch(state.data_ptr(), state.nbytes(), device,
                         c10::cuda::getCurrentCUDAStream(device).stream());
#endif
}

}  // namespace gemma
