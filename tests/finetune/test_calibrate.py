"""Calibration (snncc/finetune/calibrate.py) of LeNet-5 at T=4 on bundled MNIST images."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import snncc  # noqa: E402
from snncc.data import load_dataset  # noqa: E402
from snncc.errors import SimulationError  # noqa: E402
from snncc.finetune.calibrate import calibrate, rate_errors  # noqa: E402
from snncc.ir import ops  # noqa: E402
from snncc.runtime import Simulator  # noqa: E402
from snncc.runtime.torch_lowering import lower  # noqa: E402
from tests.conftest import MODELS, REPO  # noqa: E402

T = 4
SAMPLES = REPO / "snncc" / "sample"


@pytest.fixture(scope="module")
def lenet():
    """LeNet-5 converted on 200 bundled training images, calibrated at T=4 on 200 others; 200 held-out test
    images."""
    from snncc.api import compile_model

    x_train, _ = load_dataset(SAMPLES / "mnist-train-1000.npz")
    x_test, y_test = load_dataset(SAMPLES / "mnist-test-1000.npz", limit=200)
    graph = compile_model(MODELS / "lenet5-mnist.onnx", calibration=x_train[:200])
    return graph, calibrate(graph, x_train[200:400], T), x_test, y_test, x_train[200:400]


def test_calibration_reduces_the_mean_rate_error_of_every_layer_on_held_out_images(lenet):
    graph, calibrated, x, _, _ = lenet
    before, after = rate_errors(graph, x, T), rate_errors(calibrated, x, T, target=graph)
    assert list(before) == graph.find(ops.Population) and len(before) == 4
    for node in before:
        assert np.abs(after[node]).mean() < np.abs(before[node]).mean(), node
    # The calibration images saw the same: its report agrees in direction.
    report = calibrated.attrs["calibration"]["populations"]
    assert all(report[n]["rate_error_after"] < report[n]["rate_error_before"] for n in report)


def test_only_biases_of_the_feeding_layers_and_initial_membranes_change(lenet):
    graph, calibrated, _, _, _ = lenet
    record = calibrated.attrs["calibration"]
    assert record["timesteps"] == T and record["images"] == 200 and record["bias"]
    assert record["potential"] == "layer" and not record["rescale"]
    fed = {record["populations"][p]["bias_layer"] for p in record["populations"]}
    assert fed == {graph.inputs(p)[0] for p in graph.find(ops.Population)}
    for node in graph.nodes():
        old, new = graph.op(node), calibrated.op(node)
        if node in fed:
            np.testing.assert_array_equal(old.weight, new.weight)
            assert new.bias.dtype == np.float32 and not np.array_equal(old.bias, new.bias)
        elif isinstance(old, ops.Population):
            assert old.neuron.threshold == new.neuron.threshold and old.neuron.v_init == 0.5
            assert isinstance(new.neuron.v_init, float) and new.neuron.v_init != 0.5  # one value per layer
        else:
            assert old.same_as(new), node


def test_the_written_graph_round_trips_and_the_reference_reproduces_the_lowering(lenet, tmp_path):
    graph, calibrated, x, y, x_calibration = lenet
    path = tmp_path / "lenet-calibrated.snn"
    snncc.save(calibrated, path)
    loaded = snncc.load(path)
    assert loaded.attrs["calibration"] == calibrated.attrs["calibration"]
    assert all(loaded.op(n).same_as(calibrated.op(n)) for n in calibrated.nodes())
    # The simulator reproduces, from the file, the rate errors that calibration reported on its images.
    errors = rate_errors(loaded, x_calibration, T, target=graph)
    for node, entry in loaded.attrs["calibration"]["populations"].items():
        assert np.abs(errors[node]).mean() == pytest.approx(entry["rate_error_after"], rel=1e-9, abs=1e-12), node
    result = Simulator(loaded, timesteps=T).run(x)
    from snncc.data import InputScaling

    xs = InputScaling.from_json(calibrated.attrs["input_scaling"]).apply(x)
    with torch.no_grad():
        lowered = lower(calibrated)(xs, T).outputs[0][-1].numpy()
    np.testing.assert_array_equal(result.outputs[-1].argmax(1), lowered.argmax(1))
    assert result.accuracy(y, T) > 0.95  # (accuracy before and after on full test sets: docs/calibration.md)


def test_bad_input_is_refused_with_the_reason(lenet):
    graph, _, x, _, _ = lenet
    with pytest.raises(SimulationError, match="timesteps must be at least 1"):
        calibrate(graph, x[:10], 0)
    with pytest.raises(SimulationError, match="nothing to do"):
        calibrate(graph, x[:10], T, bias=False, potential="none")
    with pytest.raises(SimulationError, match="potential must be one of layer, channel, none"):
        calibrate(graph, x[:10], T, potential="per-neuron")
    with pytest.raises(SimulationError, match="does not fit the model input"):
        calibrate(graph, np.zeros((4, 3, 5, 5)), T)
    ann = graph.clone()
    ann.attrs["level"] = "ann"
    with pytest.raises(SimulationError, match="SNN-level graphs"):
        calibrate(ann, x[:10], T)


def test_per_channel_potential_calibration_writes_one_initial_membrane_per_channel(lenet):
    graph, _, x, _, _ = lenet
    calibrated = calibrate(graph, x[:100], T, bias=False, potential="channel")
    for node in graph.find(ops.Population):
        v_init = calibrated.op(node).neuron.v_init
        assert isinstance(v_init, tuple) and len(v_init) == graph.types()[node].shape[0], node
        np.testing.assert_array_equal(calibrated.op(graph.inputs(node)[0]).bias, graph.op(graph.inputs(node)[0]).bias)


def test_the_quantization_model_of_rescaling_is_what_if_neurons_do():
    from snncc.finetune.calibrate import quantized
    from snncc.ir import IF
    from snncc.runtime.dynamics import membrane_parameters, membrane_start, membrane_step

    a = np.linspace(-0.2, 1.3, 301, dtype=np.float32)
    for alpha in (0.25, 0.6, 1.0):
        params = membrane_parameters(IF(threshold=alpha, v_init=0.5), a.shape)
        state, count = membrane_start(params, a.shape), np.zeros_like(a)
        for _ in range(T):
            state, spikes = membrane_step(params, state, a)
            count += spikes
        expected = quantized(torch.from_numpy(a), alpha, T, 0.5).numpy()
        # floor(T a / alpha + 1/2) rounds where T a / alpha + 1/2 is an integer up to float rounding: allow those
        exact = np.abs(T * a / alpha + 0.5 - np.round(T * a / alpha + 0.5)) > 1e-4
        np.testing.assert_allclose((alpha * count / T)[exact], expected[exact], rtol=1e-6)


def test_rescaling_moves_a_factor_from_the_thresholds_into_the_reading_layers(lenet):
    graph, _, x, _, _ = lenet
    rescaled = calibrate(graph, x[:100], T, bias=False, potential="none", rescale=True)
    report = rescaled.attrs["calibration"]["populations"]
    scaled = [n for n in report if report[n]["threshold_scale"] != 1.0]
    assert scaled, report
    for node in scaled:
        alpha = np.float32(report[node]["threshold_scale"])
        assert rescaled.op(node).neuron.threshold == float(np.float32(graph.op(node).neuron.threshold) * alpha)
        readers = [u for u, _ in rescaled.users(node)]
        while not isinstance(rescaled.op(readers[0]), (ops.Conv2d, ops.Linear)):  # through pooling and views
            readers = [u for u, _ in rescaled.users(readers[0])]
        np.testing.assert_array_equal(rescaled.op(readers[0]).weight, graph.op(readers[0]).weight * alpha)
