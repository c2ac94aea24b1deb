"""Finds a usable CUDA toolkit (no torch import, so setup.py can load this file before building).

torch guesses CUDA_HOME from ``which nvcc``; where ``nvcc`` is a wrapper script (``/usr/local/bin/nvcc``
calling the real one) that guess is ``/usr/local``, which has no ``libcudart`` and the link fails. We accept a
directory only if it has both ``bin/nvcc`` and the CUDA runtime library.
"""

import os
import shutil


def _usable(root):
    if not root or not os.path.isfile(os.path.join(root, 'bin', 'nvcc')):
        return False
    return any(
        os.path.exists(os.path.join(root, lib, 'libcudart.so')) for lib in ('lib64', 'lib', 'targets/x86_64-linux/lib')
    )


def find_cuda_home():
    """The first usable of $CUDA_HOME, $CUDA_PATH, /usr/local/cuda and nvcc's parent directory, or None."""
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'), '/usr/local/cuda']
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if _usable(root):
            return root
    return None


def export_cuda_home():
    """Sets CUDA_HOME for torch.utils.cpp_extension (call before importing it). Returns the path or None."""
    root = find_cuda_home()
    if root:
        os.environ['CUDA_HOME'] = root
    return root
