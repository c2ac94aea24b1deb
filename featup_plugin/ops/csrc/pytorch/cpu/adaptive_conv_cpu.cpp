// CPU kernels for the adaptive convolution primitives.
//
// Layout: NCHW input, tap-major kernel [B, k*k, H, W], read with its strides: contiguous or pixel-major (the taps of a
// pixel adjacent, FeatUp's [B, H, W, k, k] filters; see KernelStrides), so that layout needs no transposed copy. Work
// is split over (batch, channel / row tiles) with at::parallel_for (ATen's OpenMP backend, so torch.set_num_threads
// applies). The loops are register-blocked. Forward: CB channels x RB output rows x one vector of columns of
// accumulators; each loaded input vector feeds the RB rows that use it and each kernel vector the CB channels (loads
// per FMA 1/RB + 1/CB instead of 1 + 1/CB). Correlation: RB output rows x IB tap rows x JB taps x one vector; each
// input vector feeds every (output row, tap row) pair of the block that reads it (maps narrower than a vector: kJB taps
// x two vectors, scalar tail). Accumulation is in at::opmath_type (float for half/bf16).
//
// The kernels are compiled for several instruction sets (AVX-512, AVX2+FMA, baseline), each with block sizes that
// fit its vector registers, and the best one the CPU supports is picked at run time.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pytorch_cpp_helper.hpp"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FEATUP_NO_ISA_DISPATCH)
#define FEATUP_X86_DISPATCH 1
#define FEATUP_TARGET(arch) __attribute__((target(arch)))
#else
#define FEATUP_X86_DISPATCH 0
#define FEATUP_TARGET(arch)
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

constexpr int kJB = 4;  // taps of one kernel row per register block (one-row correlation, narrow maps)
// The most channels of one correlation task's channel tile (its packed centre vectors; see corr_tiles).
constexpr int64_t kTileC = 64;
// Columns per register block: two vectors, so kCB (or kJB) x 2 = 8 vector accumulators.
template <typename scalar_t, int VBYTES>
constexpr int block_width() {
  return 2 * VBYTES / static_cast<int>(sizeof(at::opmath_type<scalar_t>));
}

// A SIMD vector of the accumulation type (GCC/Clang vector extension): VBYTES = 64 maps to one zmm register
// under AVX-512, 32 to a ymm under AVX2, 16 to an xmm on the baseline. Arrays of these with compile-time
// indices stay in registers, which plain float arrays did not reliably do.
template <typename scalar_t, int VBYTES>
struct Simd {
  using acc_t = at::opmath_type<scalar_t>;
  typedef acc_t vec __attribute__((vector_size(VBYTES)));
  static constexpr int lanes = VBYTES / static_cast<int>(sizeof(acc_t));

