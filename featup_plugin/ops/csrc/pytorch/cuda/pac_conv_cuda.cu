// Host launchers of the PAC tile kernels (common/cuda/pac_conv_cuda_kernel.cuh). float32 / float64 only: the
// Python wrapper computes half / bfloat16 inputs in float32. Validation is done by pytorch/pac_conv.cpp.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "pac_common.hpp"
#include "pac_conv_cuda_kernel.cuh"
#include "pytorch_cpp_helper.hpp"

namespace featup {
namespace {

constexpr int kPacThreads = 256;

unsigned pac_blocks(int64_t total) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((total + kPacThreads - 1) / kPacThreads, int64_t(1) << 20)));
}

PacDevGeom dev_geom(const PacGeom& g, const PacTile& t) {
  return {g.C,  g.H,  g.W,  g.kw,       g.taps(), g.sh, g.sw, g.ph,    g.pw,
          g.dh, g.dw, g.Wo, g.pixels(), t.b0,     t.p0, t.n,  t.cols()};
}

}  // namespace

void pac_gather_cuda(const at::Tensor& input, const at::Tensor& kernel, at::Tensor& col, const PacGeom& g,
                     const PacTile& tile) {
  FEATUP_CHECK_CUDA_INPUT(input);
  FEATUP_CHECK_CUDA_INPUT(kernel);
  FEATUP_CHECK_CUDA_INPUT(col);
  const c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const PacDevGeom dg = dev_geom(g, tile);
  const int64_t total = g.C * g.taps() * tile.cols();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pac_gather_cuda", [&] {
    auto launch = [&](auto index_type) {
      using I = decltype(index_type);
      pac_gather_cuda_kernel<scalar_t, I><<<pac_blocks(total), kPacThreads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(), col.mutable_data_ptr<scalar_t>(), dg,
          total);
    };
    pac_index_fits_32(dg, total) ? launch(uint32_t{}) : launch(int64_t{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void pac_scatter_cuda(const at::Tensor& dcol, const at::Tensor& input, const at::Tensor& kernel, at::Tensor& grad_input,
                      at::Tensor& grad_kernel, const PacGeom& g, const PacTile& tile) {
  FEATUP_CHECK_CUDA_INPUT(dcol);
  FEATUP_CHECK_CUDA_INPUT(input);
  FEATUP_CHECK_CUDA_INPUT(kernel);
  // The input-gradient scatter accumulates with atomicAdd (a source pixel is read by several taps), so its
  // summation order varies between runs: an error under torch.use_deterministic_algorithms(True), a warning with
  // warn_only=True, as PyTorch's own atomicAdd-based backward kernels do.
  if (grad_input.defined()) {
    at::globalContext().alertNotDeterministic("featup::pac_backward (CUDA, input gradient: atomicAdd scatter)");
  }
  const c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const PacDevGeom dg = dev_geom(g, tile);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pac_scatter_cuda", [&] {
    if (grad_input.defined()) {
      FEATUP_CHECK_CUDA_INPUT(grad_input);
      const int64_t total = g.C * g.taps() * tile.cols();
      auto launch = [&](auto index_type) {
        using I = decltype(index_type);
        pac_scatter_input_cuda_kernel<scalar_t, I><<<pac_blocks(total), kPacThreads, 0, stream>>>(
            dcol.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
            dg, total);
      };
      pac_index_fits_32(dg, total) ? launch(uint32_t{}) : launch(int64_t{});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_kernel.defined()) {
      FEATUP_CHECK_CUDA_INPUT(grad_kernel);
      const int64_t total = g.taps() * tile.cols();
      auto launch = [&](auto index_type) {
        using I = decltype(index_type);
        pac_scatter_kernel_cuda_kernel<scalar_t, I><<<pac_blocks(total), kPacThreads, 0, stream>>>(
            dcol.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), grad_kernel.mutable_data_ptr<scalar_t>(),
            dg, total);
      };
      pac_index_fits_32(dg, total) ? launch(uint32_t{}) : launch(int64_t{});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace featup
