// Host launchers of the CUDA adaptive convolution primitives. The kernels and the tiling scheme are in
// common/cuda/adaptive_conv_cuda_kernel.cuh; argument validation is done by pytorch/adaptive_conv.cpp.
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h, which pulls in the cuBLAS / cuSPARSE /
// cuSOLVER headers that a bare toolkit may lack). c10::cuda::getCurrentCUDAStream() is the stream that
// at::cuda::getCurrentCUDAStream() returns.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>

#include "adaptive_conv_cuda_kernel.cuh"
#include "pytorch_cpp_helper.hpp"

namespace featup {
namespace {

constexpr int64_t kMinChannelsPerSplit = 16;     // never split the channels into groups smaller than this
constexpr int64_t kBlocksPerSM = 4;              // aim for this many tiled blocks per SM
constexpr int64_t kStaticSmemLimit = 48 * 1024;  // dynamic shared memory usable without opt-in (above: allow_smem)
constexpr int64_t kIntMax = std::numeric_limits<int>::max();

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of SMs of the current device (cached per device).
int64_t sm_count() {
  static std::atomic<int> cache[C10_COMPILE_TIME_MAX_GPUS] = {};
  const c10::DeviceIndex dev = c10::cuda::current_device();
  const bool cached = dev >= 0 && dev < C10_COMPILE_TIME_MAX_GPUS;
  int n = cached ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (n <= 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    if (cached) cache[dev].store(n, std::memory_order_relaxed);
  }
  return std::max(n, 1);
}

// Dynamic shared memory a block of the current device may use after opting in (cudaFuncSetAttribute), at least
// the 48 KiB every device allows without; cached per device.
int64_t smem_optin_limit() {
  static std::atomic<int> cache[C10_COMPILE_TIME_MAX_GPUS] = {};
  const c10::DeviceIndex dev = c10::cuda::current_device();
  const bool cached = dev >= 0 && dev < C10_COMPILE_TIME_MAX_GPUS;
  int n = cached ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (n <= 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (cached) cache[dev].store(n, std::memory_order_relaxed);
  }
  return std::max<int64_t>(n, kStaticSmemLimit);
}

// Lets `kernel` launch with `smem` bytes of dynamic shared memory (opt-in above 48 KiB; the caller checked
// smem <= smem_optin_limit()).
template <typename Kernel>
void allow_smem(Kernel kernel, int64_t smem) {
  if (smem > kStaticSmemLimit) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
}

struct Geometry {
  int64_t B, C, H, W, k;
  int64_t tiles_x() const { return ceil_div(W, kThreadsX); }
  int64_t tiles_y(int rows) const { return ceil_div(H, kThreadsY * rows); }
  int64_t tiles(int rows) const { return B * tiles_x() * tiles_y(rows); }
};

// The kernels index rows and columns of a tile's window in 32 bits: up to h0 + tile height + k - 1, i.e. below
// H + 2 * k + kThreadsY * 2 (two rows per thread at most), and likewise for columns. Checked with that margin.
constexpr int64_t kIndexMargin = 2 * kThreadsX + 2 * kThreadsY * 2;

Geometry make_geometry(int64_t B, int64_t C, int64_t H, int64_t W, int64_t k) {
  TORCH_CHECK(B <= kIntMax && C <= kIntMax, "featup CUDA adaptive conv: batch ", B, " or channels ", C,
              " exceed INT_MAX");
  TORCH_CHECK(H + 2 * k + kIndexMargin <= kIntMax && W + 2 * k + kIndexMargin <= kIntMax,
              "featup CUDA adaptive conv: H=", H, ", W=", W, " with k=", k,
              " is too large for the kernels' 32-bit row / column indices (need H, W + 2k + ", kIndexMargin,
              " <= INT_MAX)");
  return {B, C, H, W, k};
}

// Output rows per thread of the K = 3, 5, 7 kernels: 2 (fewer shared-memory reads per FMA) where the
// doubled weights / accumulators fit in the 128 registers that 2 resident blocks of 256 threads per SM
// allow (checked with -Xptxas -v for sm_80 / sm_90: no spills, except 32 bytes for the float K = 7
// adaptive conv on sm_80), else 1.
template <typename scalar_t, int K>
constexpr int conv_rows() {
  if (std::is_same_v<scalar_t, double>) return 1;
  return K == 7 && !std::is_same_v<scalar_t, float> ? 1 : 2;
}

template <typename scalar_t, int K>
constexpr int corr_rows() {
  return std::is_same_v<at::opmath_type<scalar_t>, double> || K == 7 ? 1 : 2;
}

// Channel split: `count` groups of `size` channels (a multiple of `chunk`), enough to give the GPU about
// kBlocksPerSM blocks per SM when base_blocks alone would not, but at least kMinChannelsPerSplit channels
// per group.
struct Split {
  int64_t count, size;
};

Split split_channels(int64_t base_blocks, int64_t C, int64_t chunk) {
  const int64_t sms = sm_count();
  const int64_t target = kBlocksPerSM * sms;
  int64_t n = 1;
  if (base_blocks < target) n = std::min(ceil_div(target, base_blocks), std::max<int64_t>(1, C / kMinChannelsPerSplit));
  const int64_t size = ceil_div(ceil_div(C, n), chunk) * chunk;
  return {ceil_div(C, size), size};
}

int64_t checked_grid(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= kIntMax, "featup CUDA adaptive conv: grid of ", blocks, " blocks is too large");
  return blocks;
}

int64_t direct_grid(int64_t total) {
  const int64_t sms = sm_count();
  return std::max<int64_t>(1, std::min(ceil_div(total, kDirectThreads), sms * 64));
}

template <typename scalar_t>
int64_t window_bytes(int64_t k, int64_t channels) {
  using acc_t = at::opmath_type<scalar_t>;
  return channels * (kThreadsY + k - 1) * (kThreadsX + k - 1) * static_cast<int64_t>(sizeof(acc_t));
}

// ------------------------------------------------------------------------------------------------------
// adaptive conv
// ------------------------------------------------------------------------------------------------------
template <typename scalar_t, int K>
void launch_adaptive_conv_fast(const scalar_t* x, const scalar_t* kt, scalar_t* out, const Geometry& g,
                               cudaStream_t stream) {
  constexpr int rows = conv_rows<scalar_t, K>();
  const Split s = split_channels(g.tiles(rows), g.C, kChunkFast);
  const dim3 block(kThreadsX, kThreadsY);
  const dim3 grid(static_cast<unsigned>(checked_grid(g.tiles(rows) * s.count)));
  adaptive_conv_forward_cuda_kernel<scalar_t, K, kChunkFast, rows><<<grid, block, 0, stream>>>(
      x, kt, out, static_cast<int>(g.C), static_cast<int>(g.H), static_cast<int>(g.W), static_cast<int>(g.tiles_x()),
      static_cast<int>(g.tiles_y(rows)), static_cast<int>(s.count), static_cast<int>(s.size));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_adaptive_conv_other(const scalar_t* x, const scalar_t* kt, scalar_t* out, const Geometry& g,
                                cudaStream_t stream) {
  const int64_t smem = window_bytes<scalar_t>(g.k, kChunkGeneric);
  if (smem <= smem_optin_limit()) {
    const Split s = split_channels(g.tiles(1), g.C, kChunkGeneric);
    const dim3 block(kThreadsX, kThreadsY);
    const dim3 grid(static_cast<unsigned>(checked_grid(g.tiles(1) * s.count)));
    allow_smem(adaptive_conv_forward_generic_cuda_kernel<scalar_t, kChunkGeneric>, smem);
    adaptive_conv_forward_generic_cuda_kernel<scalar_t, kChunkGeneric><<<grid, block, smem, stream>>>(
        x, kt, out, static_cast<int>(g.C), static_cast<int>(g.H), static_cast<int>(g.W), static_cast<int>(g.k),
        static_cast<int>(g.tiles_x()), static_cast<int>(g.tiles_y(1)), static_cast<int>(s.count),
        static_cast<int>(s.size));
  } else {
    const int64_t total = g.B * g.C * g.H * g.W;
    adaptive_conv_forward_direct_cuda_kernel<scalar_t>
        <<<static_cast<unsigned>(direct_grid(total)), kDirectThreads, 0, stream>>>(
            x, kt, out, total, static_cast<int>(g.C), static_cast<int>(g.H), static_cast<int>(g.W),
            static_cast<int>(g.k));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------------
// local correlation
// ------------------------------------------------------------------------------------------------------

// Runs `launch(out_ptr, splits, split_size)` either straight into `out` (one split) or into an opmath
// workspace [splits, B, k*k, H, W] that is then summed over the splits and cast into `out`.
template <typename scalar_t, typename Launch>
at::Tensor run_correlation_splits(const at::Tensor& like, const Geometry& g, const Split& s, Launch&& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t KK = g.k * g.k;
  if (s.count == 1) {
    at::Tensor out = at::empty({g.B, KK, g.H, g.W}, like.options());
    launch(out.mutable_data_ptr<scalar_t>(), s);
    return out;
  }
  at::Tensor ws = at::empty({s.count, g.B, KK, g.H, g.W}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  launch(ws.mutable_data_ptr<acc_t>(), s);
  return ws.sum(0).to(like.scalar_type());
}

template <typename scalar_t, int K>
at::Tensor launch_local_correlation_fast(const at::Tensor& center, const scalar_t* gc, const scalar_t* xp,
                                         const Geometry& g, cudaStream_t stream) {
  constexpr int rows = corr_rows<scalar_t, K>();
  const Split s = split_channels(g.tiles(rows), g.C, kChunkFast);
  const dim3 block(kThreadsX, kThreadsY);
  const dim3 grid(static_cast<unsigned>(checked_grid(g.tiles(rows) * s.count)));
  return run_correlation_splits<scalar_t>(center, g, s, [&](auto* out, const Split& sp) {
    using out_t = std::remove_pointer_t<decltype(out)>;
    local_correlation_forward_cuda_kernel<scalar_t, out_t, K, kChunkFast, rows><<<grid, block, 0, stream>>>(
        gc, xp, out, static_cast<int>(g.B), static_cast<int>(g.C), static_cast<int>(g.H), static_cast<int>(g.W),
        static_cast<int>(g.tiles_x()), static_cast<int>(g.tiles_y(rows)), static_cast<int>(sp.count),
        static_cast<int>(sp.size));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t, int TG>
at::Tensor launch_local_correlation_generic(const at::Tensor& center, const scalar_t* gc, const scalar_t* xp,
                                            const Geometry& g, int64_t smem, cudaStream_t stream) {
  const int64_t tap_groups = ceil_div(g.k * g.k, TG);
  const Split s = split_channels(g.tiles(1) * tap_groups, g.C, kChunkGeneric);
  const dim3 block(kThreadsX, kThreadsY);
  const dim3 grid(static_cast<unsigned>(checked_grid(g.tiles(1) * tap_groups * s.count)));
  return run_correlation_splits<scalar_t>(center, g, s, [&](auto* out, const Split& sp) {
    using out_t = std::remove_pointer_t<decltype(out)>;
    allow_smem(local_correlation_forward_generic_cuda_kernel<scalar_t, out_t, kChunkGeneric, TG>, smem);
    local_correlation_forward_generic_cuda_kernel<scalar_t, out_t, kChunkGeneric, TG><<<grid, block, smem, stream>>>(
        gc, xp, out, static_cast<int>(g.B), static_cast<int>(g.C), static_cast<int>(g.H), static_cast<int>(g.W),
        static_cast<int>(g.k), static_cast<int>(g.tiles_x()), static_cast<int>(g.tiles_y(1)),
        static_cast<int>(sp.count), static_cast<int>(sp.size), static_cast<int>(tap_groups));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
at::Tensor launch_local_correlation_other(const at::Tensor& center, const scalar_t* gc, const scalar_t* xp,
                                          const Geometry& g, cudaStream_t stream) {
  const int64_t smem = window_bytes<scalar_t>(g.k, kChunkGeneric);
  if (smem <= smem_optin_limit()) {
    constexpr int wide = wide_tap_group<at::opmath_type<scalar_t>>();
    if (g.k * g.k > kTapGroup) return launch_local_correlation_generic<scalar_t, wide>(center, gc, xp, g, smem, stream);
    return launch_local_correlation_generic<scalar_t, kTapGroup>(center, gc, xp, g, smem, stream);
  }
  at::Tensor out = at::empty({g.B, g.k * g.k, g.H, g.W}, center.options());
  const int64_t total = out.numel();
  local_correlation_forward_direct_cuda_kernel<scalar_t>
      <<<static_cast<unsigned>(direct_grid(total)), kDirectThreads, 0, stream>>>(
          gc, xp, out.mutable_data_ptr<scalar_t>(), total, static_cast<int>(g.C), static_cast<int>(g.H),
          static_cast<int>(g.W), static_cast<int>(g.k));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

at::Tensor adaptive_conv_forward_cuda(const at::Tensor& input, const at::Tensor& kernel, int64_t k) {
  FEATUP_CHECK_CUDA_INPUT(input);
  FEATUP_CHECK_CUDA_INPUT(kernel);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Geometry g = make_geometry(input.size(0), input.size(1), kernel.size(2), kernel.size(3), k);
  at::Tensor out = at::empty({g.B, g.C, g.H, g.W}, input.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "adaptive_conv_forward_cuda", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* kt = kernel.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    switch (k) {
      case 3:
        launch_adaptive_conv_fast<scalar_t, 3>(x, kt, o, g, stream);
        break;
      case 5:
        launch_adaptive_conv_fast<scalar_t, 5>(x, kt, o, g, stream);
        break;
      case 7:
        launch_adaptive_conv_fast<scalar_t, 7>(x, kt, o, g, stream);
        break;
      default:
        launch_adaptive_conv_other<scalar_t>(x, kt, o, g, stream);
        break;
    }
  });
  return out;
}

at::Tensor local_correlation_forward_cuda(const at::Tensor& center, const at::Tensor& padded, int64_t k) {
  FEATUP_CHECK_CUDA_INPUT(center);
  FEATUP_CHECK_CUDA_INPUT(padded);
  const c10::cuda::CUDAGuard device_guard(center.device());
  const Geometry g = make_geometry(center.size(0), center.size(1), center.size(2), center.size(3), k);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, center.scalar_type(), "local_correlation_forward_cuda",
                                  [&] {
                                    const scalar_t* gc = center.const_data_ptr<scalar_t>();
                                    const scalar_t* xp = padded.const_data_ptr<scalar_t>();
                                    switch (k) {
                                      case 3:
                                        out = launch_local_correlation_fast<scalar_t, 3>(center, gc, xp, g, stream);
                                        break;
                                      case 5:
                                        out = launch_local_correlation_fast<scalar_t, 5>(center, gc, xp, g, stream);
                                        break;
                                      case 7:
                                        out = launch_local_correlation_fast<scalar_t, 7>(center, gc, xp, g, stream);
                                        break;
                                      default:
                                        out = launch_local_correlation_other<scalar_t>(center, gc, xp, g, stream);
                                        break;
                                    }
                                  });
  return out;
}

at::Tensor adaptive_conv_transpose_cuda(const at::Tensor& grad, const at::Tensor& kernel, int64_t k) {
  FEATUP_CHECK_CUDA_INPUT(grad);
  FEATUP_CHECK_CUDA_INPUT(kernel);
  const c10::cuda::CUDAGuard device_guard(grad.device());
  // the size checks of the forward (32-bit rows / columns), on the padded output's geometry
  const Geometry g = make_geometry(grad.size(0), grad.size(1), grad.size(2), grad.size(3), k);
  at::Tensor out = at::empty({g.B, g.C, g.H + k - 1, g.W + k - 1}, grad.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "adaptive_conv_transpose_cuda", [&] {
    adaptive_conv_transpose_direct_cuda_kernel<scalar_t>
        <<<static_cast<unsigned>(direct_grid(total)), kDirectThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total,
            static_cast<int>(g.C), static_cast<int>(g.H), static_cast<int>(g.W), static_cast<int>(k));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace featup
