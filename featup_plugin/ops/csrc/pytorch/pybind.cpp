// The Python module of the extension: op registration and build / CPU-path queries. The ops themselves are called
// through the dispatcher (torch.ops.featup.*, registered by register_ops in register_ops.cpp).
#include "pytorch_cpp_helper.hpp"

namespace featup {
void register_ops();
bool with_cuda();
std::string cpu_isa();
void set_cpu_isa(const std::string& name);
}  // namespace featup

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("register_ops", &featup::register_ops,
        "define the featup ops (torch.ops.featup.*) and register this module's CPU (and CUDA) kernels; once per "
        "process (later calls do nothing)");
  m.def("with_cuda", &featup::with_cuda, "whether the extension was compiled with CUDA kernels");
  m.def("cpu_isa", &featup::cpu_isa, "the CPU code path in use: avx512, avx2 or baseline");
  m.def("set_cpu_isa", &featup::set_cpu_isa, "force a CPU code path (tests, benchmarks)", py::arg("name"));
}
