// CUDA kernels for the adaptive convolution primitives (host launchers: pytorch/cuda/adaptive_conv_cuda.cu).
//
//   adaptive conv      out[b, c, h, w]     = sum_{i,j<k} kernel[b, i*k+j, h, w] * input[b, c, h+i, w+j]
//   local correlation  out[b, i*k+j, h, w] = sum_c       center[b, c, h, w]     * padded[b, c, h+i, w+j]
//
// Tiling scheme (both ops). A block of kThreadsX x kThreadsY = 32 x 8 threads covers a 32 (W) x 8*ROWS (H)
// tile of output pixels; a thread owns ROWS (1 or 2) vertically adjacent pixels of one column, and
// threadIdx.x runs along W, so every global load and store of a warp touches one contiguous row segment.
// Channels are processed in chunks of CS: the block cooperatively stages the (8*ROWS + k - 1) x (32 + k - 1)
// input window (tile plus halo) of CS channels in shared memory (converted to the accumulation type),
// synchronises, and every thread then reads its neighbourhood from shared memory, so each global input
// value is loaded once per block instead of k*k times. Shared reads of a warp are 32 consecutive words (no
// bank conflicts). With ROWS = 2 the two pixels of a thread share k - 1 of their k + 1 window rows: one
// shared read feeds up to two FMAs, which matters because the k*k shared reads per pixel and channel,
// not DRAM, bound the k = 7 kernels.
//
//  * adaptive conv: a thread keeps the k*k weights of each of its pixels in registers (fast paths
//    K = 3, 5, 7 as a template parameter), loaded once per block and reused for every channel of the
//    block's channel group. The generic kernel (any odd k) keeps CS per-channel accumulators in registers
//    instead and reads each weight once per channel chunk from global memory (L1-resident).
//  * local correlation: a thread keeps k*k accumulators per pixel in registers (fast paths K = 3, 5, 7)
//    and loops over the channels; its center values are one coalesced load per channel, prefetched before
//    the chunk's barrier. The generic kernel gives each block a group of taps (8, or 32 / 16 from k = 9).
//
// Grid: one-dimensional, block id = ((b * tiles_y + tile_y) * tiles_x + tile_x) * splits + split, so
// there is no gridDim.y/z limit and blocks sharing a tile are adjacent in launch order (the channel groups
// of one tile then read the same weights while they are in L2). When B * tiles is small the channels are
// split over `splits` groups to fill the GPU: adaptive conv groups write disjoint output channels;
// correlation groups write opmath partial sums to a workspace [splits, B, k*k, H, W] that the host reduces
// (no atomics). 64-bit offsets wherever a tensor index can exceed 2^31. Windows above 48 KiB of shared
// memory opt in to the device's larger per-block limit (cudaFuncSetAttribute); only windows too large for that
// use the direct (non-tiled) kernels.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace featup {

constexpr int kThreadsX = 32;                    // tile width  (output columns per block)
constexpr int kThreadsY = 8;                     // tile height (output rows per block)
constexpr int kThreads = kThreadsX * kThreadsY;  // threads per block
constexpr int kChunkFast = 8;                    // channels staged per barrier, K = 3, 5, 7 kernels
constexpr int kChunkGeneric = 4;                 // channels staged per barrier, generic-k kernels
// Taps per block of the generic correlation kernel: each block restages its window once per channel chunk, so the
// window is staged ceil(k*k / TG) times per channel. TG = 32 (16 with double accumulators, to stay within the
// registers of 2 resident blocks) from k = 9 on: 3 stagings for k = 9 (11 with 8-tap groups), 8 for k = 15 (29).
constexpr int kTapGroup = 8;
template <typename acc_t>
constexpr int wide_tap_group() {
  return sizeof(acc_t) > 4 ? 16 : 32;
}
constexpr int kDirectThreads = 256;  // block size of the direct kernels

// Decoded position of a tiled block: batch, tile origin, and the split (channel group / tap group).
struct TileCoord {
  int b, h0, w0, split;
};

