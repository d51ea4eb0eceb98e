"""Build of the compiled runtime kernels; all package metadata lives in pyproject.toml.

``pip install .`` (or ``-e .``) compiles ``runtime/_kernels.pyx`` into ``snncc.runtime._kernels`` with Cython.
OpenMP (``-fopenmp``) is used only if a tiny OpenMP program compiles and links with the build's compiler; otherwise
the kernels run serially. Environment variables read at build time:

- ``SNNCC_BOUNDSCHECK=1``: compile with Cython's bounds and wraparound checks (debugging; slower). The source's
  header comment would override ``cythonize``'s directives, so a copy with the header flipped is compiled.
- ``SNNCC_NO_OPENMP=1``: do not try OpenMP.
- ``SNNCC_NATIVE=1``: add ``-march=native`` to every variant (not portable to other CPUs).
- ``SNNCC_NO_VARIANTS=1``: build the portable module only.

Besides the portable module, x86-64 builds compile the same source for AVX2 and for AVX-512 into
``snncc.runtime._kernels_avx2`` / ``_kernels_avx512`` (when the compiler accepts the flags);
``snncc.runtime.load_kernels`` imports the widest one the CPU supports. The arithmetic is the same element-wise IEEE
float32 in every variant (no FMA: ``-ffp-contract=off``); wider vectors only process more neurons per instruction.

``-ffp-contract=off`` is always passed: fusing ``v * beta + I`` into one multiply-add would round differently from
the numpy reference simulator and change spikes. ``-fno-trapping-math`` (the result of every operation is unchanged;
only floating-point exception flags are not preserved) lets GCC vectorize the branch-free neuron updates.
"""

from __future__ import annotations

import os
import platform
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


# Instruction-set variants of the kernels (x86-64): module suffix -> compiler flags.
VARIANTS = {"avx2": ["-mavx2"], "avx512": ["-mavx2", "-mavx512f", "-mavx512bw", "-mavx512vl"]}


def _source(variant: str = "") -> str:
    """The .pyx to compile: the checked-in file, or a copy named after the variant's module, with bounds checks
    switched on under SNNCC_BOUNDSCHECK=1 (a module's file name must match its name)."""
    if not variant and not _flag("SNNCC_BOUNDSCHECK"):
        return str(SOURCE)
    name = f"_kernels_{variant}.pyx" if variant else "_kernels.pyx"
    copy = Path("build") / ("boundscheck" if _flag("SNNCC_BOUNDSCHECK") else "variants") / name
    copy.parent.mkdir(parents=True, exist_ok=True)
    text = (ROOT / SOURCE).read_text()
    if _flag("SNNCC_BOUNDSCHECK"):
        text = re.sub(r"boundscheck=False", "boundscheck=True", text, count=1)
        text = re.sub(r"wraparound=False", "wraparound=True", text, count=1)
    if not copy.is_file() or copy.read_text() != text:  # keep the timestamp: no needless re-cythonizing
        copy.write_text(text)
    return str(copy)


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
        extensions = []
        for ext in self.extensions:
            variant = ext.name.rpartition("_kernels_")[2] if "_kernels_" in ext.name else ""
            if variant and not (unix and self._compiles(VARIANTS[variant], openmp=False)):
                print(f"snncc: the C compiler does not accept {VARIANTS[variant]}; skipping {ext.name}")
                continue
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args + VARIANTS.get(variant, [])
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
            extensions.append(ext)
        self.extensions = extensions
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1  # the variants compile independently
        super().build_extensions()

    def _compiles_openmp(self, flags: list[str]) -> bool:
        return self._compiles(flags, openmp=True)

    def _compiles(self, flags: list[str], openmp: bool) -> bool:
        """Compile and link a tiny (OpenMP) program with this build's compiler and ``flags``."""
        from distutils.errors import CompileError, LinkError  # setuptools provides distutils

        tmp = tempfile.mkdtemp(prefix="snncc-check-")
        try:
            src = os.path.join(tmp, "check.c")
            with open(src, "w") as fh:
                if openmp:
                    fh.write("#include <omp.h>\nint main(void) {\n  int n = 0;\n"
                             "  #pragma omp parallel reduction(+:n)\n  n += omp_get_num_threads() > 0;\n"
                             "  return n > 0 ? 0 : 1;\n}\n")
                else:
                    fh.write("int main(void) { return 0; }\n")
            objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            self.compiler.link_executable(objects, "check", output_dir=tmp, extra_postargs=flags)
            return True
        except (CompileError, LinkError, OSError):
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _extensions() -> list[Extension]:
    import hashlib

    import numpy
    from Cython.Build import cythonize

    # Every module carries a stamp of the source and build options it was compiled from: the loader ignores a
    # variant whose stamp differs from the portable module's (a stale file left by an earlier editable build).
    stamp = hashlib.sha256((ROOT / SOURCE).read_bytes()).hexdigest()[:16] + ("-checked" if _flag("SNNCC_BOUNDSCHECK")
                                                                              else "")
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("SNNCC_BUILD_STAMP", f'"{stamp}"')]
    if _flag("SNNCC_BOUNDSCHECK"):
        macros.append(("SNNCC_BOUNDSCHECK", "1"))
    variants = [""]
    if platform.machine().lower() in ("x86_64", "amd64") and not _flag("SNNCC_NO_VARIANTS"):
        variants += list(VARIANTS)
    extensions = [Extension(f"snncc.runtime._kernels_{v}" if v else "snncc.runtime._kernels", [_source(v)],
                            include_dirs=[numpy.get_include()],
                            define_macros=macros + [("SNNCC_VARIANT", f'"{v or "portable"}"')])
                  for v in variants]
    # The fused training layers' kernels (runtime/_train_kernels.pyx, used by runtime/torch_fused.py): one portable
    # module, built with the same flags (OpenMP, -ffp-contract=off).
    extensions.append(Extension("snncc.runtime._train_kernels", [str(Path("runtime") / "_train_kernels.pyx")],
                                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]))
    # The Loihi emulator's integer population step (targets/loihi/_cuba.pyx, used by targets/loihi/compiled.py).
    extensions.append(Extension("snncc.targets.loihi._cuba", [str(Path("targets") / "loihi" / "_cuba.pyx")],
                                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]))
    return cythonize(extensions, compiler_directives={"language_level": 3}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
