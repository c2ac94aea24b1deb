// Shared helpers for the featup_plugin C++ ops.
#pragma once

#include <torch/extension.h>

#define FEATUP_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define FEATUP_CHECK_CPU(x) TORCH_CHECK((x).is_cpu(), #x " must be a CPU tensor, got ", (x).device())
#define FEATUP_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define FEATUP_CHECK_CUDA_INPUT(x) \
  FEATUP_CHECK_CUDA(x);            \
  FEATUP_CHECK_CONTIGUOUS(x)
#define FEATUP_CHECK_CPU_INPUT(x) \
  FEATUP_CHECK_CPU(x);            \
  FEATUP_CHECK_CONTIGUOUS(x)

namespace featup {

// The device check of every entry point: the compiled kernels serve CPU and (when built with them) CUDA tensors;
// any other device is refused with a clear message instead of being read as host memory. `what` names the op.
inline void check_cpu_or_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), what, ": the compiled kernels take CPU or CUDA tensors, got a tensor on ",
              t.device(), " (featup_plugin.ops routes other devices to the PyTorch reference)");
}

// Shapes shared by both primitives.
//   input / padded : [B, C, H + k - 1, W + k - 1]
//   kernel / corr  : [B, k * k, H, W]   (tap-major: tap t = i * k + j)
//   output / center: [B, C, H, W]
struct AdaptiveConvShape {
  int64_t B, C, H, W, k, Hp, Wp;
};

// Element strides (batch, tap, row, column) of a kernel [B, T, H, W] (T = k*k taps) in one of the two layouts the
// CPU kernels read in place:
//   contiguous (tap-major):  (T*H*W, H*W, W, 1)
//   pixel-major:             (T*H*W, 1, W*T, T)  the memory of a contiguous [B, H, W, k, k] (FeatUp's filters)
//                                                 viewed as [B, k*k, H, W], the k*k taps of a pixel adjacent
// Returns false for any other layout (the caller makes the kernel contiguous). Strides of size-1 dimensions are not
// compared (they never step), so the strides returned are the canonical ones above.
struct KernelStrides {
  int64_t b, t, r, c;
};

inline bool kernel_strides(const at::Tensor& kernel, KernelStrides* out) {
  if (kernel.dim() != 4) return false;
  const int64_t T = kernel.size(1), H = kernel.size(2), W = kernel.size(3);
  if (kernel.is_contiguous()) {
    *out = {T * H * W, H * W, W, 1};
    return true;
  }
  const KernelStrides pm = {T * H * W, 1, W * T, T};
  const int64_t want[4] = {pm.b, pm.t, pm.r, pm.c};
  for (int d = 0; d < 4; ++d)
    if (kernel.size(d) != 1 && kernel.stride(d) != want[d]) return false;
  *out = pm;
  return true;
}

}  // namespace featup

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace featup {

// at::empty for a CPU output the kernel writes in full. A large fresh allocation is mmap'ed by the allocator and
// its first touch costs one page fault per 4 KiB (measured: ~40 ms of a 77 MB output); asking for transparent
// huge pages (Linux, THP in "madvise" or "always" mode) on the 2 MiB-aligned interior cuts that ~3x. Values are
// unaffected; a no-op elsewhere or when the kernel refuses.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const size_t bytes = static_cast<size_t>(out.nbytes());
  if (out.is_cpu() && bytes >= 4 * kHuge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t a = (p + kHuge - 1) & ~(kHuge - 1), e = (p + bytes) & ~(kHuge - 1);
    if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace featup