// The grid has fewer than 2^31 blocks, so 32-bit unsigned division suffices (64-bit division is a
// subroutine call on the GPU). tile_h: output rows per block.
__device__ __forceinline__ TileCoord decode_block(int tiles_x, int tiles_y, int splits, int tile_h) {
  unsigned id = blockIdx.x;
  TileCoord t;
  unsigned q = id / static_cast<unsigned>(splits);
  t.split = static_cast<int>(id - q * static_cast<unsigned>(splits));
  id = q;
  q = id / static_cast<unsigned>(tiles_x);
  t.w0 = static_cast<int>(id - q * static_cast<unsigned>(tiles_x)) * kThreadsX;
  id = q;
  q = id / static_cast<unsigned>(tiles_y);
  t.h0 = static_cast<int>(id - q * static_cast<unsigned>(tiles_y)) * tile_h;
  t.b = static_cast<int>(q);
  return t;
}

// Stage channels [0, nch) of the window rows [h0, h0 + SH) x columns [w0, w0 + SW) of `src` (pointing at
// channel 0 of the chunk, plane stride `plane`) into `dst` laid out [nch][SH][SW]. Positions past the
// input edge (only in the last tile row / column) are zero. With SH / SW compile-time constants the
// index divisions become multiplications.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_window(acc_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t plane,
                                             int nch, int SH, int SW, int Hp, int Wp, int h0, int w0, int tid) {
  const int per = SH * SW;
  const int total = nch * per;
  for (int idx = tid; idx < total; idx += kThreads) {
    const int c = idx / per;
    const int rem = idx - c * per;
    const int r = rem / SW;
    const int col = rem - r * SW;
    const int gh = h0 + r, gw = w0 + col;
    acc_t v = acc_t(0);
    if (gh < Hp && gw < Wp) v = static_cast<acc_t>(src[c * plane + static_cast<int64_t>(gh) * Wp + gw]);
    dst[idx] = v;
  }
}

// -------------------------------------------------------------------------------------------------
// adaptive conv, K in {3, 5, 7}: weights in registers, CS channels per shared-memory chunk. A thread owns
// ROWS vertically adjacent output pixels (tile height 8 * ROWS); with ROWS = 2 the two pixels share
// K - 1 of their K + 1 window rows, so one shared-memory read feeds up to two FMAs.
// Block split = channel group [split * group_size, min(C, (split + 1) * group_size)).
// -------------------------------------------------------------------------------------------------
template <typename scalar_t, int K, int CS, int ROWS>
__global__ void __launch_bounds__(kThreads, sizeof(at::opmath_type<scalar_t>) == 4 ? 2 : 1)
    adaptive_conv_forward_cuda_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ kernel,
                                      scalar_t* __restrict__ output, int C, int H, int W, int tiles_x, int tiles_y,
                                      int groups, int group_size) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int KK = K * K;
  constexpr int TH = kThreadsY * ROWS;
  constexpr int SH = TH + K - 1;
  constexpr int SW = kThreadsX + K - 1;
  __shared__ acc_t window[CS * SH * SW];

  const TileCoord tc = decode_block(tiles_x, tiles_y, groups, TH);
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  const int h = tc.h0 + threadIdx.y * ROWS, w = tc.w0 + threadIdx.x;  // first of the thread's rows
  const bool active = h < H && w < W;
  const int Hp = H + K - 1, Wp = W + K - 1;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t plane = static_cast<int64_t>(Hp) * Wp;
  const int64_t pix = static_cast<int64_t>(h) * W + w;

  bool row_ok[ROWS];
  acc_t wt[ROWS][KK];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    row_ok[r] = active && h + r < H;
    const scalar_t* kp = kernel + static_cast<int64_t>(tc.b) * KK * HW + pix + r * W;
