// CUDA kernels of the pixel-adaptive convolution tiles (see common/pac_common.hpp for the indexing):
// plain elementwise gather / scatter, the GEMMs being cuBLAS calls made by pytorch/pac_conv.cpp through at::mm.
// One thread per column element for the gather and the input-gradient scatter (atomicAdd: a source pixel is
// read by up to k*k taps), one thread per (tap, column) for the kernel gradient, which reduces over channels.
#pragma once

#include <cstdint>

namespace featup {

struct PacDevGeom {
  int64_t C, H, W, kw, T, sh, sw, ph, pw, dh, dw, Wo, P;  // T = kh * kw, P = Ho * Wo
  int64_t b0, p0, n, ncol;                                // the tile
};

// Source offset of tap t for tile column j, or -1 outside the input; also the (b, p) of the column.
__device__ __forceinline__ int64_t pac_source(const PacDevGeom& g, int64_t t, int64_t j, int64_t& b, int64_t& p) {
  b = g.b0 + j / g.n;
  p = g.p0 + j % g.n;
  const int64_t oy = p / g.Wo, ox = p % g.Wo;
  const int64_t iy = oy * g.sh - g.ph + (t / g.kw) * g.dh;
  const int64_t ix = ox * g.sw - g.pw + (t % g.kw) * g.dw;
  if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) return -1;
  return iy * g.W + ix;
}

template <typename T>
__global__ void pac_gather_cuda_kernel(const T* __restrict__ v, const T* __restrict__ K, T* __restrict__ col,
                                       PacDevGeom g, int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = idx % g.ncol, r = idx / g.ncol, c = r / g.T, t = r % g.T;
    int64_t b, p;
    const int64_t src = pac_source(g, t, j, b, p);
    col[idx] = src < 0 ? T(0) : K[(b * g.T + t) * g.P + p] * v[(b * g.C + c) * g.H * g.W + src];
  }
}

template <typename T>
__global__ void pac_scatter_input_cuda_kernel(const T* __restrict__ dcol, const T* __restrict__ K, T* __restrict__ gi,
                                              PacDevGeom g, int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = idx % g.ncol, r = idx / g.ncol, c = r / g.T, t = r % g.T;
    int64_t b, p;
    const int64_t src = pac_source(g, t, j, b, p);
    if (src >= 0) atomicAdd(gi + (b * g.C + c) * g.H * g.W + src, K[(b * g.T + t) * g.P + p] * dcol[idx]);
  }
}

template <typename T>
__global__ void pac_scatter_kernel_cuda_kernel(const T* __restrict__ dcol, const T* __restrict__ v, T* __restrict__ gk,
                                               PacDevGeom g, int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = idx % g.ncol, t = idx / g.ncol;
    int64_t b, p;
    const int64_t src = pac_source(g, t, j, b, p);
    T acc = T(0);
    if (src >= 0) {
      const T* vb = v + b * g.C * g.H * g.W + src;
      const T* d = dcol + t * g.ncol + j;
      for (int64_t c = 0; c < g.C; ++c) acc += d[c * g.T * g.ncol] * vb[c * g.H * g.W];
    }
    gk[(b * g.T + t) * g.P + p] = acc;
  }
}

}  // namespace featup
