"""Builds jrnn's optional native CPU loops (``src/jrnn/kernels/cpu_rnn.cc``).

Everything else about the package is in ``pyproject.toml``. The extension is
an XLA FFI library (headers from jaxlib, its own packed GEMM), compiled
for the installing machine's CPU; if it cannot be built the install still
succeeds and jrnn uses its XLA loops.
"""

import importlib.util
from pathlib import Path

from setuptools import Extension, setup


def _package_dir(name):
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def native_extension():
    return Extension(
        "jrnn.kernels._cpu_rnn",
        sources=["src/jrnn/kernels/cpu_rnn.cc"],
        depends=["src/jrnn/kernels/packed_gemm.h"],
        include_dirs=[str(_package_dir("jaxlib") / "include")],
        libraries=["mvec"],
        extra_compile_args=["-std=c++17", "-O3", "-march=native", "-mprefer-vector-width=512",
                            "-ffp-contract=fast", "-fopenmp-simd", "-fno-math-errno", "-Wno-attributes",
                            "-Wno-return-type"],
        extra_link_args=["-Wl,--no-undefined"],
        language="c++",
        optional=True,
    )


setup(ext_modules=[native_extension()])
