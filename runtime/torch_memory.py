"""Keeping freed memory in the process for reuse while torch runs on a CPU (training; the temporal runtime's
oneDNN convolutions, :mod:`snncc.runtime.graded_convolution`).

Why: torch's CPU allocator is glibc's ``malloc``, which serves every block larger than its mmap threshold (at most
32 MiB on 64-bit glibc) with a fresh ``mmap`` and returns it to the kernel on ``free``. A training step of a
lowered SNN allocates its activations anew every step, and at ``T * batch = 8 * 64`` a layer's (T, B, 32, 28, 28)
float32 tensor is 51 MB: above the threshold, so each step the kernel maps and zeroes every such page again (the VGG
took 130,000 minor page faults a step at T=8 against 20,000 at T=4, whose tensors lie under the threshold and are
reused; that is much of why T=8 cost 2.5 times T=4, not 2). Inference pays the same: a 16-channel 28x28
convolution of 100 samples took 3-4x its time once glibc's threshold had moved (after ``import networkx``, whose
allocations move it), its output and oneDNN's reordered copies page-faulting on every call. CUDA's caching allocator keeps freed blocks for the
next step; this does the same for glibc: ``mallopt(M_MMAP_MAX, 0)`` serves every block from the heap, and
``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` keeps freed heap memory unless a gigabyte lies free at its top. After the
first step a training step then page-faults no more; the process's resident memory stays at its peak instead of
falling between steps (as on a GPU).

Only where the C library is glibc (Linux); elsewhere, or with ``SNNCC_KEEP_FREED_MEMORY=0`` in the environment,
nothing is changed. The setting is process-wide and applies once; it changes no result, only where memory comes
from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_THRESHOLD = 1 << 30  # freed memory at the heap's top beyond this goes back to the kernel

_applied: bool | None = None  # None: not tried yet; then whether mallopt took the setting


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (the module docstring), once per process; True where it did."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("SNNCC_KEEP_FREED_MEMORY", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc: no mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
