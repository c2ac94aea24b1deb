// Shared helpers for the featup_plugin C++ ops.
#pragma once

#include <torch/extension.h>

#define FEATUP_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define FEATUP_CHECK_CPU(x) TORCH_CHECK(!(x).is_cuda(), #x " must be a CPU tensor")
#define FEATUP_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define FEATUP_CHECK_CUDA_INPUT(x) \
  FEATUP_CHECK_CUDA(x);            \
  FEATUP_CHECK_CONTIGUOUS(x)
#define FEATUP_CHECK_CPU_INPUT(x) \
  FEATUP_CHECK_CPU(x);            \
  FEATUP_CHECK_CONTIGUOUS(x)

namespace featup {

// Shapes shared by both primitives.
//   input / padded : [B, C, H + k - 1, W + k - 1]
//   kernel / corr  : [B, k * k, H, W]   (tap-major: tap t = i * k + j)
//   output / center: [B, C, H, W]
struct AdaptiveConvShape {
  int64_t B, C, H, W, k, Hp, Wp;
};

}  // namespace featup
