// CPU gather / scatter of one tile of pixel-adaptive convolution columns (see common/pac_common.hpp).
//
// The loops walk output rows in segments so that the source column index is affine in the output column
// (ix = ox * sw + offset) and the valid range of ox for a tap is computed once, leaving branch-free inner loops
// that the compiler vectorises for stride 1. Parallel work is split so that no two threads write the same
// element: gather over the C*T rows of the tile, input-gradient scatter over (image, channel), kernel gradient
// over (image, tap).
#include <ATen/Parallel.h>

#include <algorithm>

#include "pac_common.hpp"
#include "pytorch_cpp_helper.hpp"

namespace featup {
namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Output positions o in [0, out) whose source o * s + off lies in [0, in): returns [lo, hi).
inline void valid_range(int64_t off, int64_t s, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, floor_div(-off + s - 1, s));
  hi = std::min<int64_t>(out, floor_div(in - 1 - off, s) + 1);
  if (hi < lo) hi = lo;
}

// Calls fn(j0, iy, ox_begin, ox_end, jx) for each output-row segment of pixels [p0, p0+n) of one image: the
// tile columns j0 + (ox - ox_first) with ox in [ox_begin, ox_end) have valid sources in row iy, at column
// ox * sw + offx. Columns of the segment outside that range (or all of them when iy is invalid) are passed to
// zero(j, count).
template <typename Fn, typename Zero>
inline void for_segments(const PacGeom& g, int64_t p0, int64_t n, int64_t ty, int64_t tx, Fn&& fn, Zero&& zero) {
  const int64_t offy = -g.ph + ty * g.dh, offx = -g.pw + tx * g.dw;
  int64_t xlo, xhi;
  valid_range(offx, g.sw, g.W, g.Wo, xlo, xhi);
  int64_t p = p0, j = 0;
  const int64_t pend = p0 + n;
  while (p < pend) {
    const int64_t oy = p / g.Wo, ox0 = p % g.Wo;
    const int64_t ox1 = std::min(g.Wo, ox0 + (pend - p));
    const int64_t iy = oy * g.sh + offy;
    if (iy < 0 || iy >= g.H) {
      zero(j, ox1 - ox0);
    } else {
      const int64_t a = std::max(ox0, xlo), e = std::min(ox1, xhi);
      if (a >= e) {
        zero(j, ox1 - ox0);
      } else {
        if (a > ox0) zero(j, a - ox0);
        fn(j + (a - ox0), iy, a, e, offx);
        if (ox1 > e) zero(j + (e - ox0), ox1 - e);
      }
    }
    j += ox1 - ox0;
    p += ox1 - ox0;
  }
}

}  // namespace

void pac_gather_cpu(const at::Tensor& input, const at::Tensor& kernel, at::Tensor& col, const PacGeom& g,
                    const PacTile& tile) {
  FEATUP_CHECK_CPU_INPUT(input);
  FEATUP_CHECK_CPU_INPUT(kernel);
  FEATUP_CHECK_CPU_INPUT(col);
  const int64_t T = g.taps(), P = g.pixels(), HW = g.H * g.W, ncol = tile.cols();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pac_gather_cpu", [&] {
    const scalar_t* v = input.const_data_ptr<scalar_t>();
    const scalar_t* K = kernel.const_data_ptr<scalar_t>();
    scalar_t* out = col.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.C * T, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r / T, t = r % T, ty = t / g.kw, tx = t % g.kw;
        for (int64_t ib = 0; ib < tile.nb; ++ib) {
          const int64_t b = tile.b0 + ib;
          const scalar_t* vb = v + (b * g.C + c) * HW;
          const scalar_t* kb = K + (b * T + t) * P + tile.p0;
          scalar_t* o = out + r * ncol + ib * tile.n;
          for_segments(
              g, tile.p0, tile.n, ty, tx,
              [&](int64_t j, int64_t iy, int64_t a, int64_t e, int64_t offx) {
                const scalar_t* vrow = vb + iy * g.W + offx;
                const int64_t sw = g.sw;
                for (int64_t ox = a; ox < e; ++ox, ++j) o[j] = kb[j] * vrow[ox * sw];
              },
              [&](int64_t j, int64_t cnt) { std::fill(o + j, o + j + cnt, scalar_t(0)); });
        }
      }
    });
  });
}

void pac_scatter_cpu(const at::Tensor& dcol, const at::Tensor& input, const at::Tensor& kernel, at::Tensor& grad_input,
                     at::Tensor& grad_kernel, const PacGeom& g, const PacTile& tile) {
  FEATUP_CHECK_CPU_INPUT(dcol);
  FEATUP_CHECK_CPU_INPUT(input);
  FEATUP_CHECK_CPU_INPUT(kernel);
  const int64_t T = g.taps(), P = g.pixels(), HW = g.H * g.W, ncol = tile.cols();
  auto noop = [](int64_t, int64_t) {};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pac_scatter_cpu", [&] {
    const scalar_t* d = dcol.const_data_ptr<scalar_t>();
    const scalar_t* v = input.const_data_ptr<scalar_t>();
    const scalar_t* K = kernel.const_data_ptr<scalar_t>();
    if (grad_input.defined()) {
      FEATUP_CHECK_CPU_INPUT(grad_input);
      scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
      // Each task owns one (image, channel) plane of grad_input: no two tasks write the same element.
      at::parallel_for(0, tile.nb * g.C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t ib = task / g.C, c = task % g.C, b = tile.b0 + ib;
          scalar_t* gb = gi + (b * g.C + c) * HW;
          for (int64_t t = 0; t < T; ++t) {
            const scalar_t* kb = K + (b * T + t) * P + tile.p0;
            const scalar_t* db = d + (c * T + t) * ncol + ib * tile.n;
            for_segments(
                g, tile.p0, tile.n, t / g.kw, t % g.kw,
                [&](int64_t j, int64_t iy, int64_t a, int64_t e, int64_t offx) {
                  scalar_t* grow = gb + iy * g.W + offx;
                  const int64_t sw = g.sw;
                  for (int64_t ox = a; ox < e; ++ox, ++j) grow[ox * sw] += kb[j] * db[j];
                },
                noop);
          }
        }
      });
    }
    if (grad_kernel.defined()) {
      FEATUP_CHECK_CPU_INPUT(grad_kernel);
      scalar_t* gk = grad_kernel.mutable_data_ptr<scalar_t>();
      // Each task owns one (image, tap) row of grad_kernel and reduces over the channels.
      at::parallel_for(0, tile.nb * T, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t ib = task / T, t = task % T, b = tile.b0 + ib;
          scalar_t* o = gk + (b * T + t) * P + tile.p0;
          std::fill(o, o + tile.n, scalar_t(0));
          for (int64_t c = 0; c < g.C; ++c) {
            const scalar_t* vb = v + (b * g.C + c) * HW;
            const scalar_t* db = d + (c * T + t) * ncol + ib * tile.n;
            for_segments(
                g, tile.p0, tile.n, t / g.kw, t % g.kw,
                [&](int64_t j, int64_t iy, int64_t a, int64_t e, int64_t offx) {
                  const scalar_t* vrow = vb + iy * g.W + offx;
                  const int64_t sw = g.sw;
                  for (int64_t ox = a; ox < e; ++ox, ++j) o[j] += db[j] * vrow[ox * sw];
                },
                noop);
          }
        }
      });
    }
  });
}

}  // namespace featup
