// CPU kernel of featup::upsample2x_bicubic_pad: F.pad(F.interpolate(x, (2h, 2w), mode='bicubic',
// align_corners=False), [p] * 4, mode='reflect') in one pass, without the intermediate upsampled tensor.
//
// At scale 2 the source coordinate of output o is o/2 - 1/4, so even outputs use taps m-2..m+1 with the cubic
// weights of t = 3/4 and odd outputs taps m-1..m+2 with those of t = 1/4 (m = o/2, indices clamped to the
// input as PyTorch does). Separable, in PyTorch's order: rows along W first, then the 4 rows along H.
// Derivation: docs/ops.md#fused-x2-bicubic-upsampling-and-reflect-padding
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "pytorch_cpp_helper.hpp"

#if defined(__GNUC__)
#define FEATUP_RESTRICT __restrict__
#else
#define FEATUP_RESTRICT
#endif

namespace featup {
namespace {

// PyTorch's cubic convolution weights (A = -0.75) for fraction t: taps at floor-1 .. floor+2.
template <typename T>
void cubic_weights(T w[4], T t) {
  const T A = T(-0.75);
  auto c1 = [A](T x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };
  auto c2 = [A](T x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };
  w[0] = c2(t + 1);
  w[1] = c1(t);
  w[2] = c1(1 - t);
  w[3] = c2(2 - t);
}

inline int64_t clampi(int64_t v, int64_t n) { return std::min(std::max(v, int64_t(0)), n - 1); }
// Reflect (no edge repeat) of v into [0, n), for -n < v < 2n - 1.
inline int64_t reflecti(int64_t v, int64_t n) { return v < 0 ? -v : (v >= n ? 2 * (n - 1) - v : v); }

template <typename T>
void upsample_plane(const T* x, T* out, T* tmp, int64_t h, int64_t w, int64_t p, const T* we, const T* wo) {
  const int64_t H = 2 * h, W = 2 * w, Wp = W + 2 * p;
  // Pass 1, along W: tmp[y, X] for all input rows y.
  for (int64_t y = 0; y < h; ++y) {
    const T* xr = x + y * w;
    T* tr = tmp + y * W;
    for (int64_t m = 0; m < w; ++m) {
      const bool inner = m >= 2 && m + 2 < w;
      T e, o;
      if (inner) {
        e = we[0] * xr[m - 2];
        e += we[1] * xr[m - 1];
        e += we[2] * xr[m];
        e += we[3] * xr[m + 1];
        o = wo[0] * xr[m - 1];
        o += wo[1] * xr[m];
        o += wo[2] * xr[m + 1];
        o += wo[3] * xr[m + 2];
      } else {
        e = we[0] * xr[clampi(m - 2, w)];
        e += we[1] * xr[clampi(m - 1, w)];
        e += we[2] * xr[clampi(m, w)];
        e += we[3] * xr[clampi(m + 1, w)];
        o = wo[0] * xr[clampi(m - 1, w)];
        o += wo[1] * xr[clampi(m, w)];
        o += wo[2] * xr[clampi(m + 1, w)];
        o += wo[3] * xr[clampi(m + 2, w)];
      }
      tr[2 * m] = e;
      tr[2 * m + 1] = o;
    }
  }
  // Pass 2, along H, straight into the padded rows; then the reflected columns of the row.
  for (int64_t py = 0; py < H + 2 * p; ++py) {
    const int64_t Y = reflecti(py - p, H), m = Y / 2;
    const T* wy = (Y % 2 == 0) ? we : wo;
    const int64_t y0 = (Y % 2 == 0) ? m - 2 : m - 1;
    const T* FEATUP_RESTRICT r0 = tmp + clampi(y0, h) * W;
    const T* FEATUP_RESTRICT r1 = tmp + clampi(y0 + 1, h) * W;
    const T* FEATUP_RESTRICT r2 = tmp + clampi(y0 + 2, h) * W;
    const T* FEATUP_RESTRICT r3 = tmp + clampi(y0 + 3, h) * W;
    T* FEATUP_RESTRICT o = out + py * Wp + p;
    const T a0 = wy[0], a1 = wy[1], a2 = wy[2], a3 = wy[3];
    for (int64_t X = 0; X < W; ++X) {
      T v = a0 * r0[X];
      v += a1 * r1[X];
      v += a2 * r2[X];
      v += a3 * r3[X];
      o[X] = v;
    }
    for (int64_t q = 1; q <= p; ++q) {
      o[-q] = o[q];
      o[W - 1 + q] = o[W - 1 - q];
    }
  }
}

// The transpose of upsample_plane (the input gradient): fold the reflected columns of each padded row into its
// row, scatter the row into the 4 buffered rows it was formed from (transposed pass 2), then scatter each buffered
// row into the input columns (transposed pass 1).
template <typename T>
void upsample_plane_backward(const T* g, T* dx, T* tmp, T* u, int64_t h, int64_t w, int64_t p, const T* we,
                             const T* wo) {
  const int64_t H = 2 * h, W = 2 * w, Wp = W + 2 * p;
  std::fill(tmp, tmp + h * W, T(0));
  for (int64_t py = 0; py < H + 2 * p; ++py) {
    const T* gr = g + py * Wp;
    for (int64_t X = 0; X < W; ++X) u[X] = gr[p + X];
    for (int64_t q = 1; q <= p; ++q) {
      u[q] += gr[p - q];
      u[W - 1 - q] += gr[p + W - 1 + q];
    }
    const int64_t Y = reflecti(py - p, H), m = Y / 2;
    const T* wy = (Y % 2 == 0) ? we : wo;
    const int64_t y0 = (Y % 2 == 0) ? m - 2 : m - 1;
    for (int a = 0; a < 4; ++a) {
      T* FEATUP_RESTRICT tr = tmp + clampi(y0 + a, h) * W;
      const T wa = wy[a];
      for (int64_t X = 0; X < W; ++X) tr[X] += wa * u[X];
    }
  }
  for (int64_t y = 0; y < h; ++y) {
    const T* tr = tmp + y * W;
    T* xr = dx + y * w;
    std::fill(xr, xr + w, T(0));
    for (int64_t m = 0; m < w; ++m) {
      const T e = tr[2 * m], o = tr[2 * m + 1];
      for (int a = 0; a < 4; ++a) {
        xr[clampi(m - 2 + a, w)] += we[a] * e;
        xr[clampi(m - 1 + a, w)] += wo[a] * o;
      }
    }
  }
}

}  // namespace

at::Tensor upsample2x_bicubic_pad_cpu(const at::Tensor& input_, int64_t pad) {
  TORCH_CHECK(input_.dim() == 4, "upsample2x_bicubic_pad: input must be 4-D, got ", input_.dim(), "-D");
  FEATUP_CHECK_CPU(input_);
  TORCH_CHECK(input_.scalar_type() == at::kFloat || input_.scalar_type() == at::kDouble,
              "upsample2x_bicubic_pad: input must be float32 or float64, got ", input_.scalar_type());
  TORCH_CHECK(input_.numel() > 0, "upsample2x_bicubic_pad: input must not be empty");
  TORCH_CHECK(pad >= 0 && pad < 2 * std::min(input_.size(2), input_.size(3)),
              "upsample2x_bicubic_pad: reflect padding needs 0 <= pad < the upsampled size, got pad ", pad,
              " for input ", input_.sizes());
  const at::Tensor input = input_.contiguous();
  const int64_t B = input.size(0), C = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t Hp = 2 * h + 2 * pad, Wp = 2 * w + 2 * pad;
  auto out = empty_output({B, C, Hp, Wp}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "upsample2x_bicubic_pad_cpu", [&] {
    scalar_t we[4], wo[4];
    cubic_weights<scalar_t>(we, scalar_t(0.75));
    cubic_weights<scalar_t>(wo, scalar_t(0.25));
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> tmp(static_cast<size_t>(h * 2 * w));
      for (int64_t plane = begin; plane < end; ++plane)
        upsample_plane<scalar_t>(x + plane * h * w, o + plane * Hp * Wp, tmp.data(), h, w, pad, we, wo);
    });
  });
  return out;
}

}  // namespace featup

