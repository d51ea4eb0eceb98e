"""Type stub of the fused training layers' compiled kernels (runtime/_train_kernels.pyx). Arrays are C-contiguous
numpy arrays of one dtype, float32 or float64 (``Real``), all of the same; ``threads`` is the number of OpenMP
threads (ignored without OpenMP). ``M`` is the number of neurons of the flattened (B, *shape) population."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Real = npt.NDArray[np.float32] | npt.NDArray[np.float64]

#: Surrogate shapes by name (as in snncc.runtime.dynamics.SURROGATES) -> the kernels' code.
SURROGATE_CODES: dict[str, int]

def openmp_threads(threads: int) -> int: ...
def membrane_forward(currents: Real, constant: bool, threshold: Real, decay: Real, v_init: Real, subtract: bool,
                     spikes: Real, membranes: Real, v: Real, threads: int) -> None:
    """currents (T, M), or (1, M) with constant; threshold, v_init (M); decay (M) or empty for IF; writes spikes
    and membranes (T, M); v (M) scratch."""

def membrane_backward(grad_spikes: Real, membranes: Real, threshold: Real, decay: Real, v_init: Real,
                      subtract: bool, shape: int, width: float, grad_current: Real, grad_v: Real,
                      grad_threshold: Real, grad_decay: Real, slope: Real, threads: int) -> None:
    """grad_spikes, membranes (T, M); writes grad_current (T, M), or its sum over time given as (1, M),
    grad_threshold (M) and (LIF) grad_decay (M);
    grad_v and slope (M) scratch."""
def max_pool_forward(steps: npt.NDArray, kh: int, kw: int, sh: int, sw: int, top: int, left: int,
                     out: npt.NDArray, argmax: npt.NDArray[np.uint8], threads: int) -> None:
    """steps (T, B, H, W, C), any strides; writes out and argmax (T, B, Ho, Wo, C), the window position as a byte."""

def max_pool_backward(grad_out: npt.NDArray, argmax: npt.NDArray[np.uint8], kh: int, kw: int, sh: int, sw: int,
                      top: int, left: int, grad_steps: npt.NDArray, threads: int) -> None:
    """grad_out and argmax (T, B, Ho, Wo, C); writes grad_steps (T, B, H, W, C), any strides."""