  static FEATUP_INLINE vec load(const scalar_t* p) {
    vec v;
    if constexpr (std::is_same<scalar_t, acc_t>::value) {
      std::memcpy(&v, p, sizeof(v));
    } else {
      for (int l = 0; l < lanes; ++l) v[l] = static_cast<acc_t>(p[l]);
    }
    return v;
  }
  static FEATUP_INLINE void store(scalar_t* p, vec v) {
    if constexpr (std::is_same<scalar_t, acc_t>::value) {
      std::memcpy(p, &v, sizeof(v));
    } else {
      for (int l = 0; l < lanes; ++l) p[l] = static_cast<scalar_t>(v[l]);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// adaptive conv forward: out[c, h, w] = sum_{i,j} kt[i*k+j, h, w] * x[c, h+i, w+j]
// ---------------------------------------------------------------------------------------------
// Scalar loops for rows narrower than one vector (n < WB columns); the others use fwd_tile_simd below.
template <typename scalar_t, int WB, int CB>
FEATUP_INLINE void fwd_block_tail(const scalar_t* FEATUP_RESTRICT x, int64_t x_cs, int64_t x_rs,
                                  const scalar_t* FEATUP_RESTRICT kt, int64_t k_ts, int64_t k_cs,
                                  scalar_t* FEATUP_RESTRICT out, int64_t o_cs, int k, int n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t acc[CB][WB];
  for (int cb = 0; cb < CB; ++cb)
    for (int w = 0; w < WB; ++w) acc[cb][w] = acc_t(0);
  for (int i = 0; i < k; ++i) {
    for (int j = 0; j < k; ++j) {
      const scalar_t* FEATUP_RESTRICT kr = kt + (i * k + j) * k_ts;
      const scalar_t* FEATUP_RESTRICT xr = x + i * x_rs + j;
      for (int cb = 0; cb < CB; ++cb) {
        const scalar_t* FEATUP_RESTRICT xc = xr + cb * x_cs;
        for (int w = 0; w < n; ++w) acc[cb][w] += static_cast<acc_t>(kr[w * k_cs]) * static_cast<acc_t>(xc[w]);
      }
    }
  }
  for (int cb = 0; cb < CB; ++cb)
    for (int w = 0; w < n; ++w) out[cb * o_cs + w] = static_cast<scalar_t>(acc[cb][w]);
}

// RB output rows x CB channels x one vector of columns, acc[r][cb] in registers. For input row y (relative to the
// first output row) and column shift j the CB input vectors are loaded once and used by every output row r whose
// tap row i = y - r is in [0, k); each kernel vector is used by the CB channels. Each accumulator still sums its
// taps in the order i * k + j (y ascending gives i ascending), as the plain formulation does.
// KC > 0: k known at compile time (the loops unroll fully, the row tests fold away); KC = 0: k at run time.
template <typename scalar_t, int VBYTES, int CB, int RB, int KC = 0>
FEATUP_INLINE void fwd_tile_simd(const scalar_t* FEATUP_RESTRICT x, int64_t x_cs, int64_t x_rs,
                                 const scalar_t* FEATUP_RESTRICT kt, int64_t k_ts, int64_t k_rs,
                                 scalar_t* FEATUP_RESTRICT out, int64_t o_cs, int64_t o_rs, int k_rt) {
  const int k = KC > 0 ? KC : k_rt;
  using S = Simd<scalar_t, VBYTES>;
  using vec = typename S::vec;
  vec acc[RB][CB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int cb = 0; cb < CB; ++cb) acc[r][cb] = vec{};
#pragma GCC unroll 16
  for (int y = 0; y < RB + k - 1; ++y) {
    const scalar_t* xr = x + y * x_rs;
#pragma GCC unroll 8
    for (int j = 0; j < k; ++j) {
      vec xv[CB];
#pragma GCC unroll 8
      for (int cb = 0; cb < CB; ++cb) xv[cb] = S::load(xr + cb * x_cs + j);
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) {
        const int i = y - r;
        if (i < 0 || i >= k) continue;
        const vec kv = S::load(kt + (i * k + j) * k_ts + r * k_rs);
#pragma GCC unroll 8
        for (int cb = 0; cb < CB; ++cb) acc[r][cb] += kv * xv[cb];
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int cb = 0; cb < CB; ++cb) S::store(out + cb * o_cs + r * o_rs, acc[r][cb]);
}

// Copies the k*k x rb kernel vectors of one column block into kp, contiguous (vector (t, r) at (t * rb + r) * L):
// for a contiguous kernel at H*W a multiple of 1024 (224^2) the taps lie a multiple of 4 KiB apart and all fall
// into one L1 set, evicting each other. kt at the block's first row and column; ts / rs / cs: the kernel's tap,
// row and column strides. Column stride 1 (contiguous): one memcpy per vector. Otherwise (pixel-major, the taps of
// a pixel adjacent) a gather, pixel by pixel so that the reads are contiguous. The same values either way.
template <typename scalar_t, int L>
FEATUP_INLINE void pack_kernel(const scalar_t* kt, int64_t ts, int64_t rs, int64_t cs, int taps, int rb,
                               scalar_t* FEATUP_RESTRICT kp) {
  if (cs == 1) {
    for (int t = 0; t < taps; ++t)
      for (int r = 0; r < rb; ++r) std::memcpy(kp + (t * rb + r) * L, kt + t * ts + r * rs, L * sizeof(scalar_t));
    return;
  }
  for (int r = 0; r < rb; ++r)
    for (int l = 0; l < L; ++l) {
      const scalar_t* FEATUP_RESTRICT src = kt + r * rs + l * cs;
      scalar_t* FEATUP_RESTRICT dst = kp + r * L + l;
      for (int t = 0; t < taps; ++t) dst[t * rb * L] = src[t * ts];
    }
}

// Output rows [0, nrows) of C channels; pointers at (b, c0, h0, 0). Column blocks are one vector wide; when W is
// not a multiple of it the last block overlaps the previous one (its columns are recomputed identically), so only
// rows narrower than one vector take the scalar loops. Column blocks, then row groups of RB, then channel groups:
// the group's k*k*RB kernel vectors (packed) stay in L1 while the tile's channels pass through.
template <typename scalar_t, int VBYTES, int CB, int RB>
FEATUP_INLINE void fwd_rows_impl(const scalar_t* x, const scalar_t* kt, KernelStrides ks, scalar_t* out, int64_t C,
                                 int64_t nrows, int64_t H, int64_t W, int64_t Hp, int64_t Wp, int k) {
  constexpr int L = Simd<scalar_t, VBYTES>::lanes;
  const int64_t x_cs = Hp * Wp, hw = H * W;
  if (W < L) {
    for (int64_t r = 0; r < nrows; ++r) {
      int64_t c = 0;
      for (; c + CB <= C; c += CB)
        fwd_block_tail<scalar_t, L, CB>(x + c * x_cs + r * Wp, x_cs, Wp, kt + r * ks.r, ks.t, ks.c,
                                        out + c * hw + r * W, hw, k, static_cast<int>(W));
      for (; c < C; ++c)
        fwd_block_tail<scalar_t, L, 1>(x + c * x_cs + r * Wp, x_cs, Wp, kt + r * ks.r, ks.t, ks.c, out + c * hw + r * W,
                                       hw, k, static_cast<int>(W));
    }
    return;
  }
  const int taps = k * k;
  std::vector<scalar_t> kbuf(static_cast<size_t>(taps * RB * L) + 64 / sizeof(scalar_t));
  scalar_t* kp = kbuf.data();
  while (reinterpret_cast<uintptr_t>(kp) % 64) ++kp;  // one cache line per vector
  for (int64_t w0 = 0; w0 < W; w0 += L) {
    const int64_t w = std::min<int64_t>(w0, W - L);
    int64_t r = 0;
    for (; r + RB <= nrows; r += RB) {
      pack_kernel<scalar_t, L>(kt + r * ks.r + w * ks.c, ks.t, ks.r, ks.c, taps, RB, kp);
      const scalar_t* xb = x + r * Wp + w;
      scalar_t* ob = out + r * W + w;
      int64_t c = 0;
      if (k == 3) {
        for (; c + CB <= C; c += CB)
          fwd_tile_simd<scalar_t, VBYTES, CB, RB, 3>(xb + c * x_cs, x_cs, Wp, kp, RB * L, L, ob + c * hw, hw, W, k);
      } else if (k == 7) {
        for (; c + CB <= C; c += CB)
          fwd_tile_simd<scalar_t, VBYTES, CB, RB, 7>(xb + c * x_cs, x_cs, Wp, kp, RB * L, L, ob + c * hw, hw, W, k);
      }
      for (; c + CB <= C; c += CB)
        fwd_tile_simd<scalar_t, VBYTES, CB, RB>(xb + c * x_cs, x_cs, Wp, kp, RB * L, L, ob + c * hw, hw, W, k);
      for (; c < C; ++c)
        fwd_tile_simd<scalar_t, VBYTES, 1, RB>(xb + c * x_cs, x_cs, Wp, kp, RB * L, L, ob + c * hw, hw, W, k);
    }
    for (; r < nrows; ++r) {
      pack_kernel<scalar_t, L>(kt + r * ks.r + w * ks.c, ks.t, ks.r, ks.c, taps, 1, kp);
      const scalar_t* xb = x + r * Wp + w;
      scalar_t* ob = out + r * W + w;
      int64_t c = 0;
      for (; c + CB <= C; c += CB)
        fwd_tile_simd<scalar_t, VBYTES, CB, 1>(xb + c * x_cs, x_cs, Wp, kp, L, L, ob + c * hw, hw, W, k);
      for (; c < C; ++c)
        fwd_tile_simd<scalar_t, VBYTES, 1, 1>(xb + c * x_cs, x_cs, Wp, kp, L, L, ob + c * hw, hw, W, k);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// local correlation: out[i*k+j, h, w] = sum_c g[c, h, w] * x[c, h+i, w+j]
// ---------------------------------------------------------------------------------------------
// Scalar loops for the last, partial column block (n < WB columns); full blocks use corr_block_simd below.
template <typename scalar_t, int WB, int JB>
FEATUP_INLINE void corr_block_tail(const scalar_t* FEATUP_RESTRICT g, int64_t g_cs, const scalar_t* FEATUP_RESTRICT x,
                                   int64_t x_cs, scalar_t* FEATUP_RESTRICT out, int64_t o_ts, int64_t C, int n,
                                   bool accumulate) {
  using acc_t = at::opmath_type<scalar_t>;
  const int nw = n;
  acc_t acc[JB][WB];
  for (int jj = 0; jj < JB; ++jj)
    for (int w = 0; w < WB; ++w) acc[jj][w] = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* FEATUP_RESTRICT gc = g + c * g_cs;
    const scalar_t* FEATUP_RESTRICT xc = x + c * x_cs;
    for (int jj = 0; jj < JB; ++jj)
      for (int w = 0; w < nw; ++w) acc[jj][w] += static_cast<acc_t>(gc[w]) * static_cast<acc_t>(xc[jj + w]);
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

template <typename scalar_t, int VBYTES, int JB>
FEATUP_INLINE void corr_block_simd(const scalar_t* FEATUP_RESTRICT g, int64_t g_cs, const scalar_t* FEATUP_RESTRICT x,
                                   int64_t x_cs, scalar_t* FEATUP_RESTRICT out, int64_t o_ts, int64_t C,
                                   bool accumulate) {
  using S = Simd<scalar_t, VBYTES>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  vec acc[JB][2];
  for (int jj = 0; jj < JB; ++jj) acc[jj][0] = acc[jj][1] = vec{};
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* gc = g + c * g_cs;
    const scalar_t* xc = x + c * x_cs;
    const vec g0 = S::load(gc), g1 = S::load(gc + L);
    for (int jj = 0; jj < JB; ++jj) {
      acc[jj][0] += g0 * S::load(xc + jj);
      acc[jj][1] += g1 * S::load(xc + jj + L);
    }
  }
  for (int jj = 0; jj < JB; ++jj) {
    scalar_t* o = out + jj * o_ts;
    if (accumulate) {
      acc[jj][0] += S::load(o);
      acc[jj][1] += S::load(o + L);
    }
    S::store(o, acc[jj][0]);
    S::store(o + L, acc[jj][1]);
  }
}

template <typename scalar_t, int VBYTES, int JB>
FEATUP_INLINE void corr_taps(const scalar_t* g, int64_t g_cs, const scalar_t* x, int64_t x_cs, scalar_t* out,
                             int64_t o_ts, int64_t C, int n, bool acc) {
  constexpr int WB = block_width<scalar_t, VBYTES>();
  if (n == WB)
    corr_block_simd<scalar_t, VBYTES, JB>(g, g_cs, x, x_cs, out, o_ts, C, acc);
  else
    corr_block_tail<scalar_t, WB, JB>(g, g_cs, x, x_cs, out, o_ts, C, n, acc);
}

// One row (fixed b, h) of all k*k correlation maps summed over C channels (added to out if acc).
// g at (b, c0, h, 0), x at (b, c0, 0, 0), out at (b, 0, h, 0). Column blocks are the outer loop: the tile's
// center vectors and its k input rows for one block stay in L1 across all k*k taps.
template <typename scalar_t, int VBYTES>
FEATUP_INLINE void corr_row_impl(const scalar_t* g, const scalar_t* x, scalar_t* out, int64_t C, int64_t H, int64_t W,
                                 int64_t Hp, int64_t Wp, int64_t h, int k, bool acc) {
  constexpr int WB = block_width<scalar_t, VBYTES>();
  const int64_t hw = H * W, x_cs = Hp * Wp;
  // The block's centre vectors of the C <= kTileC channels, packed: at H*W a multiple of 1024 the channels lie a
  // multiple of 4 KiB apart, one L1 set.
  alignas(64) scalar_t gp[kTileC * WB];
  for (int64_t w = 0; w < W; w += WB) {
    const int n = static_cast<int>(std::min<int64_t>(WB, W - w));
    for (int64_t c = 0; c < C; ++c) std::memcpy(gp + c * WB, g + c * hw + w, n * sizeof(scalar_t));
    for (int i = 0; i < k; ++i) {
      const scalar_t* xr = x + (h + i) * Wp + w;
      for (int j0 = 0; j0 < k; j0 += kJB) {
        scalar_t* o = out + (i * k + j0) * hw + w;
        const scalar_t* xs = xr + j0;
        switch (std::min(kJB, k - j0)) {
          case 4:
            corr_taps<scalar_t, VBYTES, 4>(gp, WB, xs, x_cs, o, hw, C, n, acc);
            break;
          case 3:
            corr_taps<scalar_t, VBYTES, 3>(gp, WB, xs, x_cs, o, hw, C, n, acc);
            break;
          case 2:
            corr_taps<scalar_t, VBYTES, 2>(gp, WB, xs, x_cs, o, hw, C, n, acc);
            break;
          default:
            corr_taps<scalar_t, VBYTES, 1>(gp, WB, xs, x_cs, o, hw, C, n, acc);
            break;
        }
      }
    }
  }
}

// Row-blocked correlation: RB output rows x IB tap rows x JB taps x one vector of columns, acc[r][ii][jj] in
// registers. For a channel the RB centre vectors g[c, h+r, w..] are loaded once (packed: gp[c][r][L]); then each
// input vector x[c, h+i0+y, w+j0+jj] is loaded once and feeds every (output row r, tap row ii = y - r) pair of the
// block, as the forward reuses an input vector across its output rows. Loads per FMA (RB + (RB+IB-1)*JB) /
// (RB*IB*JB): 0.75 for 2 x 3 x 4 (AVX-512), 0.83 for 2 x 3 x 2 (AVX2 / baseline), against 1.25 for the one-row
// two-vector block. Each accumulator sums its channels in ascending order and is then added to out (accumulate),
// as the one-row kernel does, so the results are those of the plain loop.
// Stores: only rows r in [r_lo, r_hi) and lanes >= lskip (the overlapping last row / column blocks recompute
// outputs that an earlier block, or another task, stores).
template <typename scalar_t, int VBYTES, int RB, int IB, int JB>
FEATUP_INLINE void corr_tile_simd(const scalar_t* FEATUP_RESTRICT gp, const scalar_t* FEATUP_RESTRICT x, int64_t x_cs,
                                  int64_t Wp, scalar_t* FEATUP_RESTRICT out, int64_t o_ts, int64_t W, int k, int64_t C,
                                  bool accumulate, int r_lo, int r_hi, int lskip) {
  using S = Simd<scalar_t, VBYTES>;
  using vec = typename S::vec;
  using acc_t = typename S::acc_t;
  constexpr int L = S::lanes;
  vec acc[RB][IB][JB];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int ii = 0; ii < IB; ++ii)
#pragma GCC unroll 4
      for (int jj = 0; jj < JB; ++jj) acc[r][ii][jj] = vec{};
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* gc = gp + c * (RB * L);
    const scalar_t* xc = x + c * x_cs;
    vec gv[RB];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) gv[r] = S::load(gc + r * L);
#pragma GCC unroll 8
    for (int y = 0; y < RB + IB - 1; ++y) {
#pragma GCC unroll 4
      for (int jj = 0; jj < JB; ++jj) {
        const vec xv = S::load(xc + y * Wp + jj);
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) {
          const int ii = y - r;
          if (ii < 0 || ii >= IB) continue;
          acc[r][ii][jj] += gv[r] * xv;
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) {
    if (r < r_lo || r >= r_hi) continue;
#pragma GCC unroll 4
    for (int ii = 0; ii < IB; ++ii)
#pragma GCC unroll 4
      for (int jj = 0; jj < JB; ++jj) {
        scalar_t* o = out + (ii * k + jj) * o_ts + r * W;
        if (lskip == 0) {
          vec v = acc[r][ii][jj];
          if (accumulate) v += S::load(o);
          S::store(o, v);
        } else {
          acc_t t[L];
          std::memcpy(t, &acc[r][ii][jj], sizeof(t));
          for (int l = lskip; l < L; ++l)
            o[l] = static_cast<scalar_t>(accumulate ? static_cast<acc_t>(o[l]) + t[l] : t[l]);
        }
      }
  }
}

// Picks the instantiation for a jb-tap group (1 <= jb <= JBM).
template <typename scalar_t, int VBYTES, int RB, int IB, int JBM>
FEATUP_INLINE void corr_tile_jb(int jb, const scalar_t* gp, const scalar_t* x, int64_t x_cs, int64_t Wp, scalar_t* out,
                                int64_t o_ts, int64_t W, int k, int64_t C, bool accumulate, int r_lo, int r_hi,
                                int lskip) {
  if constexpr (JBM >= 4) {
    if (jb == 4)
      return corr_tile_simd<scalar_t, VBYTES, RB, IB, 4>(gp, x, x_cs, Wp, out, o_ts, W, k, C, accumulate, r_lo, r_hi,
                                                         lskip);
  }
  if constexpr (JBM >= 3) {
    if (jb == 3)
      return corr_tile_simd<scalar_t, VBYTES, RB, IB, 3>(gp, x, x_cs, Wp, out, o_ts, W, k, C, accumulate, r_lo, r_hi,
                                                         lskip);
  }
  if constexpr (JBM >= 2) {
    if (jb == 2)
      return corr_tile_simd<scalar_t, VBYTES, RB, IB, 2>(gp, x, x_cs, Wp, out, o_ts, W, k, C, accumulate, r_lo, r_hi,
                                                         lskip);
  }
  corr_tile_simd<scalar_t, VBYTES, RB, IB, 1>(gp, x, x_cs, Wp, out, o_ts, W, k, C, accumulate, r_lo, r_hi, lskip);
}

// Splits n taps into ceil(n / m) groups of near-equal size (7 -> 4 + 3 for m = 4, 3 + 2 + 2 for m = 3).
FEATUP_INLINE int tap_group(int n, int m, int g) {
  const int ng = (n + m - 1) / m;
  return n / ng + (g < n % ng ? 1 : 0);
}

// Output rows [h0, h1) of all k*k correlation maps summed over C channels (added to out if acc). g at (b, c0, 0, 0),
// x at (b, c0, 0, 0), out at (b, 0, 0, 0). Row blocks of RB and column blocks of one vector; the last of each
// overlaps the one before when H or W is not a multiple (its extra outputs are computed but not stored). Maps
// narrower than one vector or lower than RB rows take the one-row kernel above.
template <typename scalar_t, int VBYTES, int RB, int IBM, int JBM>
FEATUP_INLINE void corr_rows_impl(const scalar_t* g, const scalar_t* x, scalar_t* out, int64_t C, int64_t H, int64_t W,
                                  int64_t Hp, int64_t Wp, int64_t h0, int64_t h1, int k, bool acc) {
  constexpr int L = Simd<scalar_t, VBYTES>::lanes;
  const int64_t hw = H * W, x_cs = Hp * Wp;
  if (W < L || H < RB) {
    for (int64_t h = h0; h < h1; ++h)
      corr_row_impl<scalar_t, VBYTES>(g + h * W, x, out + h * W, C, H, W, Hp, Wp, h, k, acc);
    return;
  }
  alignas(64) scalar_t gp[kTileC * RB * L];
  for (int64_t h = h0; h < h1; h += RB) {
    const int64_t hs = std::min<int64_t>(h, H - RB);
    const int r_lo = static_cast<int>(h - hs), r_hi = static_cast<int>(std::min<int64_t>(h1, hs + RB) - hs);
    for (int64_t w0 = 0; w0 < W; w0 += L) {
      const int64_t ws = std::min<int64_t>(w0, W - L);
      const int lskip = static_cast<int>(w0 - ws);
      for (int64_t c = 0; c < C; ++c)
        for (int r = 0; r < RB; ++r)
          std::memcpy(gp + (c * RB + r) * L, g + c * hw + (hs + r) * W + ws, L * sizeof(scalar_t));
      for (int gi = 0, i0 = 0; i0 < k; i0 += tap_group(k, IBM, gi), ++gi) {
        const int ib = tap_group(k, IBM, gi);
        for (int gj = 0, j0 = 0; j0 < k; j0 += tap_group(k, JBM, gj), ++gj) {
          const int jb = tap_group(k, JBM, gj);
          const scalar_t* xb = x + (hs + i0) * Wp + ws + j0;
          scalar_t* ob = out + (i0 * k + j0) * hw + hs * W + ws;
          if constexpr (IBM >= 3) {
            if (ib == 3) {
              corr_tile_jb<scalar_t, VBYTES, RB, 3, JBM>(jb, gp, xb, x_cs, Wp, ob, hw, W, k, C, acc, r_lo, r_hi, lskip);
              continue;
            }
          }
          if (ib == 2)
            corr_tile_jb<scalar_t, VBYTES, RB, 2, JBM>(jb, gp, xb, x_cs, Wp, ob, hw, W, k, C, acc, r_lo, r_hi, lskip);
          else
            corr_tile_jb<scalar_t, VBYTES, RB, 1, JBM>(jb, gp, xb, x_cs, Wp, ob, hw, W, k, C, acc, r_lo, r_hi, lskip);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// transposed adaptive conv (the forward's input gradient; also the correlation's gradient w.r.t. its padded input):
//   out[c, y, x] = sum_{i,j} kt[i*k+j, y-i, x-j] * g[c, y-i, x-j]   over taps with (y-i, x-j) in [0, H) x [0, W),
// out [C, H+k-1, W+k-1]. Gather form: each output pixel sums its own taps (no atomics, any thread count gives the
// same bits), reading the taps where they lie: no flipped copy of the kernel and no padded copy of g.
// ---------------------------------------------------------------------------------------------
// RB output rows (from y0) x CB channels x one vector of columns (from x), acc[rb][cb] in registers. For a source
// row r and column shift j the CB vectors g[c, r, x-j..] are loaded once and used by every output row y0+rb whose
// tap row i = y0+rb-r is in [0, k); each kernel vector kt[i*k+j, r, x-j..] by the CB channels (loads per FMA
// 1/RB + 1/CB, as the forward). The kernel vectors come packed (kp: vector (rb, i, j) at ((rb * k + i) * k + j) * L,
// see tr_rows_impl). EDGE: the block reaches past the maps (the k-1 output columns on each side whose taps are
// partly outside [0, W)); the packed kernel lanes outside hold zeros and the g vectors are read from zero-extended
// copies of the CB channels' source rows (gb: CB x (L + k - 1)), so no lane reads outside the maps. Rows
// y0+rb >= y_end are computed but not stored.
// KC > 0: k known at compile time (source rows t, shifts j and output rows rb unroll fully and the tap-row tests
// fold away, as in the forward; 2.2x faster at k = 7 cache-hot); KC = 0: k at run time.
template <typename scalar_t, int VBYTES, int CB, int RB, bool EDGE, int KC = 0>
FEATUP_INLINE void tr_tile_simd(const scalar_t* FEATUP_RESTRICT g, const scalar_t* FEATUP_RESTRICT kp,
                                scalar_t* FEATUP_RESTRICT out, scalar_t* FEATUP_RESTRICT gb, int64_t H, int64_t W,
                                int64_t y0, int64_t y_end, int64_t x, int k_rt) {
  const int k = KC > 0 ? KC : k_rt;
  using S = Simd<scalar_t, VBYTES>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  const int64_t HW = H * W, Wp = W + k - 1, P = (H + k - 1) * Wp;
  const int E = L + k - 1;  // EDGE: gb[cb * E + q] = g[cb, r, x - (k - 1) + q] (0 outside the map)
  vec acc[RB][CB];
#pragma GCC unroll 8
  for (int rb = 0; rb < RB; ++rb)
#pragma GCC unroll 8
    for (int cb = 0; cb < CB; ++cb) acc[rb][cb] = vec{};
  // Source rows r = y0 - (k - 1) + t, ascending (each output sums its taps in the order of the plain loop); output
  // row y0 + rb reads tap row i = k - 1 - t + rb of source row r.
#pragma GCC unroll 16
  for (int t = 0; t < RB + k - 1; ++t) {
    const int64_t r = y0 - (k - 1) + t;
    if (r < 0 || r >= H) continue;
    if constexpr (EDGE) {
      for (int cb = 0; cb < CB; ++cb)
        for (int q = 0; q < E; ++q) {
          const int64_t col = x - (k - 1) + q;
          gb[cb * E + q] = (col >= 0 && col < W) ? g[cb * HW + r * W + col] : scalar_t(0);
        }
    }
    const scalar_t* FEATUP_RESTRICT gr = g + r * W + x;
#pragma GCC unroll 8
    for (int j = 0; j < k; ++j) {
      vec gv[CB];
#pragma GCC unroll 8
      for (int cb = 0; cb < CB; ++cb) gv[cb] = EDGE ? S::load(gb + cb * E + (k - 1 - j)) : S::load(gr + cb * HW - j);
#pragma GCC unroll 8
      for (int rb = 0; rb < RB; ++rb) {
        const int i = k - 1 - t + rb;
        if (i < 0 || i >= k) continue;
        const vec kv = S::load(kp + ((rb * k + i) * k + j) * L);
#pragma GCC unroll 8
        for (int cb = 0; cb < CB; ++cb) acc[rb][cb] += kv * gv[cb];
      }
    }
  }
  for (int rb = 0; rb < RB; ++rb) {
    if (y0 + rb >= y_end) break;
    for (int cb = 0; cb < CB; ++cb) S::store(out + cb * P + (y0 + rb) * Wp + x, acc[rb][cb]);
  }
}

// One (column block, row group) over all C channels: groups of CB, then the rest one at a time.
template <typename scalar_t, int VBYTES, int CB, int RB, bool EDGE, int KC>
FEATUP_INLINE void tr_channels_k(const scalar_t* g, const scalar_t* kp, scalar_t* out, scalar_t* gb, int64_t C,
                                 int64_t H, int64_t W, int64_t y, int64_t y1, int64_t x, int k) {
  const int64_t HW = H * W, P = (H + k - 1) * (W + k - 1);
  int64_t c = 0;
  for (; c + CB <= C; c += CB)
    tr_tile_simd<scalar_t, VBYTES, CB, RB, EDGE, KC>(g + c * HW, kp, out + c * P, gb, H, W, y, y1, x, k);
  for (; c < C; ++c)
    tr_tile_simd<scalar_t, VBYTES, 1, RB, EDGE, KC>(g + c * HW, kp, out + c * P, gb, H, W, y, y1, x, k);
}

// k = 3 and 7 (FeatUp's radius 1 and 3) compiled with k known, the others with k at run time.
template <typename scalar_t, int VBYTES, int CB, int RB, bool EDGE>
FEATUP_INLINE void tr_channels(const scalar_t* g, const scalar_t* kp, scalar_t* out, scalar_t* gb, int64_t C, int64_t H,
                               int64_t W, int64_t y, int64_t y1, int64_t x, int k) {
  if (k == 3) return tr_channels_k<scalar_t, VBYTES, CB, RB, EDGE, 3>(g, kp, out, gb, C, H, W, y, y1, x, k);
  if (k == 7) return tr_channels_k<scalar_t, VBYTES, CB, RB, EDGE, 7>(g, kp, out, gb, C, H, W, y, y1, x, k);
  tr_channels_k<scalar_t, VBYTES, CB, RB, EDGE, 0>(g, kp, out, gb, C, H, W, y, y1, x, k);
}

// The kernel vectors of tr_tile_simd for output rows y .. y+RB-1 and columns x .. x+L-1: vector (rb, i, j) at
// ((rb * k + i) * k + j) * L holds kt[i*k+j, y+rb-i, x+l-j] for lanes l, 0 where the column is outside [0, W)
// (inside: every column is in range); rows outside [0, H) are skipped (never read by the tiles). Column stride 1
// (contiguous kernel): a memcpy per vector; otherwise (pixel-major, the taps of a pixel adjacent) a gather of each
// tap row's strip of columns, pixel by pixel (contiguous reads of k taps), then a memcpy per vector. The same
// values either way.
template <typename scalar_t, int L, int RB>
FEATUP_INLINE void tr_pack_kernel(const scalar_t* FEATUP_RESTRICT kt, KernelStrides ks, scalar_t* FEATUP_RESTRICT kp,
                                  scalar_t* FEATUP_RESTRICT strip, int64_t H, int64_t W, int64_t y, int64_t x,
                                  bool inside, int k) {
  for (int rb = 0; rb < RB; ++rb)
    for (int i = 0; i < k; ++i) {
      const int64_t r = y + rb - i;
      if (r < 0 || r >= H) continue;
      const scalar_t* FEATUP_RESTRICT src = kt + i * k * ks.t + r * ks.r;  // tap (i, 0) of row r
      scalar_t* FEATUP_RESTRICT dst = kp + (rb * k + i) * k * L;           // vector (rb, i, 0)
      if (ks.c == 1) {
        for (int j = 0; j < k; ++j) {
          const scalar_t* sj = src + j * ks.t;
          scalar_t* dj = dst + j * L;
          if (inside) {
            std::memcpy(dj, sj + x - j, L * sizeof(scalar_t));
          } else {
            for (int l = 0; l < L; ++l) {
              const int64_t q = x + l - j;
              dj[l] = (q >= 0 && q < W) ? sj[q] : scalar_t(0);
            }
          }
        }
        continue;
      }
      // Lane l of vector j reads source column x + l - j: first the strip of the E = L + k - 1 columns
      // [x-k+1, x+L) of taps (i, 0..k-1), transposed pixel by pixel (the k taps of a pixel are adjacent), into
      // strip[j * E + e] (0 outside the map); vector j is then strip[j * E + k - 1 - j ..], one memcpy.
      const int E = L + k - 1;
      for (int e = 0; e < E; ++e) {
        const int64_t q = x - (k - 1) + e;
        if (inside || (q >= 0 && q < W)) {
          const scalar_t* FEATUP_RESTRICT sq = src + q * ks.c;
          for (int j = 0; j < k; ++j) strip[j * E + e] = sq[j * ks.t];
        } else {
          for (int j = 0; j < k; ++j) strip[j * E + e] = scalar_t(0);
        }
      }
      for (int j = 0; j < k; ++j) std::memcpy(dst + j * L, strip + j * E + (k - 1 - j), L * sizeof(scalar_t));
    }
}

// Output rows [y0, y1) of C channels; g at (b, c0, 0, 0), kt at (b, 0, 0, 0), out at (b, c0, 0, 0). Column blocks
// one vector wide over [0, W+k-1) (the last overlapping the one before): blocks inside [k-1, W), where every
// column shift is in range, read g in place; the blocks over the k-1 border columns on each side are EDGE blocks.
// Maps narrower than one vector take the scalar loop with the tap ranges clipped.
template <typename scalar_t, int VBYTES, int CB, int RB>
FEATUP_INLINE void tr_rows_impl(const scalar_t* FEATUP_RESTRICT g, const scalar_t* FEATUP_RESTRICT kt, KernelStrides ks,
                                scalar_t* FEATUP_RESTRICT out, int64_t C, int64_t H, int64_t W, int64_t y0, int64_t y1,
                                int k) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int L = Simd<scalar_t, VBYTES>::lanes;
  const int64_t HW = H * W, Wp = W + k - 1, P = (H + k - 1) * Wp;
  if (Wp >= L) {
    // The RB*k*k kernel vectors of a (column block, row group), packed contiguous and cache-line aligned and reused
    // by all channel groups: in the tap-major kernel the taps lie H*W apart, at 224^2 a multiple of 4 KiB, so
    // unpacked they fall into one L1 set (as in the forward). Lanes whose source column is outside the map: 0.
    const int E = L + k - 1;
    std::vector<scalar_t> buf(static_cast<size_t>(RB * k * k * L + CB * E + k * E) + 64 / sizeof(scalar_t));
    scalar_t* kp = buf.data();
    while (reinterpret_cast<uintptr_t>(kp) % 64) ++kp;
    scalar_t* gb = kp + RB * k * k * L;
    scalar_t* strip = gb + CB * E;  // tr_pack_kernel's pixel-major gather
    for (int64_t xb = 0; xb < Wp; xb += L) {
      const int64_t x = std::min(xb, Wp - L);
      const bool inside = x >= k - 1 && x + L <= W;
      for (int64_t y = y0; y < y1; y += RB) {
        tr_pack_kernel<scalar_t, L, RB>(kt, ks, kp, strip, H, W, y, x, inside, k);
        if (inside)
          tr_channels<scalar_t, VBYTES, CB, RB, false>(g, kp, out, gb, C, H, W, y, y1, x, k);
        else
          tr_channels<scalar_t, VBYTES, CB, RB, true>(g, kp, out, gb, C, H, W, y, y1, x, k);
      }
    }
    return;
  }
  for (int64_t y = y0; y < y1; ++y) {
    const int i_lo = static_cast<int>(std::max<int64_t>(0, y - (H - 1)));
    const int i_hi = static_cast<int>(std::min<int64_t>(k - 1, y));
    scalar_t* FEATUP_RESTRICT orow = out + y * Wp;
    for (int64_t x = 0; x < Wp; ++x) {
      const int j_lo = static_cast<int>(std::max<int64_t>(0, x - (W - 1)));
      const int j_hi = static_cast<int>(std::min<int64_t>(k - 1, x));
      for (int64_t c = 0; c < C; ++c) {
        acc_t acc = acc_t(0);
        for (int i = i_lo; i <= i_hi; ++i) {
          const int64_t r = y - i;
          for (int j = j_lo; j <= j_hi; ++j)
            acc += static_cast<acc_t>(kt[(i * k + j) * ks.t + r * ks.r + (x - j) * ks.c]) *
                   static_cast<acc_t>(g[c * HW + r * W + x - j]);
        }
        orow[c * P + x] = static_cast<scalar_t>(acc);
      }
    }
  }
}

// ISA entry points: the same templates compiled for each instruction set with its own block width.
#define FEATUP_DEFINE_ISA(NAME, ATTR, VBYTES, CB, RB, CRB, CIB, CJB)                                                  \
  template <typename T>                                                                                               \
  ATTR void fwd_rows_##NAME(const T* x, const T* kt, KernelStrides ks, T* out, int64_t C, int64_t nrows, int64_t H,   \
                            int64_t W, int64_t Hp, int64_t Wp, int k) {                                               \
    fwd_rows_impl<T, VBYTES, CB, RB>(x, kt, ks, out, C, nrows, H, W, Hp, Wp, k);                                      \
  }                                                                                                                   \
  template <typename T>                                                                                               \
  ATTR void corr_rows_##NAME(const T* g, const T* x, T* out, int64_t C, int64_t H, int64_t W, int64_t Hp, int64_t Wp, \
                             int64_t h0, int64_t h1, int k, bool acc) {                                               \
    corr_rows_impl<T, VBYTES, CRB, CIB, CJB>(g, x, out, C, H, W, Hp, Wp, h0, h1, k, acc);                             \
  }                                                                                                                   \
  template <typename T>                                                                                               \
  ATTR void tr_rows_##NAME(const T* g, const T* kt, KernelStrides ks, T* out, int64_t C, int64_t H, int64_t W,        \
                           int64_t y0, int64_t y1, int k) {                                                           \
    tr_rows_impl<T, VBYTES, CB, RB>(g, kt, ks, out, C, H, W, y0, y1, k);                                              \
  }

// Forward register blocks: CB x RB vector accumulators plus CB input vectors and one kernel vector, within the
// 16 vector registers of SSE / AVX2 and the 32 of AVX-512.
FEATUP_DEFINE_ISA(base, , 16, 2, 4, 2, 3, 2)
#if FEATUP_X86_DISPATCH
FEATUP_DEFINE_ISA(avx2, FEATUP_TARGET("avx2,fma,tune=haswell"), 32, 2, 4, 2, 3, 2)
FEATUP_DEFINE_ISA(
    avx512, FEATUP_TARGET("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,tune=skylake-avx512,prefer-vector-width=512"),
    64, 4, 4, 2, 3, 4)
#endif
#undef FEATUP_DEFINE_ISA

enum Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

int best_isa() {
#if FEATUP_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kBase;
}

std::atomic<int>& isa_in_use() {
  static std::atomic<int> isa{best_isa()};
  return isa;
}

template <typename T>
void fwd_rows(const T* x, const T* kt, KernelStrides ks, T* out, int64_t C, int64_t nrows, int64_t H, int64_t W,
              int64_t Hp, int64_t Wp, int k) {
  switch (isa_in_use().load(std::memory_order_relaxed)) {
#if FEATUP_X86_DISPATCH
    case kAvx512:
      return fwd_rows_avx512<T>(x, kt, ks, out, C, nrows, H, W, Hp, Wp, k);
    case kAvx2:
      return fwd_rows_avx2<T>(x, kt, ks, out, C, nrows, H, W, Hp, Wp, k);
#endif
    default:
      return fwd_rows_base<T>(x, kt, ks, out, C, nrows, H, W, Hp, Wp, k);
  }
}

template <typename T>
void corr_rows(const T* g, const T* x, T* out, int64_t C, int64_t H, int64_t W, int64_t Hp, int64_t Wp, int64_t h0,
               int64_t h1, int k, bool acc) {
  switch (isa_in_use().load(std::memory_order_relaxed)) {
#if FEATUP_X86_DISPATCH
    case kAvx512:
      return corr_rows_avx512<T>(g, x, out, C, H, W, Hp, Wp, h0, h1, k, acc);
    case kAvx2:
      return corr_rows_avx2<T>(g, x, out, C, H, W, Hp, Wp, h0, h1, k, acc);
#endif
    default:
      return corr_rows_base<T>(g, x, out, C, H, W, Hp, Wp, h0, h1, k, acc);
  }
}

template <typename T>
void tr_rows(const T* g, const T* kt, KernelStrides ks, T* out, int64_t C, int64_t H, int64_t W, int64_t y0, int64_t y1,
             int k) {
  switch (isa_in_use().load(std::memory_order_relaxed)) {
#if FEATUP_X86_DISPATCH
    case kAvx512:
      return tr_rows_avx512<T>(g, kt, ks, out, C, H, W, y0, y1, k);
    case kAvx2:
      return tr_rows_avx2<T>(g, kt, ks, out, C, H, W, y0, y1, k);
#endif
    default:
      return tr_rows_base<T>(g, kt, ks, out, C, H, W, y0, y1, k);
  }
}

struct Tiles {
  int64_t ct, ht;
};

// Correlation tiles: kCorrTileC channels x up to kCorrTileH output rows (fewer when that leaves under 4 tasks per
// thread). Small channel tiles keep a column block's input rows (channels x (RB + k - 1) rows) in L1 across its
// tap groups and a task's input rows in L2 across its row blocks; at 224^2 (one thread, C = 384) 16 x 16 took
// 8 / 29 ms (k = 3 / 7) against 15 / 45 ms for 64 x 4. The row tile does not change any output's summation order
// (channels ascending, one channel tile after another), so results do not depend on the thread count. Tuning
// knobs FEATUP_CORR_TILE_C (at most kTileC) / _H, read once; development only.
constexpr int64_t kCorrTileC = 16;
constexpr int64_t kCorrTileH = 16;
Tiles corr_tiles(int64_t B, int64_t C, int64_t H) {
  static const int64_t tc = [] {
    const char* e = std::getenv("FEATUP_CORR_TILE_C");
    return e ? std::max<int64_t>(1, std::min<int64_t>(kTileC, std::atoll(e))) : kCorrTileC;
  }();
  static const int64_t th0 = [] {
    const char* e = std::getenv("FEATUP_CORR_TILE_H");
    return e ? std::max<int64_t>(1, std::atoll(e)) : kCorrTileH;
  }();
  int64_t th = th0;
  const int64_t tasks_wanted = 4 * static_cast<int64_t>(at::get_num_threads());
  while (th > 2 && B * ((H + th - 1) / th) < tasks_wanted) th /= 2;
  return {std::min(C, tc), std::min(H, th)};
}

// Forward tiles (tuning knobs FEATUP_FWD_TILE_C / _H read once; development only).
Tiles fwd_tiles(int64_t C, int64_t H) {
  static const int64_t tc = [] {
    const char* e = std::getenv("FEATUP_FWD_TILE_C");
    return e ? std::atoll(e) : 64;
  }();
  static const int64_t th = [] {
    const char* e = std::getenv("FEATUP_FWD_TILE_H");
    return e ? std::atoll(e) : 8;
  }();
  return {std::min(C, tc), std::min(H, th)};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The kernel argument of the forward and transposed CPU ops: a CPU tensor, contiguous or pixel-major (the entry
// points in adaptive_conv.cpp make any other layout contiguous).
KernelStrides checked_kernel_strides(const at::Tensor& kernel) {
  FEATUP_CHECK_CPU(kernel);
  KernelStrides ks;
  TORCH_CHECK(kernel_strides(kernel, &ks),
              "kernel must be contiguous or pixel-major ([B, H, W, k, k] memory viewed as ",
              "[B, k*k, H, W]), got sizes ", kernel.sizes(), " and strides ", kernel.strides());
  return ks;
}

// Whether a pixel-major kernel is read in place (gathered by the packing once per channel tile) or made contiguous
// once per call. Measured at 224^2, one thread (AVX-512, float): the copy (.contiguous(), a transposition) costs
// 0.3 / 2.7 / 6.2 ms at k = 3 / 5 / 7 (its writes to k*k planes H*W apart alias in L1); the forward's gather 0.15 /
// 0.25 / 0.45 ms per 64-channel tile, the transposed op's 0.4 / 1.0 / 1.8 ms. The same values either way.
bool pixel_major_in_place(int64_t k, int64_t channel_tiles, bool transposed) {
  if (transposed) return k >= 5 && channel_tiles <= 2;
  return channel_tiles == 1 || (k >= 5 && channel_tiles <= 8);
}

// The kernel the CPU code reads (contiguous or pixel-major) and its strides.
std::pair<at::Tensor, KernelStrides> cpu_kernel(const at::Tensor& kernel, int64_t k, int64_t channel_tiles,
                                                bool transposed) {
  KernelStrides ks = checked_kernel_strides(kernel);
  if (ks.c == 1 || pixel_major_in_place(k, channel_tiles, transposed)) return {kernel, ks};
  at::Tensor kc = kernel.contiguous();
  return {kc, checked_kernel_strides(kc)};
}

}  // namespace

int cpu_isa_level() { return isa_in_use().load(std::memory_order_relaxed); }

std::string cpu_isa() {
  static const char* names[] = {"baseline", "avx2", "avx512"};
  return names[isa_in_use().load()];
}

// For tests and benchmarks: force a code path ("avx512", "avx2", "baseline"); refuses one the CPU lacks.
void set_cpu_isa(const std::string& name) {
  int want = name == "avx512" ? kAvx512 : name == "avx2" ? kAvx2 : name == "baseline" ? kBase : -1;
  TORCH_CHECK(want >= 0, "unknown CPU code path '", name, "' (expected avx512, avx2 or baseline)");
  TORCH_CHECK(want <= best_isa(), "this CPU (or build) does not support the '", name, "' code path");
  isa_in_use().store(want);
}

at::Tensor adaptive_conv_forward_cpu(const at::Tensor& input, const at::Tensor& kernel_in, int64_t k) {
  FEATUP_CHECK_CPU_INPUT(input);
  const int64_t B = input.size(0), C = input.size(1), Hp = input.size(2), Wp = input.size(3);
  const int64_t H = kernel_in.size(2), W = kernel_in.size(3);
  auto out = empty_output({B, C, H, W}, input.options());
  const Tiles t = fwd_tiles(C, H);
  const int64_t nct = ceil_div(C, t.ct), nht = ceil_div(H, t.ht);
  const auto read = cpu_kernel(kernel_in, k, nct, false);
  const at::Tensor& kernel = read.first;
  const KernelStrides ks = read.second;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "adaptive_conv_forward_cpu", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* kt = kernel.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // Tasks ordered (b, channel tile, row tile): a thread's consecutive tasks are neighbouring row tiles of the
    // same channels, so the k-1 input rows they share are still in L2.
    at::parallel_for(0, B * nht * nct, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / (nht * nct), tc = (task / nht) % nct, th = task % nht;
        const int64_t c0 = tc * t.ct, nc = std::min(t.ct, C - c0);
        const int64_t h0 = th * t.ht, h1 = std::min(H, h0 + t.ht);
        fwd_rows(x + ((b * C + c0) * Hp + h0) * Wp, kt + b * ks.b + h0 * ks.r, ks, o + ((b * C + c0) * H + h0) * W, nc,
                 h1 - h0, H, W, Hp, Wp, static_cast<int>(k));
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
  auto out = empty_output({B, k * k, H, W}, center.options());
  const Tiles t = corr_tiles(B, C, H);
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
          corr_rows(g + (b * C + c0) * H * W, x + (b * C + c0) * Hp * Wp, o + b * k * k * H * W, nc, H, W, Hp, Wp, h0,
                    h1, static_cast<int>(k), c0 > 0);
        }
      }
    });
  });
  return out;
}

at::Tensor adaptive_conv_transpose_cpu(const at::Tensor& grad, const at::Tensor& kernel_in, int64_t k) {
  FEATUP_CHECK_CPU_INPUT(grad);
  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3);
  const int64_t Hp = H + k - 1, Wp = W + k - 1;
  auto out = empty_output({B, C, Hp, Wp}, grad.options());
  const Tiles t = fwd_tiles(C, Hp);
  const int64_t nct = ceil_div(C, t.ct), nht = ceil_div(Hp, t.ht);
  const auto read = cpu_kernel(kernel_in, k, nct, true);
  const at::Tensor& kernel = read.first;
  const KernelStrides ks = read.second;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "adaptive_conv_transpose_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* kt = kernel.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * nht * nct, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / (nht * nct), tc = (task / nht) % nct, th = task % nht;
        const int64_t c0 = tc * t.ct, nc = std::min(t.ct, C - c0);
        const int64_t y0 = th * t.ht, y1 = std::min(Hp, y0 + t.ht);
        tr_rows(g + (b * C + c0) * H * W, kt + b * ks.b, ks, o + (b * C + c0) * Hp * Wp, nc, H, W, y0, y1,
                static_cast<int>(k));
      }
    });
  });
  return out;
}

}  // namespace featup
