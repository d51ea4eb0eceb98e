"""Issue 2 and issue 5 acceptance on the full 10,000-image test sets (slow: run with ``python -m pytest -m slow``).

The figures in docs/results.md come from docs/scripts/rate_results.py, which runs the same evaluation.
"""

from __future__ import annotations

import json

import pytest

from snncc.api import compile_model, evaluate
from snncc.data import InputScaling, load_dataset
from tests.conftest import MODELS, data_dir

BOUNDS = {("lenet5-mnist", "mnist"): {8: 1.0, 16: 0.3, 32: 0.1, 128: 0.1},
          ("vgg-fmnist", "fashion-mnist"): {8: 5.0, 16: 2.0, 32: 0.7, 64: 0.3, 128: 0.1}}


@pytest.mark.slow
@pytest.mark.parametrize("name, dataset", list(BOUNDS))
def test_rate_conversion_meets_the_acceptance_gaps(name, dataset):
    model = MODELS / f"{name}.onnx"
    scaling = InputScaling.from_json(json.loads((MODELS / f"{name}.json").read_text())["input_scaling"])
    calibration, _ = load_dataset(data_dir(dataset), split="train", limit=5000)
    x, y = load_dataset(data_dir(dataset), split="test")
    graph = compile_model(model, calibration=calibration, input_scaling=scaling)
    bounds = BOUNDS[(name, dataset)]
    report = evaluate(graph, x, y, sorted(bounds), onnx_model=model)
    ann = report["ann"]["accuracy"]
    for entry in report["snn"]:
        gap = 100 * (ann - entry["accuracy"])
        assert gap <= bounds[entry["timesteps"]], (entry["timesteps"], gap)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline, bounds", [
    ("canonicalize,normalize,convert-rate", {64: 1.0, 256: 0.3}),
    ("canonicalize,normalize,convert-fs{steps=8}", {"fs": 0.5}),
])
def test_resnet_conversion_meets_the_issue_5_gaps(pipeline, bounds):
    """Issue 5 acceptance on the full Fashion-MNIST test set (docs/residual.md; about an hour of CPU for rate at
    T=256 on the Cython runtime)."""
    model = MODELS / "resnet-fmnist.onnx"
    scaling = InputScaling.from_json(json.loads((MODELS / "resnet-fmnist.json").read_text())["input_scaling"])
    calibration, _ = load_dataset(data_dir("fashion-mnist"), split="train", limit=5000)
    x, y = load_dataset(data_dir("fashion-mnist"), split="test")
    graph = compile_model(model, calibration=calibration, pipeline=pipeline, input_scaling=scaling)
    steps = sorted(t for t in bounds if t != "fs") or [1]
    report = evaluate(graph, x, y, steps, onnx_model=model, backend="cython")
    ann = report["ann"]["accuracy"]
    for entry in report["snn"]:
        gap = 100 * (ann - entry["accuracy"])
        assert gap <= bounds.get(entry["timesteps"], bounds.get("fs")), (entry["timesteps"], gap)
