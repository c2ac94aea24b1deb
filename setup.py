"""Builds featup_plugin and its C++/CUDA extension ``featup_plugin._ext``.

Install (needs torch already installed, hence no build isolation):
    pip install --no-build-isolation -e .

Environment:
    FORCE_CUDA=1       build the CUDA kernels even when no GPU is visible (needs nvcc and a CUDA build of torch)
    FEATUP_NO_CUDA=1   build the CPU kernels only
    FEATUP_NO_EXT=1    install the pure-Python package only (the op then JIT-builds or falls back at run time)
    TORCH_CUDA_ARCH_LIST  GPU architectures (default: the visible GPU's, else "7.5;8.0;9.0+PTX")
    MAX_JOBS           parallel compile jobs (ninja)
The CUDA kernels are built by default whenever a CUDA toolkit (nvcc) and a CUDA build of torch are present.
"""

import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('featup_plugin', 'ops', 'csrc')


def version():
    scope = {}
    with open(os.path.join(HERE, 'featup_plugin', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def flag(name):
    return os.environ.get(name, '0').lower() in ('1', 'true', 'yes', 'on')


def _ops_module(name):
    """featup_plugin/ops/<name>.py, loaded by path: the package itself is not importable yet."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, 'featup_plugin', 'ops', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_cuda_home():
    """See featup_plugin/ops/_cuda_home.py."""
    return _ops_module('_cuda_home').export_cuda_home()


def extensions():
    if flag('FEATUP_NO_EXT'):
        return [], {}
    export_cuda_home()  # before torch.utils.cpp_extension reads CUDA_HOME
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cuda_torch = torch.version.cuda is not None
    if flag('FORCE_CUDA') and not (cuda_torch and CUDA_HOME):
        raise RuntimeError(
            'FORCE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit (nvcc); found torch '
            f'{torch.__version__} (CUDA {torch.version.cuda}) and CUDA_HOME={CUDA_HOME}'
        )
    with_cuda = not flag('FEATUP_NO_CUDA') and (flag('FORCE_CUDA') or (cuda_torch and CUDA_HOME is not None))

    sources = sorted(glob.glob(os.path.join(CSRC, 'pytorch', '*.cpp')))
    sources += sorted(glob.glob(os.path.join(CSRC, 'pytorch', 'cpu', '*.cpp')))
    include_dirs = [os.path.join(HERE, CSRC, 'common'), os.path.join(HERE, CSRC, 'common', 'cuda')]
    flags = _ops_module('_build_flags')  # the same flags as the JIT build
    cxx = list(flags.CXX_FLAGS)
    kwargs = dict(include_dirs=include_dirs, extra_link_args=list(flags.LD_FLAGS))
    if with_cuda:
        if not torch.cuda.is_available() and not os.environ.get('TORCH_CUDA_ARCH_LIST'):
            os.environ['TORCH_CUDA_ARCH_LIST'] = '7.5;8.0;9.0+PTX'  # sm_80 code also runs on sm_86/89
        sources += sorted(glob.glob(os.path.join(CSRC, 'pytorch', 'cuda', '*.cu')))
        ext = CUDAExtension(
            'featup_plugin._ext',
            sources,
            define_macros=[(flags.CUDA_MACRO, None)],
            extra_compile_args={'cxx': cxx, 'nvcc': list(flags.NVCC_FLAGS)},
            **kwargs,
        )
    else:
        ext = CppExtension('featup_plugin._ext', sources, extra_compile_args={'cxx': cxx}, **kwargs)
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    name='featup_plugin',
    version=version(),
    description='FeatUp (features at any resolution) for MMSegmentation and Detectron2',
    long_description=open(os.path.join(HERE, 'README.md')).read()
    if os.path.exists(os.path.join(HERE, 'README.md'))
    else '',
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.9',
    packages=find_packages(exclude=('tests', 'tests.*', 'tools', 'configs')),
    package_data={
        'featup_plugin.ops': ['csrc/**/*.cpp', 'csrc/**/*.cu', 'csrc/**/*.cuh', 'csrc/**/*.hpp', 'csrc/**/*.h']
    },
    include_package_data=True,
    install_requires=['torch>=2.1', 'numpy'],  # the C++ uses const_data_ptr / mutable_data_ptr (2.1)
    extras_require={
        'mmseg': ['mmengine', 'mmcv>=2.0.0rc4,<2.2.0', 'mmsegmentation>=1.0', 'ftfy', 'regex'],
        'timm': ['timm'],
        'viz': ['matplotlib'],  # featup_plugin.viz.plot_feats (pca and the rest need only torch)
        'tests': ['pytest', 'timm'],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
