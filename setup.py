"""Build of the compiled runtime kernels; all package metadata lives in pyproject.toml.

``pip install .`` (or ``-e .``) compiles ``runtime/_kernels.pyx`` into ``snncc.runtime._kernels`` with Cython.
OpenMP (``-fopenmp``) is used only if a tiny OpenMP program compiles and links with the build's compiler; otherwise
the kernels run serially. Environment variables read at build time:

- ``SNNCC_BOUNDSCHECK=1``: compile with Cython's bounds and wraparound checks (debugging; slower). The source's
  header comment would override ``cythonize``'s directives, so a copy with the header flipped is compiled.
- ``SNNCC_NO_OPENMP=1``: do not try OpenMP.
- ``SNNCC_NATIVE=1``: add ``-march=native`` (faster on this machine, not portable to older CPUs).

``-ffp-contract=off`` is always passed: fusing ``v * beta + I`` into one multiply-add would round differently from
the numpy reference simulator and change spikes. ``-fno-trapping-math`` (the result of every operation is unchanged;
only floating-point exception flags are not preserved) lets GCC vectorize the branch-free neuron updates.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SOURCE = Path("runtime") / "_kernels.pyx"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _source() -> str:
    """The .pyx to compile: the checked-in file, or a copy with bounds checks switched on."""
    if not _flag("SNNCC_BOUNDSCHECK"):
        return str(SOURCE)
    checked = Path("build") / "boundscheck" / "_kernels.pyx"
    checked.parent.mkdir(parents=True, exist_ok=True)
    text = (ROOT / SOURCE).read_text()
    text = re.sub(r"boundscheck=False", "boundscheck=True", text, count=1)
    text = re.sub(r"wraparound=False", "wraparound=True", text, count=1)
    checked.write_text(text)
    return str(checked)


class BuildExt(build_ext):
    """Adds optimisation, floating-point and (when available) OpenMP flags for the compiler actually used."""

    def build_extensions(self) -> None:
        unix = self.compiler.compiler_type == "unix"
        compile_args = ["-O3", "-ffp-contract=off", "-fno-trapping-math"] if unix else ["/O2", "/fp:precise"]
        link_args: list[str] = []
        if unix and _flag("SNNCC_NATIVE"):
            compile_args.append("-march=native")
        if not _flag("SNNCC_NO_OPENMP"):
            openmp = ["-fopenmp"] if unix else ["/openmp"]
            if self._compiles_openmp(openmp):
                compile_args += openmp
                link_args += openmp if unix else []
            else:
                print("snncc: the C compiler does not support OpenMP; the runtime kernels will run serially")
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
        super().build_extensions()

    def _compiles_openmp(self, flags: list[str]) -> bool:
        """Compile and link a tiny OpenMP program with this build's compiler."""
        from distutils.errors import CompileError, LinkError  # setuptools provides distutils

        tmp = tempfile.mkdtemp(prefix="snncc-openmp-")
        try:
            src = os.path.join(tmp, "check_openmp.c")
            with open(src, "w") as fh:
                fh.write("#include <omp.h>\nint main(void) {\n  int n = 0;\n"
                         "  #pragma omp parallel reduction(+:n)\n  n += omp_get_num_threads() > 0;\n"
                         "  return n > 0 ? 0 : 1;\n}\n")
            objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            self.compiler.link_executable(objects, "check_openmp", output_dir=tmp, extra_postargs=flags)
            return True
        except (CompileError, LinkError, OSError):
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _extensions() -> list[Extension]:
    import numpy
    from Cython.Build import cythonize

    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if _flag("SNNCC_BOUNDSCHECK"):
        macros.append(("SNNCC_BOUNDSCHECK", "1"))
    extension = Extension("snncc.runtime._kernels", [_source()], include_dirs=[numpy.get_include()],
                          define_macros=macros)
    return cythonize([extension], compiler_directives={"language_level": 3}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
