"""Convolutions of graded values in the temporal (FS/AMOS) runtime: which implementation runs each layer.

An FS or AMOS layer passes on its decoded value ``sum_t d(t) z(t)`` (Stöckl & Maass 2021), so the next
convolution is an ordinary convolution of real numbers, the same work as the ANN's. Two implementations compute it:

- ``"reference"``: :class:`~snncc.runtime.cython_engine._BlockedConv2d`, the reference's im2col matrix and BLAS
  product, so the values are the reference simulator's bit for bit;
- ``"onednn"``: :class:`OneDNNConv2d`, torch's CPU convolution (oneDNN's direct and blocked kernels), 3-4x faster
  on the ResNet-14's and the LeNet-5's 3x3 and 5x5 convolutions over 6-64 channels, and several times slower on a
  single input channel (measured per layer, below). It sums in another order, so its values may differ from the
  reference's in the last bits, and a neuron whose input lies within that rounding of one of its thresholds can
  change its spike (the agreement tests count and bound such flips, as for the rate kernels' BLAS order).

``"measured"`` (the default of :class:`~snncc.runtime.cython_engine.CythonTemporalSimulator`) times both on the
first batch of each size and keeps the faster per layer (:class:`MeasuredConv2d`): a schedule chosen from measured
costs, not from a list of layer patterns, so that a layer shape nobody measured before does not fall off a cliff.
The choice of every layer is recorded (``CythonTemporalSimulator.convolution_choices``); ``"reference"`` keeps the
reference's values exactly wherever reproducibility matters more than time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from snncc.errors import SimulationError
from snncc.ir import ops

#: The implementations of a graded convolution, by name, and "measured" (the faster of them, per layer).
CONVOLUTIONS = ("measured", "reference", "onednn")
#: What :class:`~snncc.runtime.cython_engine.CythonTemporalSimulator` runs when not told (``convolution=None``).
DEFAULT_CONVOLUTION = "measured"

Convolution = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_convolution(name: str | None) -> str:
    """``name``, or the default for None; a clear error for a name that is not an implementation."""
    if name is None:
        return DEFAULT_CONVOLUTION
    if name not in CONVOLUTIONS:
        raise SimulationError(f"convolution={name!r} is not an implementation of the temporal runtime; choose one of "
                              f"{', '.join(CONVOLUTIONS)}")
    return name


class _Threads:
    """torch's intra-op threads set to ``threads`` for the duration of a call and restored after (the setting is
    process-wide: the caller's own torch work keeps its own)."""

    def __init__(self, torch, threads: int) -> None:
        self.torch, self.threads, self.saved = torch, threads, None

    def __enter__(self) -> None:
        self.saved = self.torch.get_num_threads()
        if self.saved != self.threads:
            self.torch.set_num_threads(self.threads)

    def __exit__(self, *exc) -> None:
        if self.saved != self.threads:
            self.torch.set_num_threads(self.saved)


class OneDNNConv2d:
    """``op`` (one operand, float32 NCHW) by torch's CPU convolution on ``threads`` threads.

    The padding is torch's where it is zero on both sides of each axis; a pad value (a normalized first layer's
    padding, :class:`~snncc.ir.ops.Conv2d` ``pad_value``) or an asymmetric padding is written into a kept buffer
    first, as the reference's ``_pad_spatial`` does. The bias is added by the convolution itself. Returns a fresh
    array (the ``out`` argument of the interface is not used): torch allocates its outputs, and glibc keeps freed
    memory for reuse (:func:`~snncc.runtime.torch_memory.keep_freed_memory`), without which every call's output
    page-faults anew (measured: 3-4x the time of a 16-channel 28x28 convolution of 100 samples).
    """

    def __init__(self, op: ops.Conv2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...], threads: int) -> None:
        import torch

        from snncc.runtime.torch_memory import keep_freed_memory

        keep_freed_memory()
        self.torch = torch
        self.op = op
        self.weight = torch.from_numpy(np.array(op.weight, dtype=np.float32))  # a copy: torch wants it writable
        self.bias = None if op.bias is None else torch.from_numpy(np.array(op.bias, dtype=np.float32))
        top, left, bottom, right = op.padding
        self.explicit_pad = op.pad_value is not None and any(op.padding) or top != bottom or left != right
        self.padding = (0, 0) if self.explicit_pad else (top, left)
        self.pad_value = None if op.pad_value is None else torch.from_numpy(np.array(op.pad_value, np.float32))
        self._padded = None
        self.threads = _Threads(torch, threads)

    def _pad(self, x):
        top, left, bottom, right = self.op.padding
        shape = (x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right)
        if self._padded is None or tuple(self._padded.shape) != shape:
            self._padded = self.torch.empty(shape, dtype=self.torch.float32)
            self._padded[:] = 0.0 if self.pad_value is None else self.pad_value[None, :, None, None]
        # The border keeps the pad value between calls; only the interior changes.
        self._padded[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
        return self._padded

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        torch, op = self.torch, self.op
        with self.threads, torch.inference_mode():
            inputs = torch.from_numpy(x)
            if self.explicit_pad:
                inputs = self._pad(inputs)
            y = torch.nn.functional.conv2d(inputs, self.weight, self.bias, op.stride, self.padding, op.dilation,
                                           op.groups)
        return y.numpy()


class MeasuredConv2d:
    """The faster of several implementations of one convolution, measured on the first batch of each size.

    On a batch size not seen yet, every implementation runs once on it (that call builds what it keeps: oneDNN's
    primitive, the im2col buffers), then :data:`TIMED_RUNS` more times, the implementations taking turns so that
    a burst of load elsewhere on the machine falls on all of them; each one's fastest run counts, the fastest
    implementation is kept for that batch size and its result returned. ``choices`` maps batch size to
    (name, {name: seconds}).
    """

    #: Timed runs of each implementation on a new batch size (best of them counts).
    TIMED_RUNS = 3

    def __init__(self, implementations: dict[str, Convolution]) -> None:
        self.implementations = implementations
        self.choices: dict[int, tuple[str, dict[str, float]]] = {}

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        choice = self.choices.get(x.shape[0])
        if choice is not None:
            return self.implementations[choice[0]](x, out)
        for convolve in self.implementations.values():
            convolve(x, out)
        seconds = dict.fromkeys(self.implementations, float("inf"))
        for _ in range(self.TIMED_RUNS):
            for name, convolve in self.implementations.items():
                start = time.perf_counter()
                convolve(x, out)
                seconds[name] = min(seconds[name], time.perf_counter() - start)
        best = min(seconds, key=seconds.get)
        self.choices[x.shape[0]] = (best, seconds)
        return self.implementations[best](x, out)
