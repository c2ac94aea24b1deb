"""Compiler flags shared by ``setup.py`` and the JIT build (plain Python, no imports: setup.py loads this file by
path before the package is importable). One list each, so the prebuilt and the JIT-built extension are the same
code. No ``--use_fast_math``: it flushes float32 denormals and approximates division, and the op's float32 results
are tested against float64 references at 1e-4 relative error; the kernels are memory-bound, so it buys nothing.
"""

CXX_FLAGS = ['-O3', '-fopenmp']
NVCC_FLAGS = ['-O3']
LD_FLAGS = ['-fopenmp']
CUDA_MACRO = 'WITH_CUDA'
