// CPU kernels for the adaptive convolution primitives.
//
// Layout: NCHW input, tap-major kernel [B, k*k, H, W]. Work is split over (batch, output row) with
// at::parallel_for (ATen's OpenMP backend, so torch.set_num_threads applies). Inside a row the loops are
// register-blocked: a block of kCB channels x kWB columns of accumulators stays in vector registers while
// all k*k taps are applied, so each loaded kernel value is reused across kCB channels and each loaded
// input vector feeds one FMA per accumulator. Accumulation is in at::opmath_type (float for half/bf16).
//
// The row functions are compiled for several instruction sets (GCC target_clones: x86-64-v4 = AVX-512,
// x86-64-v3 = AVX2+FMA, baseline) and the best one is picked at load time, so one binary runs anywhere.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "pytorch_cpp_helper.hpp"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FEATUP_NO_TARGET_CLONES)
#define FEATUP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FEATUP_CLONES
#endif

#if defined(__GNUC__)
#define FEATUP_INLINE inline __attribute__((always_inline))
#define FEATUP_RESTRICT __restrict__
#else
#define FEATUP_INLINE inline
#define FEATUP_RESTRICT
#endif

namespace featup {
namespace {

constexpr int kCB = 4;   // channels per register block (forward)
constexpr int kWB = 32;  // columns per register block
constexpr int kJB = 4;   // taps of one kernel row per register block (correlation)

// ---------------------------------------------------------------------------------------------
// adaptive conv forward: out[c, h, w] = sum_{i,j} kt[i*k+j, h, w] * x[c, h+i, w+j]
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, int CB, bool FULL>
FEATUP_INLINE void fwd_block(const scalar_t* FEATUP_RESTRICT x, int64_t x_cs, int64_t x_rs,
                             const scalar_t* FEATUP_RESTRICT kt, int64_t k_ts, scalar_t* FEATUP_RESTRICT out,
                             int64_t o_cs, int k, int n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int nw = FULL ? kWB : n;
  acc_t acc[CB][kWB];
  for (int cb = 0; cb < CB; ++cb)
    for (int w = 0; w < kWB; ++w) acc[cb][w] = acc_t(0);
  for (int i = 0; i < k; ++i) {
    for (int j = 0; j < k; ++j) {
      const scalar_t* FEATUP_RESTRICT kr = kt + (i * k + j) * k_ts;
      const scalar_t* FEATUP_RESTRICT xr = x + i * x_rs + j;
      for (int cb = 0; cb < CB; ++cb) {
        const scalar_t* FEATUP_RESTRICT xc = xr + cb * x_cs;
        if (FULL) {
          for (int w = 0; w < kWB; ++w) acc[cb][w] += static_cast<acc_t>(kr[w]) * static_cast<acc_t>(xc[w]);
        } else {
          for (int w = 0; w < nw; ++w) acc[cb][w] += static_cast<acc_t>(kr[w]) * static_cast<acc_t>(xc[w]);
        }
      }
    }
  }
  for (int cb = 0; cb < CB; ++cb)
    for (int w = 0; w < nw; ++w) out[cb * o_cs + w] = static_cast<scalar_t>(acc[cb][w]);
}

template <typename scalar_t, int CB>
FEATUP_INLINE void fwd_channels(const scalar_t* x, const scalar_t* kt, scalar_t* out, int64_t W, int64_t x_cs,
                                int64_t x_rs, int64_t hw, int k) {
  int64_t w = 0;
  for (; w + kWB <= W; w += kWB) fwd_block<scalar_t, CB, true>(x + w, x_cs, x_rs, kt + w, hw, out + w, hw, k, kWB);
  if (w < W) fwd_block<scalar_t, CB, false>(x + w, x_cs, x_rs, kt + w, hw, out + w, hw, k, static_cast<int>(W - w));
}

// One output row (fixed b, h) for C channels. Pointers are at (b, c0, h, 0).
template <typename scalar_t>
FEATUP_INLINE void fwd_row_impl(const scalar_t* x, const scalar_t* kt, scalar_t* out, int64_t C, int64_t H,
                                int64_t W, int64_t Hp, int64_t Wp, int k) {
  const int64_t x_cs = Hp * Wp, hw = H * W;
  int64_t c = 0;
  for (; c + kCB <= C; c += kCB) fwd_channels<scalar_t, kCB>(x + c * x_cs, kt, out + c * hw, W, x_cs, Wp, hw, k);
  for (; c < C; ++c) fwd_channels<scalar_t, 1>(x + c * x_cs, kt, out + c * hw, W, x_cs, Wp, hw, k);
}

// ---------------------------------------------------------------------------------------------
// local correlation: out[i*k+j, h, w] = sum_c g[c, h, w] * x[c, h+i, w+j]
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, int JB, bool FULL>
FEATUP_INLINE void corr_block(const scalar_t* FEATUP_RESTRICT g, int64_t g_cs, const scalar_t* FEATUP_RESTRICT x,
                              int64_t x_cs, scalar_t* FEATUP_RESTRICT out, int64_t o_ts, int64_t C, int n,
                              bool accumulate) {
  using acc_t = at::opmath_type<scalar_t>;
  const int nw = FULL ? kWB : n;
  acc_t acc[JB][kWB];
  for (int jj = 0; jj < JB; ++jj)
    for (int w = 0; w < kWB; ++w) acc[jj][w] = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* FEATUP_RESTRICT gc = g + c * g_cs;
    const scalar_t* FEATUP_RESTRICT xc = x + c * x_cs;
    for (int jj = 0; jj < JB; ++jj) {
      if (FULL) {
        for (int w = 0; w < kWB; ++w) acc[jj][w] += static_cast<acc_t>(gc[w]) * static_cast<acc_t>(xc[jj + w]);
      } else {
        for (int w = 0; w < nw; ++w) acc[jj][w] += static_cast<acc_t>(gc[w]) * static_cast<acc_t>(xc[jj + w]);
      }
    }
  }
  if (accumulate) {
    for (int jj = 0; jj < JB; ++jj)
      for (int w = 0; w < nw; ++w)
        out[jj * o_ts + w] = static_cast<scalar_t>(static_cast<acc_t>(out[jj * o_ts + w]) + acc[jj][w]);
  } else {
    for (int jj = 0; jj < JB; ++jj)
      for (int w = 0; w < nw; ++w) out[jj * o_ts + w] = static_cast<scalar_t>(acc[jj][w]);
  }
}

template <typename scalar_t, int JB>
FEATUP_INLINE void corr_taps(const scalar_t* g, int64_t g_cs, const scalar_t* x, int64_t x_cs, scalar_t* out,
                             int64_t o_ts, int64_t C, int64_t W, bool acc) {
  int64_t w = 0;
  for (; w + kWB <= W; w += kWB) corr_block<scalar_t, JB, true>(g + w, g_cs, x + w, x_cs, out + w, o_ts, C, kWB, acc);
  if (w < W)
    corr_block<scalar_t, JB, false>(g + w, g_cs, x + w, x_cs, out + w, o_ts, C, static_cast<int>(W - w), acc);
}

// One row (fixed b, h) of all k*k correlation maps summed over C channels (added to out if acc).
// g at (b, c0, h, 0), x at (b, c0, 0, 0), out at (b, 0, h, 0).
template <typename scalar_t>
FEATUP_INLINE void corr_row_impl(const scalar_t* g, const scalar_t* x, scalar_t* out, int64_t C, int64_t H,
                                 int64_t W, int64_t Hp, int64_t Wp, int64_t h, int k, bool acc) {
  const int64_t hw = H * W, x_cs = Hp * Wp;
  for (int i = 0; i < k; ++i) {
    const scalar_t* xr = x + (h + i) * Wp;
    for (int j0 = 0; j0 < k; j0 += kJB) {
      const int nj = std::min(kJB, k - j0);
      scalar_t* o = out + (i * k + j0) * hw;
      const scalar_t* xs = xr + j0;
      switch (nj) {
        case 4: corr_taps<scalar_t, 4>(g, hw, xs, x_cs, o, hw, C, W, acc); break;
        case 3: corr_taps<scalar_t, 3>(g, hw, xs, x_cs, o, hw, C, W, acc); break;
        case 2: corr_taps<scalar_t, 2>(g, hw, xs, x_cs, o, hw, C, W, acc); break;
        default: corr_taps<scalar_t, 1>(g, hw, xs, x_cs, o, hw, C, W, acc); break;
      }
    }
  }
}

// Non-template entry points, one per dtype, each compiled for several ISAs (see FEATUP_CLONES).
#define FEATUP_DEFINE_ROWS(T, SUFFIX)                                                                        \
  FEATUP_CLONES void fwd_row_##SUFFIX(const T* x, const T* kt, T* out, int64_t C, int64_t H, int64_t W,     \
                                      int64_t Hp, int64_t Wp, int k) {                                       \
    fwd_row_impl<T>(x, kt, out, C, H, W, Hp, Wp, k);                                                         \
  }                                                                                                          \
  FEATUP_CLONES void corr_row_##SUFFIX(const T* g, const T* x, T* out, int64_t C, int64_t H, int64_t W,     \
                                       int64_t Hp, int64_t Wp, int64_t h, int k, bool acc) {                 \
    corr_row_impl<T>(g, x, out, C, H, W, Hp, Wp, h, k, acc);                                                 \
  }                                                                                                          \
  inline void fwd_row(const T* x, const T* kt, T* out, int64_t C, int64_t H, int64_t W, int64_t Hp,         \
                      int64_t Wp, int k) {                                                                   \
    fwd_row_##SUFFIX(x, kt, out, C, H, W, Hp, Wp, k);                                                        \
  }                                                                                                          \
  inline void corr_row(const T* g, const T* x, T* out, int64_t C, int64_t H, int64_t W, int64_t Hp,         \
                       int64_t Wp, int64_t h, int k, bool acc) {                                             \
    corr_row_##SUFFIX(g, x, out, C, H, W, Hp, Wp, h, k, acc);                                                \
  }

