"""numpy's BLAS threads while a simulator runs a batch.

Two reasons to set them rather than leave OpenBLAS's default (one thread per core):

- **Reproducible sums.** OpenBLAS's float32 products depend on its number of threads: on the development machine
  (scipy-openblas 0.3.31, Zen kernels) a (16, 144) x (144, 4704) product, a ResNet-14 convolution of 6 images,
  differs in the last bits in 64 % of its elements between one thread and two. The reference simulators are the
  specification of the spikes, so their values must not depend on the machine's number of cores, and the compiled
  runtime's "reference" convolutions reproduce them only with the same setting.
- **Speed of the compiled runtimes.** They spread their work over OpenMP threads themselves (samples, time-folded
  rows, blocks of a convolution on Python threads). OpenBLAS's own workers, started by a product, keep spinning
  after it (its ``THREAD_TIMEOUT``, by default 2^28 cycles, about 0.1 s) on the cores the OpenMP workers need.
  Measured on the 2-core development machine (batch 100, ``OMP_NUM_THREADS=2``): FS on the ResNet-14 ran at 761
  images/s with OpenBLAS's default of 2 threads against 2,500 with one; rate coding at T=32 at 342 against 487
  (VGG) and 3,249 against 6,436 (LeNet-5).

So every simulator (the numpy references and the Cython runtimes) runs numpy's BLAS on one thread for the duration
of each batch and restores the previous setting after (:class:`BlasThreads`), unless the user chose a number with
``OPENBLAS_NUM_THREADS`` (:func:`engine_blas_threads`), which then holds for all of them alike. The control goes
through OpenBLAS's own ``openblas_set_num_threads`` on the library numpy has loaded (found in ``/proc/self/maps``);
where that is not available (another BLAS, another operating system) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

#: The symbol names of OpenBLAS's thread control, as (get, set), in the builds numpy ships: scipy-openblas
#: (numpy 2: prefix ``scipy_``, 64-bit integer suffix ``64_``), numpy 1.x's ``openblas64_`` and a system OpenBLAS.
_SYMBOLS = [(f"{prefix}openblas_get_num_threads{suffix}", f"{prefix}openblas_set_num_threads{suffix}")
            for prefix in ("scipy_", "") for suffix in ("64_", "")]


@lru_cache(maxsize=1)
def _controls() -> list[tuple[object, object]]:
    """(get, set) of every OpenBLAS this process has loaded, numpy's first (other packages may bring their own, as
    torch does on some platforms); empty where there is none to control."""
    import numpy

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {fields[5] for fields in (line.split(None, 5) for line in maps.splitlines())
             if len(fields) == 6 and "openblas" in Path(fields[5]).name.lower()}
    numpy_libs = str(Path(numpy.__file__).parent) + ".libs"  # where numpy's wheels keep their OpenBLAS
    controls = []
    for path in sorted(paths, key=lambda p: (not p.startswith(numpy_libs), p)):
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # the loaded copy, never a new one
        except (OSError, AttributeError):
            continue
        for get_name, set_name in _SYMBOLS:
            get, set_ = getattr(library, get_name, None), getattr(library, set_name, None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                controls.append((get, set_))
                break
    return controls


def current_blas_threads() -> int | None:
    """How many threads numpy's OpenBLAS uses now; None where it cannot be controlled."""
    controls = _controls()
    return int(controls[0][0]()) if controls else None


def engine_blas_threads() -> int | None:
    """The BLAS threads every simulator runs its batches with: one, or None (leave as is) where the user set
    ``OPENBLAS_NUM_THREADS``."""
    return None if "OPENBLAS_NUM_THREADS" in os.environ else 1


class BlasThreads:
    """Context manager: numpy's OpenBLAS (and any other OpenBLAS loaded) on ``threads`` threads inside, the
    previous numbers restored on exit. ``threads=None``, or no OpenBLAS to control, changes nothing. The setting is
    process-wide: one engine runs a batch at a time (as the engines require anyway)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self._saved: list[tuple[object, int]] = []

    def __enter__(self) -> BlasThreads:
        for get, set_ in _controls() if self.threads is not None else []:
            saved = int(get())
            if saved != self.threads:
                set_(self.threads)
                self._saved.append((set_, saved))
        return self

    def __exit__(self, *exc) -> None:
        for set_, saved in self._saved:
            set_(saved)
        self._saved = []


__all__ = ["BlasThreads", "current_blas_threads", "engine_blas_threads"]
