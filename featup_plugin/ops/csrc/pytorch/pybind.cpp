// The Python module of the extension: op registration and build / CPU-path queries. The ops themselves are called
// through the dispatcher (torch.ops.featup.*, registered by register_ops in register_ops.cpp).
#include "pytorch_cpp_helper.hpp"

namespace featup {
void register_ops();
bool with_cuda();
std::string cpu_isa();
void set_cpu_isa(const std::string& name);
void cpu_cache_enable(int64_t max_cached, int64_t min_bytes, bool huge_pages);
void cpu_cache_disable();
void cpu_cache_empty();
std::tuple<bool, int64_t, int64_t, int64_t, int64_t, int64_t> cpu_cache_stats();
}  // namespace featup

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("register_ops", &featup::register_ops,
        "define the featup ops (torch.ops.featup.*) and register this module's CPU (and CUDA) kernels; once per "
        "process (later calls do nothing)");
  m.def("with_cuda", &featup::with_cuda, "whether the extension was compiled with CUDA kernels");
  m.def("cpu_isa", &featup::cpu_isa, "the CPU code path in use: avx512, avx2 or baseline");
  m.def("set_cpu_isa", &featup::set_cpu_isa, "force a CPU code path (tests, benchmarks)", py::arg("name"));
  m.def("cpu_cache_enable", &featup::cpu_cache_enable,
        "install the caching CPU allocator (featup_plugin.ops.enable_cpu_cache)", py::arg("max_cached"),
        py::arg("min_bytes"), py::arg("huge_pages"));
  m.def("cpu_cache_disable", &featup::cpu_cache_disable, "restore the previous CPU allocator, unmap cached blocks");
  m.def("cpu_cache_empty", &featup::cpu_cache_empty, "unmap the cached free blocks");
  m.def("cpu_cache_stats", &featup::cpu_cache_stats,
        "(enabled, cached bytes, live bytes, hits, misses, evictions) of the caching CPU allocator");
}
