"""The temporal runtime's convolutions of graded values: oneDNN (through torch) against the reference's im2col
product, the measured choice between implementations, and whole FS/AMOS networks on oneDNN against the reference
simulator (flips within float rounding, counted and bounded)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snncc.errors import SimulationError
from snncc.ir import ops
from snncc.runtime import TemporalSimulator, cython_available, kernels
from snncc.runtime.graded_convolution import MeasuredConv2d, OneDNNConv2d, check_convolution
from tests.runtime.test_cython_temporal import ZOO_TEMPORAL


def _eighths(rng: np.random.Generator, shape: tuple[int, ...], high: int, low: int | None = None) -> np.ndarray:
    """Random multiples of 1/8 in [low/8, high/8]: every summation order gives the same float32 sums."""
    return (rng.integers(-high if low is None else low, high + 1, shape) / 8).astype(np.float32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 6), channels=st.integers(1, 4), size=st.integers(3, 10), out_ch=st.integers(1, 9),
       kernel=st.integers(1, 4), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       padding=st.tuples(*[st.integers(0, 2)] * 4), groups=st.sampled_from([1, 2]), bias=st.booleans(),
       pad_value=st.sampled_from([None, "equal", "per-channel"]), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31))
def test_onednn_convolution_is_the_references(batch, channels, size, out_ch, kernel, stride, dilation, padding,
                                              groups, bias, pad_value, threads, seed):
    """Strides, dilations, groups, asymmetric paddings and pad values (a normalized first layer's): the values of
    kernels.conv2d, exactly on multiples of 1/8, called twice (the kept padded buffer keeps its border)."""
    rng = np.random.default_rng(seed)
    channels, out_ch = channels * groups, out_ch * groups
    if size + padding[0] + padding[2] < dilation * (kernel - 1) + 1 or \
            size + padding[1] + padding[3] < dilation * (kernel - 1) + 1:
        return  # no output position
    value = {None: None, "equal": np.full(channels, 0.375, np.float32),
             "per-channel": _eighths(rng, (channels,), 8)}[pad_value]
    op = ops.Conv2d(weight=_eighths(rng, (out_ch, channels // groups, kernel, kernel), 4),
                    bias=_eighths(rng, (out_ch,), 4) if bias else None, stride=(stride, stride),
                    padding=padding, dilation=(dilation, dilation), groups=groups, pad_value=value)
    x = _eighths(rng, (batch, channels, size, size), 8, low=0)
    expected = kernels.conv2d(op, x)
    conv = OneDNNConv2d(op, x.shape[1:], expected.shape[1:], threads)
    np.testing.assert_array_equal(conv(x), expected)
    np.testing.assert_array_equal(conv(x[::-1].copy()), expected[::-1])


def test_onednn_restores_torchs_threads():
    import torch

    op = ops.Conv2d(weight=np.ones((2, 1, 3, 3), np.float32), padding=(1, 1, 1, 1))
    before = torch.get_num_threads()
    OneDNNConv2d(op, (1, 5, 5), (2, 5, 5), threads=before + 1)(np.ones((1, 1, 5, 5), np.float32))
    assert torch.get_num_threads() == before


class _Slow:
    """A convolution that takes ``seconds`` and returns ``value``; counts its calls."""

    def __init__(self, seconds: float, value: float) -> None:
        self.seconds, self.value, self.calls = seconds, value, 0

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(self.seconds)
        return np.full_like(out, self.value)


def test_measured_convolution_keeps_the_faster_per_batch_size():
    slow, fast = _Slow(0.02, 1.0), _Slow(0.0, 2.0)
    conv = MeasuredConv2d({"slow": slow, "fast": fast})
    out = np.empty((3, 2))
    np.testing.assert_array_equal(conv(np.zeros((3, 1)), out), 2.0)  # the chosen one's result
    assert conv.choices[3][0] == "fast" and conv.choices[3][1]["slow"] > conv.choices[3][1]["fast"]
    runs = 1 + MeasuredConv2d.TIMED_RUNS  # a first call, then the timed ones, each; the chosen one once more
    assert (slow.calls, fast.calls) == (runs, runs + 1)
    conv(np.zeros((3, 1)), out)
    assert (slow.calls, fast.calls) == (runs, runs + 2)  # measured once per batch size
    conv(np.zeros((1, 1)), np.empty((1, 2)))
    assert (slow.calls, fast.calls) == (2 * runs, 2 * runs + 3) and set(conv.choices) == {1, 3}


def test_an_unknown_convolution_is_refused_with_the_choices():
    assert check_convolution(None) == "measured"
    with pytest.raises(SimulationError, match="measured, reference, onednn"):
        check_convolution("winograd")


@pytest.mark.skipif(not cython_available()[0], reason="the Cython runtime is not built")
@pytest.mark.parametrize("model, dataset, pipeline", ZOO_TEMPORAL)
def test_zoo_models_on_onednn_are_the_references_within_rounding(model, dataset, pipeline):
    """The shipped models, FS and AMOS, on 20 real images, every convolution on oneDNN: the spikes per step and
    population within 1e-3 of the reference's in total absolute difference (a unit flips where its input lies
    within float rounding of a threshold; measured: 0 on the LeNet-5, 8e-5 on the ResNet-14), the outputs within
    1% of their largest magnitude, the same predictions, and synaptic operations within 1e-3."""
    from snncc.runtime.cython_engine import CythonTemporalSimulator
    from tests.runtime.test_cython_temporal import compiled_zoo_model

    graph, x = compiled_zoo_model(model, dataset, pipeline, images=20)
    expected = TemporalSimulator(graph).run_batch(x)
    engine = CythonTemporalSimulator(graph, threads=2, convolution="onednn")
    got = engine.run_batch(x)
    assert set(engine.convolution_choices.values()) == {"onednn"}
    total = sum(s.sum() for s in expected.spikes.values())
    flips = sum(np.abs(got.spikes[n] - s).sum() for n, s in expected.spikes.items())
    assert flips <= 1e-3 * total, f"{flips} of {total} spikes moved"
    (a,), (b,) = expected.outputs, got.outputs
    np.testing.assert_allclose(b, a, rtol=0, atol=0.01 * np.abs(a).max())
    np.testing.assert_array_equal(b[-1].argmax(axis=1), a[-1].argmax(axis=1))
    np.testing.assert_allclose(got.synops.sum(), expected.synops.sum(), rtol=1e-3)  # as the spikes
