"""The math of featup_plugin: autograd functions over C++/CUDA kernels, with pure-PyTorch references.

Derivation / details: docs/ops.md (the JBU primitives, backend selection, kernels), docs/pac.md (PAC layers).
"""

from ._backend import backend_name, register_ops
from .adaptive_conv import adaptive_conv, adaptive_conv_reference, local_correlation, local_correlation_reference
from .cpu_cache import cpu_cache_stats, disable_cpu_cache, empty_cpu_cache, enable_cpu_cache
from .pac import PacConv2d, PacConvTranspose2d, PacPool2d, pac_conv2d, pac_conv_transpose2d, pac_kernel2d, pac_pool2d
from .reference import adaptive_conv_taps, local_correlation_taps

__all__ = [
    'adaptive_conv',
    'local_correlation',
    'adaptive_conv_reference',
    'local_correlation_reference',
    'adaptive_conv_taps',
    'local_correlation_taps',
    'backend_name',
    'register_ops',
    'enable_cpu_cache',
    'disable_cpu_cache',
    'empty_cpu_cache',
    'cpu_cache_stats',
    'PacConv2d',
    'PacConvTranspose2d',
    'PacPool2d',
    'pac_conv2d',
    'pac_conv_transpose2d',
    'pac_pool2d',
    'pac_kernel2d',
]