namespace featup {

// grad [B, C, 2h+2pad, 2w+2pad] -> the input gradient [B, C, h, w] of upsample2x_bicubic_pad.
at::Tensor upsample2x_bicubic_pad_backward_cpu(const at::Tensor& grad_, int64_t pad) {
  TORCH_CHECK(grad_.dim() == 4, "upsample2x_bicubic_pad_backward: grad must be 4-D, got ", grad_.dim(), "-D");
  FEATUP_CHECK_CPU(grad_);
  TORCH_CHECK(grad_.scalar_type() == at::kFloat || grad_.scalar_type() == at::kDouble,
              "upsample2x_bicubic_pad_backward: grad must be float32 or float64, got ", grad_.scalar_type());
  const int64_t B = grad_.size(0), C = grad_.size(1), Hp = grad_.size(2), Wp = grad_.size(3);
  TORCH_CHECK(pad >= 0 && (Hp - 2 * pad) % 2 == 0 && (Wp - 2 * pad) % 2 == 0 && Hp > 2 * pad && Wp > 2 * pad,
              "upsample2x_bicubic_pad_backward: grad ", grad_.sizes(), " is not a x2 map padded by ", pad);
  const int64_t h = (Hp - 2 * pad) / 2, w = (Wp - 2 * pad) / 2;
  TORCH_CHECK(pad < 2 * std::min(h, w),
              "upsample2x_bicubic_pad_backward: reflect padding needs pad < the upsampled "
              "size, got pad ",
              pad, " for grad ", grad_.sizes());
  const at::Tensor grad = grad_.contiguous();
  auto dx = at::empty({B, C, h, w}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "upsample2x_bicubic_pad_backward_cpu", [&] {
    scalar_t we[4], wo[4];
    cubic_weights<scalar_t>(we, scalar_t(0.75));
    cubic_weights<scalar_t>(wo, scalar_t(0.25));
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* o = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> tmp(static_cast<size_t>(h * 2 * w)), u(static_cast<size_t>(2 * w));
      for (int64_t plane = begin; plane < end; ++plane)
        upsample_plane_backward<scalar_t>(g + plane * Hp * Wp, o + plane * h * w, tmp.data(), u.data(), h, w, pad, we,
                                          wo);
    });
  });
  return dx;
}

}  // namespace featup
