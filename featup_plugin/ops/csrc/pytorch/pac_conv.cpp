// Pixel-adaptive convolution (PAC) drivers: tiled implicit GEMM over gathered, kernel-weighted columns.
//
//   pac_forward(input [B,C,H,W], kernel [B,T,Ho,Wo], weight [O,C,kh,kw] or None, bias [O] or None, geom)
//     conv (weight given): out[b, o, p] = bias[o] + sum_{c,t} weight[o, c, t] * K[b, t, p] * v[b, c, src(p, t)]
//     pool (no weight):    out[b, c, p] = sum_t K[b, t, p] * v[b, c, src(p, t)]
//   pac_backward(grad_out, input, kernel, weight or None, geom, need_input, need_kernel, need_weight)
//     -> (grad_input, grad_kernel, grad_weight): an empty [0] tensor where not requested (a registered op returns
//        defined tensors); the bias gradient is a plain sum over grad_out, left to the caller.
// geom = {kh, kw, sh, sw, ph, pw, dh, dw}; src(p, t) as in common/pac_common.hpp.
//
// The columns col[c*T + t, p] = K * v[src] are never built for a whole image: tiles of at most `tile_bytes` of
// columns are gathered by a device kernel and multiplied with ATen's GEMM (at::mm, BLAS / cuBLAS), so the extra
// memory is O(tile) rather than the O(C * k*k * Ho * Wo) of an unfold. The backward re-gathers a tile for the
// weight gradient (grad_out_tile @ col^T) and scatters dcol = W^T @ grad_out_tile into the input and kernel
// gradients.
#include <algorithm>
#include <tuple>
#include <vector>

#include "pac_common.hpp"
#include "pytorch_cpp_helper.hpp"

namespace featup {
namespace {

PacGeom make_geom(const at::Tensor& input, const at::Tensor& kernel, at::IntArrayRef geom) {
  TORCH_CHECK(geom.size() == 8, "pac: geom must be {kh, kw, sh, sw, ph, pw, dh, dw}, got ", geom.size(), " values");
  TORCH_CHECK(input.dim() == 4, "pac: input must be 4-D [B, C, H, W], got ", input.dim(), "-D");
  TORCH_CHECK(kernel.dim() == 4, "pac: kernel must be 4-D [B, kh*kw, Ho, Wo], got ", kernel.dim(), "-D");
  TORCH_CHECK(input.scalar_type() == kernel.scalar_type(), "pac: input and kernel must have the same dtype, got ",
              input.scalar_type(), " and ", kernel.scalar_type());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "pac: the compiled op supports float32 and float64, got ", input.scalar_type());
  TORCH_CHECK(input.device() == kernel.device(), "pac: input and kernel must be on the same device");
  check_cpu_or_cuda(input, "pac");
  PacGeom g{input.size(0), input.size(1), input.size(2), input.size(3), geom[0], geom[1], geom[2],
            geom[3],       geom[4],       geom[5],       geom[6],       geom[7], 0,       0};
  TORCH_CHECK(g.kh > 0 && g.kw > 0 && g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0 && g.ph >= 0 && g.pw >= 0,
              "pac: invalid geometry");
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "pac: the output would be empty for input ", input.sizes());
  TORCH_CHECK(kernel.size(0) == g.B && kernel.size(1) == g.taps() && kernel.size(2) == g.Ho && kernel.size(3) == g.Wo,
              "pac: kernel must be [B, kh*kw, Ho, Wo] = [", g.B, ", ", g.taps(), ", ", g.Ho, ", ", g.Wo, "], got ",
              kernel.sizes());
  TORCH_CHECK(input.numel() > 0, "pac: input must not be empty");
  return g;
}

at::Tensor weight_matrix(const c10::optional<at::Tensor>& weight, const PacGeom& g, const at::Tensor& input) {
  if (!weight.has_value() || !weight->defined()) return at::Tensor();
  const at::Tensor& w = *weight;
  TORCH_CHECK(w.dim() == 4 && w.size(1) == g.C && w.size(2) == g.kh && w.size(3) == g.kw,
              "pac: weight must be [O, C, kh, kw] = [O, ", g.C, ", ", g.kh, ", ", g.kw, "], got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == input.scalar_type() && w.device() == input.device(),
              "pac: weight must have the input's dtype and device");
  return w.reshape({w.size(0), g.C * g.taps()}).contiguous();
}

std::vector<PacTile> make_tiles(const PacGeom& g, int64_t tile_bytes, int64_t elem) {
  const int64_t per_col = std::max<int64_t>(1, g.C * g.taps() * elem);
  const int64_t budget = std::max<int64_t>(1, tile_bytes / per_col);
  const int64_t P = g.pixels();
  std::vector<PacTile> tiles;
  if (budget >= P) {  // whole images per tile
    const int64_t nb = std::min(g.B, budget / P);
    for (int64_t b0 = 0; b0 < g.B; b0 += nb) tiles.push_back({b0, std::min(nb, g.B - b0), 0, P});
  } else {
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t p0 = 0; p0 < P; p0 += budget) tiles.push_back({b, 1, p0, std::min(budget, P - p0)});
  }
  return tiles;
}

void gather(const at::Tensor& input, const at::Tensor& kernel, at::Tensor& col, const PacGeom& g, const PacTile& t) {
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return pac_gather_cuda(input, kernel, col, g, t);
#else
    TORCH_CHECK(false, "featup_plugin was built without CUDA support");
#endif
  }
  pac_gather_cpu(input, kernel, col, g, t);
}

