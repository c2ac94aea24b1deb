// CUDA kernels of the pixel-adaptive convolution tiles (see common/pac_common.hpp for the indexing):
// plain elementwise gather / scatter, the GEMMs being cuBLAS calls made by pytorch/pac_conv.cpp through at::mm.
// One thread per column element for the gather and the input-gradient scatter (atomicAdd: a source pixel is
// read by up to k*k taps), one thread per (tap, column) for the kernel gradient, which reduces over channels.
#pragma once

#include <cstdint>
#include <limits>

namespace featup {

struct PacDevGeom {
  int64_t C, H, W, kw, T, sh, sw, ph, pw, dh, dw, Wo, P;  // T = kh * kw, P = Ho * Wo
  int64_t b0, p0, n, ncol;                                // the tile
};

// Decoding a column element into (channel, tap, image, pixel, tap row / column) takes five divisions. They run
// in the index type I: uint32_t when the tile and the image sizes fit (the host launchers check; 64-bit division
// is a subroutine of ~70 instructions on the GPU, 32-bit unsigned a few), int64_t otherwise. Addresses are
// always 64-bit.
// Whether the 32-bit decode is exact for a launch over `total` elements: every decoded quantity is below these.
inline bool pac_index_fits_32(const PacDevGeom& g, int64_t total) {
  constexpr int64_t lim = std::numeric_limits<uint32_t>::max();
  return total <= lim && g.ncol <= lim && g.P <= lim && g.p0 + g.n <= lim;
}

template <typename I>
struct PacIndex {
  int64_t c, t, b, p, src;  // src: source offset of tap t for the column, -1 outside the input
};

template <typename I>
__device__ __forceinline__ PacIndex<I> pac_decode(const PacDevGeom& g, int64_t idx, bool with_channel) {
  PacIndex<I> r;
  const I i = static_cast<I>(idx), ncol = static_cast<I>(g.ncol);
  const I row = i / ncol, j = i - row * ncol;  // row = c * T + t (gather / input scatter) or t (kernel grad)
  I t = row;
  r.c = 0;
  if (with_channel) {
    const I T = static_cast<I>(g.T);
    const I c = row / T;
    t = row - c * T;
    r.c = static_cast<int64_t>(c);
  }
  const I n = static_cast<I>(g.n), Wo = static_cast<I>(g.Wo), kw = static_cast<I>(g.kw);
  const I jb = j / n, pj = j - jb * n;
  const I p = static_cast<I>(g.p0) + pj;
  const I oy = p / Wo, ox = p - oy * Wo;
  const I ty = t / kw, tx = t - ty * kw;
  r.t = static_cast<int64_t>(t);
  r.b = g.b0 + static_cast<int64_t>(jb);
  r.p = static_cast<int64_t>(p);
  const int64_t iy = static_cast<int64_t>(oy) * g.sh - g.ph + static_cast<int64_t>(ty) * g.dh;
  const int64_t ix = static_cast<int64_t>(ox) * g.sw - g.pw + static_cast<int64_t>(tx) * g.dw;
  r.src = (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) ? -1 : iy * g.W + ix;
  return r;
}

template <typename T, typename I>
__global__ void pac_gather_cuda_kernel(const T* __restrict__ v, const T* __restrict__ K, T* __restrict__ col,
                                       PacDevGeom g, int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const PacIndex<I> d = pac_decode<I>(g, idx, true);
    col[idx] = d.src < 0 ? T(0) : K[(d.b * g.T + d.t) * g.P + d.p] * v[(d.b * g.C + d.c) * g.H * g.W + d.src];
  }
}

template <typename T, typename I>
__global__ void pac_scatter_input_cuda_kernel(const T* __restrict__ dcol, const T* __restrict__ K, T* __restrict__ gi,
                                              PacDevGeom g, int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const PacIndex<I> d = pac_decode<I>(g, idx, true);
    if (d.src >= 0) atomicAdd(gi + (d.b * g.C + d.c) * g.H * g.W + d.src, K[(d.b * g.T + d.t) * g.P + d.p] * dcol[idx]);
  }
}

template <typename T, typename I>
__global__ void pac_scatter_kernel_cuda_kernel(const T* __restrict__ dcol, const T* __restrict__ v, T* __restrict__ gk,
                                               PacDevGeom g, int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const PacIndex<I> d = pac_decode<I>(g, idx, false);
    T acc = T(0);
    if (d.src >= 0) {
      const T* vb = v + d.b * g.C * g.H * g.W + d.src;
      const T* dp = dcol + idx;  // row t, column j of dcol [C*T, ncol] for channel 0
      for (int64_t c = 0; c < g.C; ++c) acc += dp[c * g.T * g.ncol] * vb[c * g.H * g.W];
    }
    gk[(d.b * g.T + d.t) * g.P + d.p] = acc;
  }
}

}  // namespace featup