#pragma unroll
    for (int t = 0; t < KK; ++t) wt[r][t] = row_ok[r] ? static_cast<acc_t>(kp[t * HW]) : acc_t(0);
  }

  const int c_begin = tc.split * group_size;
  const int c_end = min(C, c_begin + group_size);
  const scalar_t* in_b = input + static_cast<int64_t>(tc.b) * C * plane;
  scalar_t* out_p = output + static_cast<int64_t>(tc.b) * C * HW + pix;
  const acc_t* win = window + threadIdx.y * ROWS * SW + threadIdx.x;

  for (int c0 = c_begin; c0 < c_end; c0 += CS) {
    const int nch = min(CS, c_end - c0);
    stage_window(window, in_b + c0 * plane, plane, nch, SH, SW, Hp, Wp, tc.h0, tc.w0, tid);
    __syncthreads();
    if (active) {
#pragma unroll
      for (int c = 0; c < CS; ++c) {
        if (c < nch) {
          const acc_t* s = win + c * (SH * SW);
          acc_t acc[ROWS];
#pragma unroll
          for (int r = 0; r < ROWS; ++r) acc[r] = acc_t(0);
          // Window row rr is kernel row rr - r of the thread's pixel r.
#pragma unroll
          for (int rr = 0; rr < K + ROWS - 1; ++rr) {
#pragma unroll
            for (int j = 0; j < K; ++j) {
              const acc_t v = s[rr * SW + j];
#pragma unroll
              for (int r = 0; r < ROWS; ++r)
                if (rr - r >= 0 && rr - r < K) acc[r] += wt[r][(rr - r) * K + j] * v;
            }
          }
#pragma unroll
          for (int r = 0; r < ROWS; ++r)
            if (row_ok[r]) out_p[(c0 + c) * HW + r * W] = static_cast<scalar_t>(acc[r]);
        }
      }
    }
    __syncthreads();
  }
}

// -------------------------------------------------------------------------------------------------
// adaptive conv, any odd k: CS accumulators (one per channel of the chunk) in registers, each weight read
// once per chunk from global memory. Dynamic shared memory: CS * (8 + k - 1) * (32 + k - 1) acc_t.
// -------------------------------------------------------------------------------------------------
template <typename scalar_t, int CS>
__global__ void __launch_bounds__(kThreads)
    adaptive_conv_forward_generic_cuda_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ kernel,
                                              scalar_t* __restrict__ output, int C, int H, int W, int k, int tiles_x,
                                              int tiles_y, int groups, int group_size) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char featup_dyn_smem[];
  acc_t* window = reinterpret_cast<acc_t*>(featup_dyn_smem);

  const int SH = kThreadsY + k - 1, SW = kThreadsX + k - 1, per = SH * SW;
  const TileCoord tc = decode_block(tiles_x, tiles_y, groups, kThreadsY);
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  const int h = tc.h0 + threadIdx.y, w = tc.w0 + threadIdx.x;
  const bool active = h < H && w < W;
  const int Hp = H + k - 1, Wp = W + k - 1;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t plane = static_cast<int64_t>(Hp) * Wp;
  const int64_t pix = static_cast<int64_t>(h) * W + w;

  const int c_begin = tc.split * group_size;
  const int c_end = min(C, c_begin + group_size);
  const scalar_t* in_b = input + static_cast<int64_t>(tc.b) * C * plane;
  const scalar_t* kp = kernel + static_cast<int64_t>(tc.b) * k * k * HW + pix;
  scalar_t* out_p = output + static_cast<int64_t>(tc.b) * C * HW + pix;
  const acc_t* win = window + threadIdx.y * SW + threadIdx.x;

  for (int c0 = c_begin; c0 < c_end; c0 += CS) {
    const int nch = min(CS, c_end - c0);
    stage_window(window, in_b + c0 * plane, plane, nch, SH, SW, Hp, Wp, tc.h0, tc.w0, tid);
    __syncthreads();
    if (active) {
      acc_t acc[CS];
#pragma unroll
      for (int c = 0; c < CS; ++c) acc[c] = acc_t(0);
      const scalar_t* kt = kp;
      for (int i = 0; i < k; ++i) {
        for (int j = 0; j < k; ++j, kt += HW) {
          const acc_t wv = static_cast<acc_t>(*kt);
          const acc_t* s = win + i * SW + j;
          // Channels past nch read stale shared memory inside the allocation; they are never stored.
#pragma unroll
          for (int c = 0; c < CS; ++c) acc[c] += wv * s[c * per];
        }
      }
#pragma unroll
      for (int c = 0; c < CS; ++c)
        if (c < nch) out_p[(c0 + c) * HW] = static_cast<scalar_t>(acc[c]);
    }
    __syncthreads();
  }
}

