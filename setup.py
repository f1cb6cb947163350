"""Builds the engine's native recurrent kernels at install; the project's metadata is in pyproject.toml.

The extension is optional: where no C compiler exists, or it fails, the install still succeeds and
the engine runs its Numba or NumPy cells (``model_core.native.REASON`` says why). OpenMP (threads
for ``model_core.set_num_threads``) is tried first, then dropped if the toolchain lacks it.
The kernels' library is plain C loaded with ctypes, so it does not depend on the Python version's
C API; the second, small extension (``step_entry.c``: a frozen layer's ``step()`` in one call) is a
CPython module built against NumPy's C API (NumPy is a build requirement in pyproject.toml, pinned as
at run time), optional on top of it.
"""
import hashlib
from pathlib import Path

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = "-fopenmp"
STEP_ENTRY = Path("model_core/native/step_entry.c")     # its hash as model_core.native.step_entry_hash()


class OptionalBuildExt(build_ext):
    def build_extension(self, ext):
        try:
            super().build_extension(ext)
            return
        except Exception as exc:  # any compiler failure: retry without OpenMP
            print(f"model_core native kernels: build with OpenMP failed ({exc}); retrying without")
        ext.extra_compile_args = [a for a in ext.extra_compile_args if a != OPENMP]
        ext.extra_link_args = [a for a in ext.extra_link_args if a != OPENMP]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"model_core native kernels: not built ({exc}); the engine falls back to Numba/NumPy")

    def get_export_symbols(self, ext):
        if ext.name.endswith("_rnn_kernels"):
            return []                               # a ctypes library: no PyInit_ function to export
        return super().get_export_symbols(ext)


setup(
    ext_modules=[Extension(
        "model_core.native._rnn_kernels",
        sources=["model_core/native/rnn_kernels.c"],
        depends=["model_core/native/rnn_kernels_body.h", "model_core/native/bf16_body.h"],
        extra_compile_args=["-O3", "-Wno-psabi", OPENMP],     # the flags of model_core/native/__init__.py
        extra_link_args=[OPENMP],
        optional=True,
    ), Extension(
        "model_core.native._step_entry",
        sources=[str(STEP_ENTRY)],
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O2"],                           # model_core/native/__init__.py's _step_entry_flags
        define_macros=[("MC_SOURCE_HASH", f'"{hashlib.sha256(STEP_ENTRY.read_bytes()).hexdigest()[:16]}"'),
                       ("MC_NUMPY_VERSION", f'"{numpy.__version__}"')],
        optional=True,
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
