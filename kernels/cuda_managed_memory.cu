// cudaMallocManaged / cudaMemPrefetchAsync behind plain functions (cuda_managed_memory.h).
#include <cuda_runtime.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cuda_managed_memory.h"

namespace gemma::cuda {

namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("paged optimizer state: ") + what + ": " +
                             cudaGetErrorString(status));
}

}  // namespace

void* managed_alloc_zeroed(size_t bytes) {
  void* ptr = nullptr;
  check(cudaMallocManaged(&ptr, bytes, cudaMemAttachHost), "cudaMallocManaged");
  std::memset(ptr, 0, bytes);  // attached to the host: its pages start there
  return ptr;
}

void managed_free(void* ptr) { cudaFree(ptr); }

bool is_managed(const void* ptr) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a pointer CUDA does not know
    return false;
  }
  return attributes.type == cudaMemoryTypeManaged;
}

void managed_prefetch(const void* ptr, size_t bytes, int device, void* stream) {
  int concurrent = 0;
  check(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device),
        "cudaDeviceGetAttribute");
  if (!concurrent) return;
  const auto s = static_cast<cudaStream_t>(stream);
#if CUDART_VERSION >= 13000
  cudaMemLocation location{};
  location.type = cudaMemLocationTypeDevice;
  location.id = device;
  check(cudaMemPrefetchAsync(ptr, bytes, location, 0, s), "cudaMemPrefetchAsync");
#else
  check(cudaMemPrefetchAsync(ptr, bytes, device, s), "cudaMemPrefetchAsync");
#endif
}

}  // namespace gemma::cuda