void scatter(const at::Tensor& dcol, const at::Tensor& input, const at::Tensor& kernel, at::Tensor& gi, at::Tensor& gk,
             const PacGeom& g, const PacTile& t) {
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return pac_scatter_cuda(dcol, input, kernel, gi, gk, g, t);
#else
    TORCH_CHECK(false, "featup_plugin was built without CUDA support");
#endif
  }
  pac_scatter_cpu(dcol, input, kernel, gi, gk, g, t);
}

// [rows, nb*n] tile <-> rows of [B, rows, P].
void store_tile(at::Tensor& out, const at::Tensor& res, const PacTile& t) {
  if (t.nb == 1) {
    out.select(0, t.b0).narrow(1, t.p0, t.n).copy_(res);
  } else {
    out.narrow(0, t.b0, t.nb).copy_(res.view({res.size(0), t.nb, t.n}).permute({1, 0, 2}));
  }
}

at::Tensor load_tile(const at::Tensor& full, const PacTile& t) {
  if (t.nb == 1) return full.select(0, t.b0).narrow(1, t.p0, t.n);
  return full.narrow(0, t.b0, t.nb).permute({1, 0, 2}).reshape({full.size(1), t.cols()});
}

}  // namespace

at::Tensor pac_forward(const at::Tensor& input_, const at::Tensor& kernel_, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias, at::IntArrayRef geom, int64_t tile_bytes) {
  const at::Tensor input = input_.contiguous(), kernel = kernel_.contiguous();
  const PacGeom g = make_geom(input, kernel, geom);
  const at::Tensor wm = weight_matrix(weight, g, input);
  const int64_t T = g.taps(), P = g.pixels();
  const int64_t O = wm.defined() ? wm.size(0) : g.C;
  // Allocated in the returned shape and written through a [B, O, P] view: the op returns the base tensor, not a
  // view of a temporary (autograd forbids in-place ops on such views, e.g. a ReLU(inplace=True) after the layer).
  at::Tensor result = at::empty({g.B, O, g.Ho, g.Wo}, input.options());
  at::Tensor out = result.view({g.B, O, P});
  const auto tiles = make_tiles(g, tile_bytes, input.element_size());
  at::Tensor buffer = at::empty({g.C * T * tiles[0].cols()}, input.options());
  for (const PacTile& t : tiles) {
    at::Tensor col = buffer.narrow(0, 0, g.C * T * t.cols()).view({g.C * T, t.cols()});
    gather(input, kernel, col, g, t);
    at::Tensor res = wm.defined() ? at::mm(wm, col) : col.view({g.C, T, t.cols()}).sum(1);
    store_tile(out, res, t);
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(wm.defined(), "pac: bias needs a weight");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == O, "pac: bias must be [", O, "], got ", bias->sizes());
    out.add_(bias->view({1, O, 1}));
  }
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pac_backward(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                            const at::Tensor& kernel_,
                                                            const c10::optional<at::Tensor>& weight,
                                                            at::IntArrayRef geom, bool need_input, bool need_kernel,
                                                            bool need_weight, int64_t tile_bytes) {
  const at::Tensor input = input_.contiguous(), kernel = kernel_.contiguous();
  const PacGeom g = make_geom(input, kernel, geom);
  const at::Tensor wm = weight_matrix(weight, g, input);
  const int64_t T = g.taps(), P = g.pixels();
  const int64_t O = wm.defined() ? wm.size(0) : g.C;
  TORCH_CHECK(grad_out_.dim() == 4 && grad_out_.size(0) == g.B && grad_out_.size(1) == O && grad_out_.size(2) == g.Ho &&
                  grad_out_.size(3) == g.Wo,
              "pac: grad_out has shape ", grad_out_.sizes(), ", expected [", g.B, ", ", O, ", ", g.Ho, ", ", g.Wo, "]");
  const at::Tensor grad_out = grad_out_.to(input.scalar_type()).contiguous().view({g.B, O, P});
  need_weight = need_weight && wm.defined();
  at::Tensor gi = need_input ? at::zeros_like(input) : at::Tensor();
  at::Tensor gk = need_kernel ? at::empty_like(kernel) : at::Tensor();
  // grad_weight in the weight's shape, accumulated through a [O, C*T] view (returned as the base, see pac_forward)
  at::Tensor gw = need_weight ? at::zeros(weight->sizes(), wm.options()) : at::Tensor();
  at::Tensor gw_mat = need_weight ? gw.view({O, g.C * T}) : at::Tensor();
  // Not requested: an empty [0] tensor (the op's schema returns three defined tensors).
  const auto result = [&] {
    const auto none = [&] { return at::empty({0}, input.options()); };
    return std::make_tuple(gi.defined() ? gi : none(), gk.defined() ? gk : none(), gw.defined() ? gw : none());
  };
  if (!need_input && !need_kernel && !need_weight) return result();
  const auto tiles = make_tiles(g, tile_bytes, input.element_size());
  at::Tensor buffer = at::empty({g.C * T * tiles[0].cols()}, input.options());
  for (const PacTile& t : tiles) {
    const at::Tensor dout = load_tile(grad_out, t);  // [O, cols]
    if (need_weight) {
      at::Tensor col = buffer.narrow(0, 0, g.C * T * t.cols()).view({g.C * T, t.cols()});
      gather(input, kernel, col, g, t);
      gw_mat.addmm_(dout, col.t());
    }
    if (need_input || need_kernel) {
      at::Tensor dcol = wm.defined()
                            ? at::mm(wm.t(), dout)
                            : dout.reshape({g.C, 1, t.cols()}).expand({g.C, T, t.cols()}).reshape({g.C * T, t.cols()});
      dcol = dcol.contiguous();
      scatter(dcol, input, kernel, gi, gk, g, t);
    }
  }
  return result();
}

}  // namespace featup
