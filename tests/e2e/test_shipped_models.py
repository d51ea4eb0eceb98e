"""The shipped models on real data: conversion keeps accuracy, and both torch exporters give the same SNN."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.api import ann_accuracy, compile_model, evaluate
from snncc.data import InputScaling, load_dataset
from snncc.runtime import Simulator
from tests.conftest import MODELS, data_dir

UNIT = InputScaling(scale=1 / 255)
CASES = [("lenet5-mnist", "mnist"), ("vgg-fmnist", "fashion-mnist")]
# Largest accuracy loss (fraction) allowed on 300 test images at T=8 and T=64; the full-test-set acceptance figures
# are in tests/e2e/test_acceptance_slow.py and docs/results.md.
LOSS_BOUNDS = {"lenet5-mnist": {8: 0.02, 64: 0.01}, "vgg-fmnist": {8: 0.15, 64: 0.015}}
# Every shipped ANN, including the SiLU network that rate coding cannot convert.
ANN_CASES = [*CASES, ("silu-fmnist", "fashion-mnist")]


def _model(name: str, exporter: str = ""):
    path = MODELS / f"{name}{exporter}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not built yet (python models/train.py {name})")
    return path


@pytest.mark.parametrize("name, dataset", CASES)
def test_rate_conversion_keeps_accuracy_on_real_test_images(name, dataset):
    model = _model(name)
    calib, _ = load_dataset(data_dir(dataset), split="train", limit=1000)
    x, y = load_dataset(data_dir(dataset), split="test", limit=300)
    graph = compile_model(model, calibration=calib, input_scaling=UNIT)
    report = evaluate(graph, x, y, timesteps=[8, 64], onnx_model=model)
    ann = report["ann"]["accuracy"]
    assert ann > 0.9
    for entry in report["snn"]:
        assert entry["accuracy"] >= ann - LOSS_BOUNDS[name][entry["timesteps"]], report


@pytest.mark.parametrize("name, dataset", CASES)
def test_both_torch_exporters_compile_to_the_same_snn(name, dataset):
    legacy, dynamo = _model(name), _model(name, ".dynamo")
    calib, _ = load_dataset(data_dir(dataset), split="train", limit=500)
    x, _ = load_dataset(data_dir(dataset), split="test", limit=100)
    graphs = [compile_model(m, calibration=calib, input_scaling=UNIT) for m in (legacy, dynamo)]
    kinds = [[g.op(n).kind for n in g.topological_order()] for g in graphs]
    assert kinds[0] == kinds[1]
    for a, b in zip(*(g.topological_order() for g in graphs)):
        op_a, op_b = graphs[0].op(a), graphs[1].op(b)
        for field, value in op_a.params().items():
            if isinstance(value, np.ndarray):
                np.testing.assert_allclose(value, getattr(op_b, field), rtol=1e-5, atol=1e-6)
    results = [Simulator(g, timesteps=32).run(x) for g in graphs]
    np.testing.assert_array_equal(results[0].outputs[-1].argmax(1), results[1].outputs[-1].argmax(1))
    first, second = graphs
    if all(first.op(n).same_as(second.op(m)) for n, m in zip(first.topological_order(),
                                                              second.topological_order())):
        np.testing.assert_array_equal(results[0].outputs, results[1].outputs)
    else:
        # The exporters fold BatchNorm themselves (dynamo) or leave it to canonicalize (legacy), so weights agree
        # only to float32 rounding and a membrane within that rounding of the threshold may spike in one SNN and
        # not the other. Such flips must stay rare.
        differs = np.abs(results[0].outputs - results[1].outputs) > 1e-4
        assert differs.mean() < 0.05


def test_ann_accuracy_of_the_shipped_lenet_on_the_full_test_set():
    model = _model("lenet5-mnist")
    x, y = load_dataset(data_dir("mnist"), split="test")
    assert ann_accuracy(model, UNIT.apply(x), y) >= 0.99


def test_bundled_demo_model_is_the_shipped_model():
    from importlib import resources

    bundled = resources.files("snncc") / "sample" / "lenet5-mnist.onnx"
    assert bundled.read_bytes() == _model("lenet5-mnist").read_bytes()


def test_demo_runs_on_the_bundled_sample(tmp_path, capsys):
    from snncc.cli import main

    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 1000 and report["ann"]["accuracy"] > 0.98
    assert {e["timesteps"]: e["accuracy"] for e in report["snn"]}[32] >= report["ann"]["accuracy"] - 0.01
    assert (tmp_path / "accuracy.png").is_file() and (tmp_path / "lenet5-mnist.snn").is_file()


@pytest.mark.parametrize("exporter", ["", ".dynamo"])
@pytest.mark.parametrize("name, dataset", ANN_CASES)
def test_canonical_graph_agrees_with_onnxruntime(name, dataset, exporter):
    import onnxruntime as ort

    from snncc.frontend.onnx import import_onnx
    from snncc.ir import ops
    from snncc.passes import run_pipeline
    from snncc.runtime import run_analog

    model = _model(name, exporter)
    x, _ = load_dataset(data_dir(dataset), split="test", limit=64)
    x = UNIT.apply(x)
    canonical = run_pipeline(import_onnx(model), "canonicalize")
    assert not canonical.find((ops.Affine, ops.Identity)), "normalization and BatchNorm must fold into layers"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: x})[0]
    ours = run_analog(canonical, x)[0]
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


@pytest.mark.parametrize("exporter", ["", ".dynamo"])
def test_silu_model_has_one_silu_per_activation_and_the_predictions_of_onnxruntime(exporter):
    """Both exporters write SiLU as Mul(x, Sigmoid(x)); each pair imports as one Silu op. On 1,000 test images the
    canonical graph predicts the same classes as onnxruntime (the model card reports all 10,000)."""
    import onnxruntime as ort

    from snncc.frontend.onnx import import_onnx
    from snncc.passes import run_pipeline
    from snncc.runtime import run_analog

    model = _model("silu-fmnist", exporter)
    x, y = load_dataset(data_dir("fashion-mnist"), split="test", limit=1000)
    x = UNIT.apply(x)
    canonical = run_pipeline(import_onnx(model), "canonicalize")
    assert [canonical.op(n).kind for n in canonical.topological_order()] == [
        "Input", *["Conv2d", "Silu", "AvgPool2d"] * 3, "Flatten", "Linear", "Silu", "Linear"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: x})[0]
    ours = run_analog(canonical, x)[0]
    np.testing.assert_array_equal(ours.argmax(1), reference.argmax(1))
    assert (ours.argmax(1) == y).mean() > 0.9


def test_rate_conversion_of_the_silu_model_points_at_few_spike_coding():
    from snncc.errors import UnsupportedModelError

    model = _model("silu-fmnist")
    calib, _ = load_dataset(data_dir("fashion-mnist"), split="train", limit=100)
    with pytest.raises(UnsupportedModelError, match=r"'features_features\.2_Mul' \(Silu\).*--method fs"):
        compile_model(model, calibration=calib, input_scaling=UNIT)
