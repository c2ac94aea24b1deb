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
#define FEATUP_INLINE inline __attribute__((always_inline))
#else
#define FEATUP_RESTRICT
#define FEATUP_INLINE inline
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FEATUP_NO_ISA_DISPATCH)
#define FEATUP_UP_X86 1
#else
#define FEATUP_UP_X86 0
#endif

namespace featup {
int cpu_isa_level();  // adaptive_conv_cpu.cpp: 0 baseline, 1 AVX2, 2 AVX-512 (set_cpu_isa applies)
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
FEATUP_INLINE void upsample_plane_impl(const T* x, T* out, T* tmp, int64_t h, int64_t w, int64_t p, const T* we,
                                       const T* wo) {
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

// The transpose of upsample_plane (the input gradient), in gather form: each buffered row t[y] (the transposed
// pass 2) is the weighted sum of the padded gradient rows that were formed from it (`rows`, the same for every
// plane), with the reflected columns of each folded in; each input gradient dx[y, n] (the transposed pass 1) is
// then an 8-tap stride-2 filter of t[y]: even outputs 2m used taps m-2..m+1 (weights we), odd ones m-1..m+2 (wo),
// so dx[n] = sum_a we[a] t[2(n+2-a)] + wo[a] t[2(n+1-a)+1] inside; the two columns at each side, where the
// forward clamped its taps, are summed tap by tap. Every output is written once (no scatter, no
// read-modify-write passes); the sums are those of the scatter form in another order.
template <typename T>
struct RowTerm {
  int64_t row;
  T weight;
};

template <typename T>
FEATUP_INLINE T dx_border(const T* t, int64_t w, int64_t n, const T* we, const T* wo) {
  T acc = T(0);
  for (int64_t m = std::max<int64_t>(0, n - 3); m < std::min<int64_t>(w, n + 4); ++m)
    for (int a = 0; a < 4; ++a) {
      if (clampi(m - 2 + a, w) == n) acc += we[a] * t[2 * m];
      if (clampi(m - 1 + a, w) == n) acc += wo[a] * t[2 * m + 1];
    }
  return acc;
}

template <typename T>
FEATUP_INLINE void upsample_plane_backward_impl(const T* g, T* dx, T* t, int64_t h, int64_t w, int64_t p, const T* we,
                                                const T* wo, const std::vector<RowTerm<T>>* rows) {
  const int64_t W = 2 * w, Wp = W + 2 * p;
  // dx[n] = sum_d c[d + 3] * t[2n + d], d = -3..4
  const T c[8] = {wo[3], we[3], wo[2], we[2], wo[1], we[1], wo[0], we[0]};
  for (int64_t y = 0; y < h; ++y) {
    const std::vector<RowTerm<T>>& terms = rows[y];
    T* FEATUP_RESTRICT tr = t;
    if (terms.empty()) {  // not reached (every buffered row feeds some output row); kept for safety
      std::fill(tr, tr + W, T(0));
    } else {
      const T* FEATUP_RESTRICT g0 = g + terms[0].row * Wp + p;
      const T w0 = terms[0].weight;
      for (int64_t X = 0; X < W; ++X) tr[X] = w0 * g0[X];
    }
    for (size_t l = 1; l < terms.size(); ++l) {
      const T* FEATUP_RESTRICT gl = g + terms[l].row * Wp + p;
      const T wl = terms[l].weight;
      for (int64_t X = 0; X < W; ++X) tr[X] += wl * gl[X];
    }
    for (const RowTerm<T>& term : terms) {  // the reflected columns: padded column p - q is column q, and so on
      const T* gr = g + term.row * Wp;
      for (int64_t q = 1; q <= p; ++q) {
        tr[q] += term.weight * gr[p - q];
        tr[W - 1 - q] += term.weight * gr[p + W - 1 + q];
      }
    }
    T* FEATUP_RESTRICT xr = dx + y * w;
    const int64_t lo = std::min<int64_t>(2, w), hi = std::max<int64_t>(lo, w - 2);
    for (int64_t n = 0; n < lo; ++n) xr[n] = dx_border(t, w, n, we, wo);
    for (int64_t n = lo; n < hi; ++n) {
      const T* FEATUP_RESTRICT s = t + 2 * n - 3;
      T acc = c[0] * s[0];
      for (int d = 1; d < 8; ++d) acc += c[d] * s[d];
      xr[n] = acc;
    }
    for (int64_t n = hi; n < w; ++n) xr[n] = dx_border(t, w, n, we, wo);
  }
}

// For each buffered row y, the padded rows formed from it and their weights (pass 2 of the forward, transposed).
template <typename T>
std::vector<std::vector<RowTerm<T>>> backward_rows(int64_t h, int64_t p, const T* we, const T* wo) {
  const int64_t H = 2 * h;
  std::vector<std::vector<RowTerm<T>>> rows(static_cast<size_t>(h));
  for (int64_t py = 0; py < H + 2 * p; ++py) {
    const int64_t Y = reflecti(py - p, H), m = Y / 2;
    const T* wy = (Y % 2 == 0) ? we : wo;
    const int64_t y0 = (Y % 2 == 0) ? m - 2 : m - 1;
    for (int a = 0; a < 4; ++a) rows[clampi(y0 + a, h)].push_back({py, wy[a]});
  }
  return rows;
}

// ISA entry points (the same templates compiled for AVX-512 / AVX2 + FMA / the baseline; the path in use is the
// one the adaptive-conv kernels use, so set_cpu_isa covers these too).
#define FEATUP_UPSAMPLE_ISA(NAME, ATTR)                                                                           \
  template <typename T>                                                                                           \
  ATTR void upsample_plane_##NAME(const T* x, T* out, T* tmp, int64_t h, int64_t w, int64_t p, const T* we,       \
                                  const T* wo) {                                                                  \
    upsample_plane_impl<T>(x, out, tmp, h, w, p, we, wo);                                                         \
  }                                                                                                               \
  template <typename T>                                                                                           \
  ATTR void upsample_plane_backward_##NAME(const T* g, T* dx, T* t, int64_t h, int64_t w, int64_t p, const T* we, \
                                           const T* wo, const std::vector<RowTerm<T>>* rows) {                    \
    upsample_plane_backward_impl<T>(g, dx, t, h, w, p, we, wo, rows);                                             \
  }
