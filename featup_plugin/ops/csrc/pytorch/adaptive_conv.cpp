// Device dispatch and argument checks for the adaptive convolution primitives.
//
//   adaptive_conv_forward(input, kernel):
//     out[b, c, h, w] = sum_{i, j < k} kernel[b, i * k + j, h, w] * input[b, c, h + i, w + j]
//   local_correlation_forward(center, padded):
//     out[b, i * k + j, h, w] = sum_c center[b, c, h, w] * padded[b, c, h + i, w + j]
//   adaptive_conv_transpose(grad, kernel):   (the forward's input gradient, [B, C, H+k-1, W+k-1])
//     out[b, c, y, x] = sum_{i, j < k} kernel[b, i * k + j, y - i, x - j] * grad[b, c, y - i, x - j]
//     over the taps whose source pixel lies inside the H x W maps
//
// Each is (up to a re-indexing) the gradient of the other; the autograd formulas registered in Python
// (featup_plugin/ops/_library.py) build the backward passes from these two kernels. Both are registered as
// torch.ops.featup.adaptive_conv / local_correlation (register_ops.cpp) for the CPU and CUDA keys.
#include "pytorch_cpp_helper.hpp"

#include <cmath>

namespace featup {

at::Tensor adaptive_conv_forward_cpu(const at::Tensor& input, const at::Tensor& kernel, int64_t k);
at::Tensor local_correlation_forward_cpu(const at::Tensor& center, const at::Tensor& padded, int64_t k);
at::Tensor adaptive_conv_transpose_cpu(const at::Tensor& grad, const at::Tensor& kernel, int64_t k);
#ifdef WITH_CUDA
at::Tensor adaptive_conv_transpose_cuda(const at::Tensor& grad, const at::Tensor& kernel, int64_t k);
at::Tensor adaptive_conv_forward_cuda(const at::Tensor& input, const at::Tensor& kernel, int64_t k);
at::Tensor local_correlation_forward_cuda(const at::Tensor& center, const at::Tensor& padded, int64_t k);
#endif

namespace {

void check_common(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.dim() == 4, an, " must be 4-D, got ", a.dim(), "-D");
  TORCH_CHECK(b.dim() == 4, bn, " must be 4-D, got ", b.dim(), "-D");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype, got ", a.scalar_type(),
              " and ", b.scalar_type());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), an, " must be a floating point tensor, got ", a.scalar_type());
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(), " and ",
              b.device());
  check_cpu_or_cuda(a, "featup adaptive conv / local correlation");
  TORCH_CHECK(a.size(0) == b.size(0), an, " and ", bn, " must have the same batch size, got ", a.size(0), " and ",
              b.size(0));
  TORCH_CHECK(a.numel() > 0 && b.numel() > 0, an, " and ", bn, " must not be empty");
}

// k of a tap-major kernel [B, k*k, H, W] (odd k), or an error naming the tap count.
int64_t window_of(const at::Tensor& kernel) {
  const int64_t taps = kernel.size(1);
  const int64_t k = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(taps))));
  TORCH_CHECK(k * k == taps && k % 2 == 1, "kernel must have k*k taps for an odd k, got ", taps);
  return k;
}

// The kernel as the device code reads it: the CPU kernels take a contiguous or a pixel-major kernel in place
// (KernelStrides; adaptive_conv() passes FeatUp's [B, H, W, k, k] filters as a pixel-major view, which would cost a
// full transposition per call), any other layout is made contiguous; CUDA: contiguous.
at::Tensor kernel_for_device(const at::Tensor& kernel) {
  KernelStrides ks;
  if (kernel.is_cpu() && kernel_strides(kernel, &ks)) return kernel;
  return kernel.contiguous();
}

}  // namespace

at::Tensor adaptive_conv_forward(const at::Tensor& input, const at::Tensor& kernel) {
  check_common(input, "input", kernel, "kernel");
  const int64_t k = window_of(kernel);
  TORCH_CHECK(input.size(2) == kernel.size(2) + k - 1 && input.size(3) == kernel.size(3) + k - 1,
              "input spatial size must be kernel size + k - 1: input ", input.sizes(), ", kernel ", kernel.sizes());
  auto x = input.contiguous();
  auto kt = kernel_for_device(kernel);
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    return adaptive_conv_forward_cuda(x, kt, k);
#else
    TORCH_CHECK(false, "featup_plugin was built without CUDA support");
#endif
  }
  return adaptive_conv_forward_cpu(x, kt, k);
}

at::Tensor local_correlation_forward(const at::Tensor& center, const at::Tensor& padded) {
  check_common(center, "center", padded, "padded");
  const int64_t k = padded.size(2) - center.size(2) + 1;
  TORCH_CHECK(k >= 1 && k % 2 == 1 && padded.size(3) - center.size(3) + 1 == k,
              "padded must be center padded by the same odd window on both axes: center ", center.sizes(), ", padded ",
              padded.sizes());
  TORCH_CHECK(center.size(1) == padded.size(1), "center and padded must have the same channels");
  auto g = center.contiguous();
  auto x = padded.contiguous();
  if (g.is_cuda()) {
#ifdef WITH_CUDA
    return local_correlation_forward_cuda(g, x, k);
#else
    TORCH_CHECK(false, "featup_plugin was built without CUDA support");
#endif
  }
  return local_correlation_forward_cpu(g, x, k);
}

at::Tensor adaptive_conv_transpose(const at::Tensor& grad, const at::Tensor& kernel) {
  check_common(grad, "grad", kernel, "kernel");
  const int64_t k = window_of(kernel);
  TORCH_CHECK(grad.size(2) == kernel.size(2) && grad.size(3) == kernel.size(3),
              "grad and kernel must have the same spatial size: grad ", grad.sizes(), ", kernel ", kernel.sizes());
  auto g = grad.contiguous();
  auto kt = kernel_for_device(kernel);
  if (g.is_cuda()) {
#ifdef WITH_CUDA
    return adaptive_conv_transpose_cuda(g, kt, k);
#else
    TORCH_CHECK(false, "featup_plugin was built without CUDA support");
#endif
  }
  return adaptive_conv_transpose_cpu(g, kt, k);
}

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace featup
