// The featup_plugin ops in PyTorch's dispatcher: schemas in the `featup` namespace and the CPU / CUDA kernels
// (torch.ops.featup.*). The fake (shape-only) implementations and the autograd formulas are registered from
// Python (featup_plugin/ops/_library.py); see docs/ops.md#registration-with-torchlibrary.
//
// Registration is done by register_ops(), called by the Python loader (featup_plugin/ops/_backend.py) for the one
// compiled module it chose, instead of a static TORCH_LIBRARY block: a process may import the prebuilt module only
// to ask with_cuda() and then JIT-build another one (a prebuilt module without CUDA kernels on a GPU machine), and
// with two static TORCH_LIBRARY(featup, ...) blocks the second library's static initialiser throws during dlopen
// and the process aborts (std::terminate). The torch::Library objects are those the TORCH_LIBRARY /
// TORCH_LIBRARY_IMPL macros create; they are never destroyed (the ops stay registered until the process exits).
#include <mutex>
#include <tuple>

#include "pytorch_cpp_helper.hpp"

namespace featup {

at::Tensor adaptive_conv_forward(const at::Tensor& input, const at::Tensor& kernel);
at::Tensor local_correlation_forward(const at::Tensor& center, const at::Tensor& padded);
at::Tensor adaptive_conv_transpose(const at::Tensor& grad, const at::Tensor& kernel);
at::Tensor pac_forward(const at::Tensor& input, const at::Tensor& kernel, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias, at::IntArrayRef geom, int64_t tile_bytes);
std::tuple<at::Tensor, at::Tensor, at::Tensor> pac_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                            const at::Tensor& kernel,
                                                            const c10::optional<at::Tensor>& weight,
                                                            at::IntArrayRef geom, bool need_input, bool need_kernel,
                                                            bool need_weight, int64_t tile_bytes);
at::Tensor upsample2x_bicubic_pad_cpu(const at::Tensor& input, int64_t pad);
at::Tensor upsample2x_bicubic_pad_backward_cpu(const at::Tensor& grad, int64_t pad);

namespace {

void define_schemas(torch::Library& m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  // kernel: tap-major [B, k*k, H, W]; input [B, C, H+k-1, W+k-1] -> [B, C, H, W]
  m.def("adaptive_conv(Tensor input, Tensor kernel) -> Tensor", tags);
  // center [B, C, H, W], padded [B, C, H+k-1, W+k-1] -> [B, k*k, H, W]
  m.def("local_correlation(Tensor center, Tensor padded) -> Tensor", tags);
  // grad [B, C, H, W], kernel [B, k*k, H, W] -> [B, C, H+k-1, W+k-1]: adaptive_conv's input gradient
  m.def("adaptive_conv_transpose(Tensor grad, Tensor kernel) -> Tensor", tags);
  // geom = [kh, kw, sh, sw, ph, pw, dh, dw]; weight None: PAC pooling
  m.def("pac_forward(Tensor input, Tensor kernel, Tensor? weight, Tensor? bias, int[] geom, int tile_bytes) -> Tensor",
        tags);
  // -> (grad_input, grad_kernel, grad_weight); an empty [0] tensor for a gradient that was not requested
  m.def(
      "pac_backward(Tensor grad_out, Tensor input, Tensor kernel, Tensor? weight, int[] geom, bool need_input, "
      "bool need_kernel, bool need_weight, int tile_bytes) -> (Tensor, Tensor, Tensor)",
      tags);
  // reflect_pad(bicubic x2 upsampling(input), pad): [B, C, h, w] -> [B, C, 2h+2pad, 2w+2pad] (CPU kernel only)
  m.def("upsample2x_bicubic_pad(Tensor input, int pad) -> Tensor", tags);
  // its input gradient (the transpose): grad [B, C, 2h+2pad, 2w+2pad] -> [B, C, h, w]
  m.def("upsample2x_bicubic_pad_backward(Tensor grad, int pad) -> Tensor", tags);
}

// The entry points check their arguments and pick the device code themselves, so one function serves both keys.
void impl_kernels(torch::Library& m) {
  m.impl("adaptive_conv", TORCH_FN(adaptive_conv_forward));
  m.impl("local_correlation", TORCH_FN(local_correlation_forward));
  m.impl("adaptive_conv_transpose", TORCH_FN(adaptive_conv_transpose));
  m.impl("pac_forward", TORCH_FN(pac_forward));
  m.impl("pac_backward", TORCH_FN(pac_backward));
}

}  // namespace

void register_ops() {
  static std::once_flag once;
  std::call_once(once, [] {
    auto* defs = new torch::Library(torch::Library::DEF, "featup", c10::nullopt, __FILE__, __LINE__);
    define_schemas(*defs);
    auto* cpu = new torch::Library(torch::Library::IMPL, "featup", c10::DispatchKey::CPU, __FILE__, __LINE__);
    impl_kernels(*cpu);
    cpu->impl("upsample2x_bicubic_pad", TORCH_FN(upsample2x_bicubic_pad_cpu));
    cpu->impl("upsample2x_bicubic_pad_backward", TORCH_FN(upsample2x_bicubic_pad_backward_cpu));
#ifdef WITH_CUDA
    auto* cuda = new torch::Library(torch::Library::IMPL, "featup", c10::DispatchKey::CUDA, __FILE__, __LINE__);
    impl_kernels(*cuda);
#endif
  });
}

}  // namespace featup
