"""convert-fs and convert-amos: the SNN computes the ANN with quantized activations; fits are exact, reproducible
and cached; errors say what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snncc.errors import PassError, PipelineSyntaxError
from snncc.ir import Amos, FewSpike, Graph, ops
from snncc.passes import PassContext, run_pipeline
from snncc.passes.convert_fs import swap_max_pools
from snncc.passes.fs_fit import FitSettings, fit_error, fit_few_spike, refine_amos, subsample
from snncc.runtime import Simulator, run_analog
from snncc.runtime.kernels import apply

QUICK = FitSettings(iterations=200, restarts=2)


def _leaky(v):
    return apply(ops.LeakyRelu(alpha=0.1), v)


def test_max_pool_moves_in_front_of_a_monotone_activation_exactly(cnn, inputs):
    before = run_analog(cnn, inputs)[0]
    graph = cnn.clone()
    assert swap_max_pools(graph) == ["pool1"]
    assert graph.inputs("relu1") == ["pool1"] and graph.inputs("pool1") == ["conv1"]
    np.testing.assert_array_equal(run_analog(graph, inputs)[0], before)


@pytest.mark.parametrize("pipeline", ["canonicalize,normalize{percentile=100},convert-fs{steps=12}",
                                      "canonicalize,convert-fs{steps=12,percentile=100}"])
def test_fs_snn_matches_the_ann(cnn, inputs, pipeline):
    ann = run_analog(cnn, inputs)[0]
    snn = run_pipeline(cnn, pipeline, PassContext(calibration=inputs))
    result = Simulator(snn, None).run(inputs)
    out = result.outputs[result.latency - 1]
    assert np.abs(out - ann).max() < 0.01 * np.abs(ann).max()
    assert (out.argmax(axis=1) == ann.argmax(axis=1)).mean() >= 0.95
    assert {snn.meta[n]["fs_fit"]["method"] for n in snn.find(ops.Population)} == {"closed-form"}


def test_fewer_steps_cost_accuracy_not_correctness(cnn, inputs):
    ann = run_analog(cnn, inputs)[0]
    errors = []
    for k in (2, 4, 8):
        snn = run_pipeline(cnn, f"canonicalize,normalize,convert-fs{{steps={k}}}", PassContext(calibration=inputs))
        result = Simulator(snn, None).run(inputs)
        errors.append(np.abs(result.outputs[-1] - ann).mean())
    assert errors[0] > errors[1] > errors[2]


def test_fit_reproduces_its_reported_error_and_is_deterministic():
    samples = np.random.default_rng(0).normal(0.3, 1, 5000).astype(np.float32)
    a = fit_few_spike(_leaky, {"op": "LeakyRelu", "alpha": 0.1}, samples, 6, seed=1, settings=QUICK, cache=False)
    b = fit_few_spike(_leaky, {"op": "LeakyRelu", "alpha": 0.1}, samples, 6, seed=1, settings=QUICK, cache=False)
    assert a.neuron == b.neuron and a.method == "gradient"
    used = subsample(samples, QUICK.max_samples, 1)
    mse, worst = fit_error(a.neuron, _leaky, used)
    assert (mse, worst) == (a.mse, a.max_abs_error)
    # and it is a real fit: far better than the best straight line through the kink
    slope, intercept = np.polyfit(used, _leaky(used), 1)
    assert a.mse < 0.2 * np.mean((slope * used + intercept - _leaky(used)) ** 2)


def test_amos_refinement_never_makes_the_fit_worse():
    samples = np.random.default_rng(2).normal(0.3, 1, 5000).astype(np.float32)
    fs = fit_few_spike(_leaky, {"op": "LeakyRelu"}, samples, 5, settings=QUICK, cache=False)
    am = refine_amos(_leaky, {"op": "LeakyRelu"}, samples, fs.neuron, settings=QUICK, cache=False)
    assert isinstance(am.neuron, Amos) and am.mse <= fs.mse
    assert fit_error(am.neuron, _leaky, subsample(samples, QUICK.max_samples, 0))[0] == am.mse


def test_fits_are_cached_and_a_damaged_entry_is_refitted(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(tmp_path))
    samples = np.random.default_rng(4).normal(0, 1, 3000).astype(np.float32)
    first = fit_few_spike(_leaky, {"op": "LeakyRelu"}, samples, 4, settings=QUICK)
    again = fit_few_spike(_leaky, {"op": "LeakyRelu"}, samples, 4, settings=QUICK)
    assert again.method == "cache" and again.neuron == first.neuron and again.mse == first.mse
    (entry,) = (tmp_path / "fs-fits").glob("*.json")
    data = json.loads(entry.read_text())
    data["neuron"]["height"] = [1.0]  # wrong length: fails validation
    entry.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="ignoring the FS fit cache entry"):
        refit = fit_few_spike(_leaky, {"op": "LeakyRelu"}, samples, 4, settings=QUICK)
    assert refit.method == "gradient" and refit.neuron == first.neuron


def _leaky_graph() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add(ops.Input(shape=(8,)), name="input")
    h = g.add(ops.Linear(weight=rng.normal(0, 0.5, (12, 8)), bias=rng.normal(0, 0.1, 12)), [x], name="fc1")
    h = g.add(ops.LeakyRelu(alpha=0.1), [h], name="act")
    g.outputs = [g.add(ops.Linear(weight=rng.normal(0, 0.5, (3, 12))), [h], name="fc2")]
    return g


def test_fitted_layers_record_their_fit_and_simulate_it():
    g = _leaky_graph()
    x = np.random.default_rng(1).uniform(-1, 1, (300, 8)).astype(np.float32)
    snn = run_pipeline(g, "canonicalize,convert-fs{steps=6,fit_iterations=200,fit_restarts=2}",
                       PassContext(calibration=x))
    info = snn.meta["act"]["fs_fit"]
    assert info["method"] == "gradient" and info["activation"] == "LeakyRelu"
    neuron = snn.op("act").neuron
    assert isinstance(neuron, FewSpike) and neuron.steps == 6
    ann = run_analog(g, x)[0]
    result = Simulator(snn, None).run(x)
    assert np.sqrt(np.mean((result.outputs[-1] - ann) ** 2)) < 0.1 * ann.std()


def test_errors_name_the_remedy(cnn):
    with pytest.raises(PassError, match="calibration data.*--calib"):
        run_pipeline(cnn, "canonicalize,convert-fs", PassContext())
    with pytest.raises(PipelineSyntaxError, match="steps must be between 1 and 32"):
        run_pipeline(cnn, "convert-fs{steps=0}")
    with pytest.raises(PipelineSyntaxError, match="no option 'bits'"):
        run_pipeline(cnn, "convert-amos{bits=3}")


@pytest.mark.parametrize("method", ["fs", "amos"])
def test_quantized_parameters_lie_on_the_grid_and_enough_bits_are_exact(cnn, inputs, method):
    snn = run_pipeline(cnn, f"canonicalize,normalize,convert-{method}{{steps=6}}", PassContext(calibration=inputs))
    exact = run_pipeline(snn, "quantize-neurons{bits=8}")  # K + 2 bits hold the rounding binary code exactly
    for node in snn.find(ops.Population):
        assert exact.op(node).neuron == snn.op(node).neuron
    coarse = run_pipeline(snn, "quantize-neurons{bits=3}")
    for node in coarse.find(ops.Population):
        neuron, grid = coarse.op(node).neuron, coarse.meta[node]["quantization"]
        assert grid["bits"] == 3
        step = grid["steps"]["weight+offset"]
        np.testing.assert_allclose(np.round(np.array(neuron.weight) / step), np.array(neuron.weight) / step,
                                   atol=1e-9)
        assert len(set(neuron.weight)) <= 2 ** 3 - 1
    assert run_pipeline(coarse, "quantize-neurons{bits=3}").op(node).neuron == coarse.op(node).neuron
    a = Simulator(snn, None).run(inputs).outputs[-1]
    b = Simulator(coarse, None).run(inputs).outputs[-1]
    assert not np.array_equal(a, b)


def test_quantize_needs_temporal_populations(cnn, inputs):
    rate = run_pipeline(cnn, "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))
    with pytest.raises(PassError, match="no FS or AMOS populations"):
        run_pipeline(rate, "quantize-neurons{bits=4}")


def _residual_graph() -> Graph:
    """conv-relu -> [conv-relu-conv] + identity -> relu -> global pool -> linear: branches of different depth."""
    rng = np.random.default_rng(7)
    g = Graph()
    x = g.add(ops.Input(shape=(2, 8, 8)), name="input")
    pad = (1, 1, 1, 1)
    h = g.add(ops.Conv2d(weight=rng.normal(0, 0.4, (4, 2, 3, 3)), bias=rng.normal(0, 0.1, 4), padding=pad), [x],
              name="stem")
    h = g.add(ops.Relu(), [h], name="stem_relu")
    b = g.add(ops.Conv2d(weight=rng.normal(0, 0.3, (4, 4, 3, 3)), bias=rng.normal(0, 0.1, 4), padding=pad), [h],
              name="conv_a")
    b = g.add(ops.Relu(), [b], name="relu_a")
    b = g.add(ops.Conv2d(weight=rng.normal(0, 0.3, (4, 4, 3, 3)), bias=rng.normal(0, 0.1, 4), padding=pad), [b],
              name="conv_b")
    s = g.add(ops.Add(), [b, h], name="add")
    s = g.add(ops.Relu(), [s], name="relu_out")
    s = g.add(ops.GlobalAvgPool(), [s], name="gap")
    s = g.add(ops.Flatten(), [s], name="flat")
    g.outputs = [g.add(ops.Linear(weight=rng.normal(0, 0.5, (3, 4))), [s], name="fc")]
    return g


def test_residual_branches_of_different_depth_wait_for_each_other():
    g = _residual_graph()
    x = np.random.default_rng(8).uniform(0, 1, (40, 2, 8, 8)).astype(np.float32)
    snn = run_pipeline(g, "canonicalize,normalize{percentile=100},convert-fs{steps=10}", PassContext(calibration=x))
    sim = Simulator(snn, None)
    # stem -> relu_a -> relu_out: three windows; the identity branch waits one window at the Add
    assert sim.latency == 30
    out = sim.run(x).outputs[-1]
    ann = run_analog(g, x)[0]
    assert np.abs(out - ann).max() < 0.01 * np.abs(ann).max()
