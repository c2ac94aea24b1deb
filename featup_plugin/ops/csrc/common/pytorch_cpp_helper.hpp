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

}  // namespace featup
