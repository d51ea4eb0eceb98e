"""Normalization keeps the ANN function; the rate SNN converges to the ANN as T grows."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.ir import IF, ops
from snncc.passes import PassContext, run_pipeline
from snncc.passes.normalize import activation_scales
from snncc.runtime import Simulator, run_analog


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_normalize_preserves_the_function_and_sets_scales_to_one(cnn, inputs, granularity):
    pipeline = f"canonicalize,normalize{{percentile=100,granularity={granularity}}}"
    normalized = run_pipeline(cnn, pipeline, PassContext(calibration=inputs))
    assert _rel_err(run_analog(normalized, inputs)[0], run_analog(cnn, inputs)[0]) < 1e-5
    again = activation_scales(normalized, inputs, 100, granularity)
    for node, lam in again.items():
        np.testing.assert_allclose(lam, 1.0, rtol=1e-5, err_msg=node)


def test_percentile_below_100_clips_the_top_activations(cnn, inputs):
    g = run_pipeline(cnn, "canonicalize,normalize{percentile=90,granularity=layer}", PassContext(calibration=inputs))
    for node in g.find(ops.Relu):
        values = run_analog_node(g, node, inputs)
        positive = values[values > 0]
        assert np.isclose(np.percentile(positive, 90), 1.0, rtol=1e-4)


def run_analog_node(g, node, x):
    captured = []
    run_analog(g, x, record=[node], on_batch=lambda v: captured.append(v[node]))
    return np.concatenate(captured)


def test_clip_bound_becomes_max_over_lambda(inputs):
    from tests.conftest import small_cnn

    g = small_cnn()
    g.replace("relu2", ops.Clip(min=0.0, max=0.3))
    n = run_pipeline(g, "canonicalize,normalize{percentile=100}", PassContext(calibration=inputs))
    assert _rel_err(run_analog(n, inputs)[0], run_analog(g, inputs)[0]) < 1e-5
    assert n.op("relu2").max >= 1.0 - 1e-6


def _convert(graph, inputs, **options):
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    return run_pipeline(graph, f"canonicalize,normalize{{percentile=100}},convert-rate{{{opts}}}",
                        PassContext(calibration=inputs))


def test_rate_snn_converges_to_the_ann(cnn, inputs):
    snn = _convert(cnn, inputs)
    assert [snn.op(n).kind for n in snn.find(ops.Population)] == ["Population"] * 3
    assert snn.find(ops.SpikingMaxPool2d) == ["pool1"]
    ann = run_analog(cnn, inputs)[0]
    result = Simulator(snn, timesteps=1024).run(inputs)
    errors = {t: _rel_err(result.outputs[t - 1], ann) for t in (16, 128, 1024)}
    assert errors[1024] < 0.01, errors
    assert errors[1024] < errors[128] < errors[16], errors
    agree = (result.outputs[-1].argmax(1) == ann.argmax(1)).mean()
    assert agree >= 0.98


def test_spiking_maxpool_beats_average_pooling_replacement(cnn, inputs):
    ann = run_analog(cnn, inputs)[0]
    exact = Simulator(_convert(cnn, inputs, maxpool="count"), timesteps=256).run(inputs).outputs[-1]
    approx = Simulator(_convert(cnn, inputs, maxpool="avg"), timesteps=256).run(inputs).outputs[-1]
    assert _rel_err(exact, ann) < _rel_err(approx, ann) / 3


def test_half_threshold_initial_membrane_reduces_error(cnn, inputs):
    ann = run_analog(cnn, inputs)[0]
    shifted = Simulator(_convert(cnn, inputs, v_init=0.5), timesteps=32).run(inputs).outputs[-1]
    plain = Simulator(_convert(cnn, inputs, v_init=0.0), timesteps=32).run(inputs).outputs[-1]
    assert np.abs(shifted - ann).mean() < np.abs(plain - ann).mean()


def test_conversion_rejects_leaky_relu_with_the_node_name(cnn, inputs):
    from snncc.errors import UnsupportedModelError

    cnn.replace("relu3", ops.LeakyRelu(alpha=0.1))
    with pytest.raises(UnsupportedModelError, match="'relu3' \\(LeakyRelu\\)"):
        _convert(cnn, inputs)


def test_converted_populations_use_if_neurons_with_subtraction(cnn, inputs):
    snn = _convert(cnn, inputs)
    for node in snn.find(ops.Population):
        assert snn.op(node).neuron == IF(threshold=1.0, reset="subtract", v_init=0.5)


NOT_HOMOGENEOUS = [ops.Sigmoid(), ops.Tanh(), ops.HardSigmoid(), ops.HardSwish(), ops.Silu(), ops.Gelu(),
                   ops.Gelu(approximate="tanh")]


@pytest.mark.parametrize("activation", NOT_HOMOGENEOUS, ids=lambda op: op.kind + str(getattr(op, "approximate", "")))
def test_normalize_keeps_activations_that_are_not_homogeneous_in_their_units(cnn, inputs, activation):
    """A smooth activation is a scale barrier: the normalized graph computes the same function, the activation sees
    its original inputs, and the ReLU layers around it are still normalized."""
    cnn.replace("relu2", activation)
    before = run_analog(cnn, inputs)[0]
    normalized = run_pipeline(cnn, "canonicalize,normalize{percentile=100}", PassContext(calibration=inputs))
    assert _rel_err(run_analog(normalized, inputs)[0], before) < 1e-5
    captured = []
    run_analog(normalized, inputs, record=["relu2"], on_batch=lambda v: captured.append(v["relu2"]))
    original = []
    run_analog(cnn, inputs, record=["relu2"], on_batch=lambda v: original.append(v["relu2"]))
    np.testing.assert_allclose(np.concatenate(captured), np.concatenate(original), rtol=1e-4, atol=1e-5)
    for node, lam in activation_scales(normalized, inputs, 100, "channel").items():
        np.testing.assert_allclose(lam, 1.0, rtol=1e-3, err_msg=node)


def test_rate_conversion_refuses_smooth_activations_after_normalize(cnn, inputs):
    from snncc.errors import UnsupportedModelError

    cnn.replace("relu1", ops.Silu())
    cnn.replace("relu3", ops.Gelu())
    with pytest.raises(UnsupportedModelError, match=r"relu1.*Silu|Silu.*relu1"):
        run_pipeline(cnn, "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))


def test_leaky_relu_passes_normalize(cnn, inputs):
    cnn.replace("relu2", ops.LeakyRelu(alpha=0.1))
    n = run_pipeline(cnn, "canonicalize,normalize{percentile=100}", PassContext(calibration=inputs))
    assert _rel_err(run_analog(n, inputs)[0], run_analog(cnn, inputs)[0]) < 1e-5


@pytest.mark.parametrize("activation", NOT_HOMOGENEOUS, ids=lambda op: op.kind + str(getattr(op, "approximate", "")))
def test_rate_conversion_refuses_smooth_activations_with_the_fs_remedy(cnn, inputs, activation):
    """convert-rate refuses them first, even on a graph that was never normalized."""
    from snncc.errors import UnsupportedModelError

    cnn.replace("relu3", activation)
    cnn.replace("relu1", ops.Silu())
    with pytest.raises(UnsupportedModelError, match=(
            r"convert-rate cannot convert:\n  'relu1' \(Silu\): a rate-coded IF neuron computes a rectified linear "
            rf"function of its input \(ReLU, Clip\(0, c\)\), not Silu; convert this model with few-spike coding "
            rf"\(--method fs\) instead\n  'relu3' \({activation.kind}\): .*not {activation.kind};")):
        run_pipeline(cnn, "canonicalize,convert-rate", PassContext(calibration=inputs))