// -------------------------------------------------------------------------------------------------
// local correlation, K in {3, 5, 7}: k*k accumulators per pixel in registers, ROWS vertically adjacent
// pixels per thread as in the adaptive conv. Block split = channel split s; the output (out_t = scalar_t
// when splits == 1, else acc_t partial sums) is [splits, B, K*K, H, W].
// -------------------------------------------------------------------------------------------------
template <typename scalar_t, typename out_t, int K, int CS, int ROWS>
__global__ void __launch_bounds__(kThreads, sizeof(at::opmath_type<scalar_t>) == 4 ? 2 : 1)
    local_correlation_forward_cuda_kernel(const scalar_t* __restrict__ center, const scalar_t* __restrict__ padded,
                                          out_t* __restrict__ output, int B, int C, int H, int W, int tiles_x,
                                          int tiles_y, int splits, int split_size) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int KK = K * K;
  constexpr int TH = kThreadsY * ROWS;
  constexpr int SH = TH + K - 1;
  constexpr int SW = kThreadsX + K - 1;
  __shared__ acc_t window[CS * SH * SW];

  const TileCoord tc = decode_block(tiles_x, tiles_y, splits, TH);
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  const int h = tc.h0 + threadIdx.y * ROWS, w = tc.w0 + threadIdx.x;  // first of the thread's rows
  const bool active = h < H && w < W;
  const int Hp = H + K - 1, Wp = W + K - 1;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t plane = static_cast<int64_t>(Hp) * Wp;
  const int64_t pix = static_cast<int64_t>(h) * W + w;

  bool row_ok[ROWS];
  acc_t acc[ROWS][KK];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    row_ok[r] = active && h + r < H;
#pragma unroll
    for (int t = 0; t < KK; ++t) acc[r][t] = acc_t(0);
  }

  const int c_begin = tc.split * split_size;
  const int c_end = min(C, c_begin + split_size);
  const scalar_t* pad_b = padded + static_cast<int64_t>(tc.b) * C * plane;
  const scalar_t* ctr_p = center + static_cast<int64_t>(tc.b) * C * HW + pix;
  const acc_t* win = window + threadIdx.y * ROWS * SW + threadIdx.x;

  for (int c0 = c_begin; c0 < c_end; c0 += CS) {
    const int nch = min(CS, c_end - c0);
    // Issue the center loads first so their latency overlaps the staging and the barrier.
    acc_t g[CS][ROWS];
#pragma unroll
    for (int c = 0; c < CS; ++c)
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
        g[c][r] = (row_ok[r] && c < nch) ? static_cast<acc_t>(ctr_p[(c0 + c) * HW + r * W]) : acc_t(0);
    stage_window(window, pad_b + c0 * plane, plane, nch, SH, SW, Hp, Wp, tc.h0, tc.w0, tid);
    __syncthreads();
    if (active) {
#pragma unroll
      for (int c = 0; c < CS; ++c) {
        if (c < nch) {
          const acc_t* s = win + c * (SH * SW);
          // Window row rr is tap row rr - r of the thread's pixel r.
#pragma unroll
          for (int rr = 0; rr < K + ROWS - 1; ++rr) {
#pragma unroll
            for (int j = 0; j < K; ++j) {
              const acc_t v = s[rr * SW + j];
#pragma unroll
              for (int r = 0; r < ROWS; ++r)
                if (rr - r >= 0 && rr - r < K) acc[r][(rr - r) * K + j] += g[c][r] * v;
            }
          }
        }
      }
    }
    __syncthreads();
  }

  out_t* op = output + (static_cast<int64_t>(tc.split) * B + tc.b) * KK * HW + pix;
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
    if (row_ok[r]) {
#pragma unroll
      for (int t = 0; t < KK; ++t) op[t * HW + r * W] = static_cast<out_t>(acc[r][t]);
    }
}