FEATUP_DEFINE_ROWS(float, f32)
FEATUP_DEFINE_ROWS(double, f64)
FEATUP_DEFINE_ROWS(at::BFloat16, bf16)
FEATUP_DEFINE_ROWS(at::Half, f16)
#undef FEATUP_DEFINE_ROWS

// Cache tiling. A task covers a tile of channels x output rows sized so that its input rows
// (channels x (rows + k - 1) x Wp) and kernel rows (k*k x rows x W) stay in a ~1 MiB L2 together.
struct Tiles {
  int64_t ct, ht;  // channels and rows per tile
};

Tiles choose_tiles(int64_t C, int64_t H, int64_t W, int64_t Wp, int k, int64_t elem) {
  const int64_t budget = 640 * 1024;  // bytes, leaves room for outputs and the other hyperthread
  int64_t ht = std::max<int64_t>(1, std::min<int64_t>(H, 8));
  int64_t ct = std::min<int64_t>(C, 64);
  auto bytes = [&](int64_t c, int64_t h) { return elem * (c * (h + k - 1) * Wp + k * k * h * W + c * h * W); };
  while (ct > kCB && bytes(ct, ht) > budget) ct = std::max<int64_t>(kCB, ct / 2);
  while (ht > 1 && bytes(ct, ht) > budget) ht = std::max<int64_t>(1, ht / 2);
  return {ct, ht};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

at::Tensor adaptive_conv_forward_cpu(const at::Tensor& input, const at::Tensor& kernel, int64_t k) {
  FEATUP_CHECK_CPU_INPUT(input);
  FEATUP_CHECK_CPU_INPUT(kernel);
  const int64_t B = input.size(0), C = input.size(1), Hp = input.size(2), Wp = input.size(3);
  const int64_t H = kernel.size(2), W = kernel.size(3);
  auto out = at::empty({B, C, H, W}, input.options());
  const Tiles t = choose_tiles(C, H, W, Wp, static_cast<int>(k), input.element_size());
  const int64_t nct = ceil_div(C, t.ct), nht = ceil_div(H, t.ht);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "adaptive_conv_forward_cpu", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* kt = kernel.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // Tasks ordered (b, row tile, channel tile): neighbouring tasks share kernel rows.
    at::parallel_for(0, B * nht * nct, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / (nht * nct), th = (task / nct) % nht, tc = task % nct;
        const int64_t c0 = tc * t.ct, nc = std::min(t.ct, C - c0);
        const int64_t h0 = th * t.ht, h1 = std::min(H, h0 + t.ht);
        for (int64_t h = h0; h < h1; ++h)
          fwd_row(x + ((b * C + c0) * Hp + h) * Wp, kt + b * k * k * H * W + h * W, o + ((b * C + c0) * H + h) * W,
                  nc, H, W, Hp, Wp, static_cast<int>(k));
      }
    });
  });
  return out;
}

