// Geometry shared by the pixel-adaptive convolution (PAC) kernels.
//
// A PAC layer computes, for every output pixel p = (oy, ox) and tap t = (ty, tx) of a kh x kw window,
//   src(p, t) = (oy * sh - ph + ty * dh, ox * sw - pw + tx * dw)      (zero outside the input)
//   col[c * T + t, p] = K[b, t, p] * v[b, c, src(p, t)]                 (T = kh * kw taps)
//   out[b, :, p] = W.view(O, C * T) @ col[:, p]                          (conv)   or
//   out[b, c, p] = sum_t col[c * T + t, p]                               (pool)
// The drivers in pytorch/pac_conv.cpp never build col for the whole image: they work on tiles of output
// pixels, a rectangle (b0 .. b0+nb) x (p0 .. p0+n) of the flattened (batch, pixel) grid, column j of a
// tile being image b0 + j / n, pixel p0 + j % n. The device kernels gather / scatter one tile.
#pragma once

#include <torch/extension.h>

namespace featup {

struct PacGeom {
  int64_t B, C, H, W;  // input
  int64_t kh, kw;      // window
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t Ho, Wo;  // output
  int64_t taps() const { return kh * kw; }
  int64_t pixels() const { return Ho * Wo; }
};

struct PacTile {
  int64_t b0, nb, p0, n;
  int64_t cols() const { return nb * n; }
};

// col [C*T, nb*n] = K * v gathered for one tile.
void pac_gather_cpu(const at::Tensor& input, const at::Tensor& kernel, at::Tensor& col, const PacGeom& g,
                    const PacTile& tile);
// From dcol [C*T, nb*n] (the gradient of col): grad_input[b, c, src] += K * dcol (if defined) and
// grad_kernel[b, t, p] = sum_c dcol * v[b, c, src] (if defined; written, not accumulated).
void pac_scatter_cpu(const at::Tensor& dcol, const at::Tensor& input, const at::Tensor& kernel, at::Tensor& grad_input,
                     at::Tensor& grad_kernel, const PacGeom& g, const PacTile& tile);
#ifdef WITH_CUDA
void pac_gather_cuda(const at::Tensor& input, const at::Tensor& kernel, at::Tensor& col, const PacGeom& g,
                     const PacTile& tile);
void pac_scatter_cuda(const at::Tensor& dcol, const at::Tensor& input, const at::Tensor& kernel, at::Tensor& grad_input,
                      at::Tensor& grad_kernel, const PacGeom& g, const PacTile& tile);
#endif

}  // namespace featup