// -------------------------------------------------------------------------------------------------
// local correlation, any odd k: a block handles TG taps [tg * TG, ...) of one channel split;
// the block's split index encodes (split, tap group) as split * tap_groups + tg.
// -------------------------------------------------------------------------------------------------
template <typename scalar_t, typename out_t, int CS, int TG>
__global__ void __launch_bounds__(kThreads)
    local_correlation_forward_generic_cuda_kernel(const scalar_t* __restrict__ center,
                                                  const scalar_t* __restrict__ padded, out_t* __restrict__ output,
                                                  int B, int C, int H, int W, int k, int tiles_x, int tiles_y,
                                                  int splits, int split_size, int tap_groups) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char featup_dyn_smem[];
  acc_t* window = reinterpret_cast<acc_t*>(featup_dyn_smem);

  const int KK = k * k;
  const int SH = kThreadsY + k - 1, SW = kThreadsX + k - 1, per = SH * SW;
  const TileCoord tc = decode_block(tiles_x, tiles_y, splits * tap_groups, kThreadsY);
  const int split = tc.split / tap_groups;
  const int t0 = (tc.split - split * tap_groups) * TG;
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  const int h = tc.h0 + threadIdx.y, w = tc.w0 + threadIdx.x;
  const bool active = h < H && w < W;
  const int Hp = H + k - 1, Wp = W + k - 1;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t plane = static_cast<int64_t>(Hp) * Wp;
  const int64_t pix = static_cast<int64_t>(h) * W + w;

  // Shared-memory offset of each tap of the group (taps past k*k point at offset 0 and are not stored).
  int off[TG];
  acc_t acc[TG];
#pragma unroll
  for (int q = 0; q < TG; ++q) {
    const int t = t0 + q;
    off[q] = t < KK ? (t / k) * SW + (t % k) : 0;
    acc[q] = acc_t(0);
  }

  const int c_begin = split * split_size;
  const int c_end = min(C, c_begin + split_size);
  const scalar_t* pad_b = padded + static_cast<int64_t>(tc.b) * C * plane;
  const scalar_t* ctr_p = center + static_cast<int64_t>(tc.b) * C * HW + pix;
  const acc_t* win = window + threadIdx.y * SW + threadIdx.x;

  for (int c0 = c_begin; c0 < c_end; c0 += CS) {
    const int nch = min(CS, c_end - c0);
    acc_t g[CS];
#pragma unroll
    for (int c = 0; c < CS; ++c) g[c] = (active && c < nch) ? static_cast<acc_t>(ctr_p[(c0 + c) * HW]) : acc_t(0);
    stage_window(window, pad_b + c0 * plane, plane, nch, SH, SW, Hp, Wp, tc.h0, tc.w0, tid);
    __syncthreads();
    if (active) {
#pragma unroll
      for (int c = 0; c < CS; ++c) {
        if (c < nch) {
          const acc_t* s = win + c * per;
#pragma unroll
          for (int q = 0; q < TG; ++q)
            if (t0 + q < KK) acc[q] += g[c] * s[off[q]];  // uniform per block: the last group's spare taps
        }
      }
    }
    __syncthreads();
  }

  if (active) {
    out_t* op = output + (static_cast<int64_t>(split) * B + tc.b) * KK * HW + pix;
#pragma unroll
    for (int q = 0; q < TG; ++q)
      if (t0 + q < KK) op[(t0 + q) * HW] = static_cast<out_t>(acc[q]);
  }
}