at::Tensor local_correlation_forward_cpu(const at::Tensor& center, const at::Tensor& padded, int64_t k) {
  FEATUP_CHECK_CPU_INPUT(center);
  FEATUP_CHECK_CPU_INPUT(padded);
  const int64_t B = center.size(0), C = center.size(1), H = center.size(2), W = center.size(3);
  const int64_t Hp = padded.size(2), Wp = padded.size(3);
  auto out = at::empty({B, k * k, H, W}, center.options());
  const Tiles t = choose_tiles(C, H, W, Wp, static_cast<int>(k), center.element_size());
  const int64_t nht = ceil_div(H, t.ht);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, center.scalar_type(), "local_correlation_forward_cpu", [&] {
    const scalar_t* g = center.const_data_ptr<scalar_t>();
    const scalar_t* x = padded.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // A task owns a tile of output rows and reduces over all channels, one channel tile at a time.
    at::parallel_for(0, B * nht, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nht, h0 = (task % nht) * t.ht, h1 = std::min(H, h0 + t.ht);
        for (int64_t c0 = 0; c0 < C; c0 += t.ct) {
          const int64_t nc = std::min(t.ct, C - c0);
          for (int64_t h = h0; h < h1; ++h)
            corr_row(g + ((b * C + c0) * H + h) * W, x + (b * C + c0) * Hp * Wp, o + b * k * k * H * W + h * W, nc, H,
                     W, Hp, Wp, h, static_cast<int>(k), c0 > 0);
        }
      }
    });
  });
  return out;
}

}  // namespace featup