FEATUP_UPSAMPLE_ISA(base, )
#if FEATUP_UP_X86
FEATUP_UPSAMPLE_ISA(avx2, __attribute__((target("avx2,fma"))))
FEATUP_UPSAMPLE_ISA(avx512,
                    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"))))
#endif
#undef FEATUP_UPSAMPLE_ISA

template <typename T>
void upsample_plane(const T* x, T* out, T* tmp, int64_t h, int64_t w, int64_t p, const T* we, const T* wo) {
#if FEATUP_UP_X86
  switch (cpu_isa_level()) {
    case 2:
      return upsample_plane_avx512<T>(x, out, tmp, h, w, p, we, wo);
    case 1:
      return upsample_plane_avx2<T>(x, out, tmp, h, w, p, we, wo);
    default:
      break;
  }
#endif
  upsample_plane_base<T>(x, out, tmp, h, w, p, we, wo);
}

template <typename T>
void upsample_plane_backward(const T* g, T* dx, T* t, int64_t h, int64_t w, int64_t p, const T* we, const T* wo,
                             const std::vector<RowTerm<T>>* rows) {
#if FEATUP_UP_X86
  switch (cpu_isa_level()) {
    case 2:
      return upsample_plane_backward_avx512<T>(g, dx, t, h, w, p, we, wo, rows);
    case 1:
      return upsample_plane_backward_avx2<T>(g, dx, t, h, w, p, we, wo, rows);
    default:
      break;
  }
#endif
  upsample_plane_backward_base<T>(g, dx, t, h, w, p, we, wo, rows);
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
    const auto rows = backward_rows<scalar_t>(h, pad, we, wo);
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> t(static_cast<size_t>(2 * w));
      for (int64_t plane = begin; plane < end; ++plane)
        upsample_plane_backward<scalar_t>(g + plane * Hp * Wp, o + plane * h * w, t.data(), h, w, pad, we, wo,
                                          rows.data());
    });
  });
  return dx;
}

}  // namespace featup