// -------------------------------------------------------------------------------------------------
// Direct kernels (no shared memory) for windows whose tile does not fit in 48 KiB of shared memory.
// One thread per output element, grid-stride over int64 indices.
// -------------------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void __launch_bounds__(kDirectThreads)
    adaptive_conv_forward_direct_cuda_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ kernel,
                                             scalar_t* __restrict__ output, int64_t total, int C, int H, int W, int k) {
  using acc_t = at::opmath_type<scalar_t>;
  const int Hp = H + k - 1, Wp = W + k - 1;
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int w = static_cast<int>(idx % W);
    const int h = static_cast<int>((idx / W) % H);
    const int64_t bc = idx / HW;
    const int64_t b = bc / C;
    const scalar_t* x = input + (bc * Hp + h) * Wp + w;
    const scalar_t* kt = kernel + b * k * k * HW + static_cast<int64_t>(h) * W + w;
    acc_t acc = acc_t(0);
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j)
        acc += static_cast<acc_t>(kt[(i * k + j) * HW]) * static_cast<acc_t>(x[static_cast<int64_t>(i) * Wp + j]);
    output[idx] = static_cast<scalar_t>(acc);
  }
}

// The transposed op (adaptive_conv's input gradient), one thread per output pixel of [B, C, H+k-1, W+k-1]:
// out[b,c,y,x] = sum_{i,j} kernel[b,i*k+j,y-i,x-j] * grad[b,c,y-i,x-j] over the taps whose source pixel lies in
// the H x W maps. The taps are read where they lie (no flipped / padded copies); neighbouring threads read
// neighbouring columns, so the loads coalesce; no atomics (deterministic).
template <typename scalar_t>
__global__ void __launch_bounds__(kDirectThreads)
    adaptive_conv_transpose_direct_cuda_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ kernel,
                                               scalar_t* __restrict__ output, int64_t total, int C, int H, int W,
                                               int k) {
  using acc_t = at::opmath_type<scalar_t>;
  const int Hp = H + k - 1, Wp = W + k - 1;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t plane = static_cast<int64_t>(Hp) * Wp;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int x = static_cast<int>(idx % Wp);
    const int y = static_cast<int>((idx / Wp) % Hp);
    const int64_t bc = idx / plane;
    const int64_t b = bc / C;
    const int i_lo = max(0, y - (H - 1)), i_hi = min(k - 1, y);
    const int j_lo = max(0, x - (W - 1)), j_hi = min(k - 1, x);
    const scalar_t* g = grad + bc * HW;
    const scalar_t* kt = kernel + b * k * k * HW;
    acc_t acc = acc_t(0);
    for (int i = i_lo; i <= i_hi; ++i) {
      const int64_t row = static_cast<int64_t>(y - i) * W;
      for (int j = j_lo; j <= j_hi; ++j) {
        const int64_t src = row + (x - j);
        acc += static_cast<acc_t>(kt[(i * k + j) * HW + src]) * static_cast<acc_t>(g[src]);
      }
    }
    output[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kDirectThreads)
    local_correlation_forward_direct_cuda_kernel(const scalar_t* __restrict__ center,
                                                 const scalar_t* __restrict__ padded, scalar_t* __restrict__ output,
                                                 int64_t total, int C, int H, int W, int k) {
  using acc_t = at::opmath_type<scalar_t>;
  const int Hp = H + k - 1, Wp = W + k - 1;
  const int KK = k * k;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t plane = static_cast<int64_t>(Hp) * Wp;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int w = static_cast<int>(idx % W);
    const int h = static_cast<int>((idx / W) % H);
    const int64_t bt = idx / HW;
    const int t = static_cast<int>(bt % KK);
    const int64_t b = bt / KK;
    const int i = t / k, j = t % k;
    const scalar_t* g = center + b * C * HW + static_cast<int64_t>(h) * W + w;
    const scalar_t* x = padded + b * C * plane + static_cast<int64_t>(h + i) * Wp + (w + j);
    acc_t acc = acc_t(0);
    for (int c = 0; c < C; ++c) acc += static_cast<acc_t>(g[c * HW]) * static_cast<acc_t>(x[c * plane]);
    output[idx] = static_cast<scalar_t>(acc);
  }
}

}  // namespace featup
