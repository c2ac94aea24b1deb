#include "pytorch_cpp_helper.hpp"

namespace featup {
at::Tensor adaptive_conv_forward(const at::Tensor& input, const at::Tensor& kernel);
at::Tensor local_correlation_forward(const at::Tensor& center, const at::Tensor& padded);
bool with_cuda();
std::string cpu_isa();
void set_cpu_isa(const std::string& name);
at::Tensor pac_forward(const at::Tensor& input, const at::Tensor& kernel, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias, std::vector<int64_t> geom, int64_t tile_bytes);
std::vector<at::Tensor> pac_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& kernel,
                                     const c10::optional<at::Tensor>& weight, std::vector<int64_t> geom,
                                     bool need_input, bool need_kernel, bool need_weight, int64_t tile_bytes);
}  // namespace featup

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("adaptive_conv_forward", &featup::adaptive_conv_forward,
        "out[b,c,h,w] = sum_t kernel[b,t,h,w] * input[b,c,h+i,w+j] (kernel tap-major [B,k*k,H,W])", py::arg("input"),
        py::arg("kernel"));
  m.def("local_correlation_forward", &featup::local_correlation_forward,
        "out[b,t,h,w] = sum_c center[b,c,h,w] * padded[b,c,h+i,w+j]", py::arg("center"), py::arg("padded"));
  m.def("with_cuda", &featup::with_cuda, "whether the extension was compiled with CUDA kernels");
  m.def("cpu_isa", &featup::cpu_isa, "the CPU code path in use: avx512, avx2 or baseline");
  m.def("set_cpu_isa", &featup::set_cpu_isa, "force a CPU code path (tests, benchmarks)", py::arg("name"));
  m.def("pac_forward", &featup::pac_forward,
        "pixel-adaptive conv (weight given) or pooling (weight None), tiled implicit GEMM; geom = "
        "{kh, kw, sh, sw, ph, pw, dh, dw}",
        py::arg("input"), py::arg("kernel"), py::arg("weight"), py::arg("bias"), py::arg("geom"),
        py::arg("tile_bytes"));
  m.def("pac_backward", &featup::pac_backward, "gradients of pac_forward: [grad_input, grad_kernel, grad_weight]",
        py::arg("grad_out"), py::arg("input"), py::arg("kernel"), py::arg("weight"), py::arg("geom"),
        py::arg("need_input"), py::arg("need_kernel"), py::arg("need_weight"), py::arg("tile_bytes"));
}
