"""Residual blocks through the pipeline: normalize propagates scales through the option-A shortcut (strided Slice,
ChannelPad) exactly, and the rate SNN converges to the ANN."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.ir import Graph, ops
from snncc.passes import PassContext, run_pipeline
from snncc.passes.normalize import activation_scales
from snncc.runtime import Simulator, run_analog


def option_a_block(pad_value: float = 0.0, seed: int = 0) -> Graph:
    """conv(1->4)-ReLU, then a downsampling block to 8 channels whose shortcut is ``pad_c(x[:, ::2, ::2])``."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add(ops.Input(shape=(1, 12, 12)), name="input")
    c1 = g.add(ops.Conv2d(weight=rng.normal(0, 0.5, (4, 1, 3, 3)), bias=rng.normal(0, 0.1, 4),
                          padding=(1, 1, 1, 1)), [x], name="conv1")
    r1 = g.add(ops.Relu(), [c1], name="relu1")
    c2 = g.add(ops.Conv2d(weight=rng.normal(0, 0.3, (8, 4, 3, 3)), bias=rng.normal(0, 0.1, 8), stride=(2, 2),
                          padding=(1, 1, 1, 1)), [r1], name="conv2")
    r2 = g.add(ops.Relu(), [c2], name="relu2")
    c3 = g.add(ops.Conv2d(weight=rng.normal(0, 0.2, (8, 8, 3, 3)), bias=rng.normal(0, 0.1, 8),
                          padding=(1, 1, 1, 1)), [r2], name="conv3")
    sub = g.add(ops.Slice(starts=(0, 0, 0), stops=(4, 11, 11), steps=(1, 2, 2)), [r1], name="subsample")
    pad = g.add(ops.ChannelPad(before=2, after=2, value=pad_value), [sub], name="channel_pad")
    add = g.add(ops.Add(), [c3, pad], name="add")
    r3 = g.add(ops.Relu(), [add], name="relu3")
    gap = g.add(ops.GlobalAvgPool(), [r3], name="gap")
    flat = g.add(ops.Flatten(), [gap], name="flatten")
    g.outputs = [g.add(ops.Linear(weight=rng.normal(0, 0.5, (5, 8)), bias=rng.normal(0, 0.1, 5)), [flat],
                       name="fc")]
    return g


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("pad_value", [0.0, 0.3])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_normalize_is_exact_through_slice_and_channel_pad(inputs, granularity, pad_value):
    ann = option_a_block(pad_value)
    pipeline = f"canonicalize,normalize{{percentile=100,granularity={granularity}}}"
    normalized = run_pipeline(ann, pipeline, PassContext(calibration=inputs))
    assert normalized.find(ops.Slice) and normalized.find(ops.ChannelPad)
    assert _rel_err(run_analog(normalized, inputs)[0], run_analog(ann, inputs)[0]) < 1e-5
    for node, lam in activation_scales(normalized, inputs, 100, granularity).items():
        np.testing.assert_allclose(lam, 1.0, rtol=1e-5, err_msg=node)


def test_rate_snn_of_an_option_a_block_converges_to_the_ann(inputs):
    ann = option_a_block()
    snn = run_pipeline(ann, "canonicalize,normalize{percentile=100},convert-rate", PassContext(calibration=inputs))
    assert len(snn.find(ops.Population)) == 3
    reference = run_analog(ann, inputs)[0]
    result = Simulator(snn, timesteps=512).run(inputs)
    errors = {t: _rel_err(result.outputs[t - 1], reference) for t in (16, 512)}
    assert errors[512] < 0.02 and errors[512] < errors[16], errors
    assert (result.outputs[-1].argmax(1) == reference.argmax(1)).mean() >= 0.95
