"""Issue 2 acceptance on the full 10,000-image test sets (slow: run with ``python -m pytest -m slow``).

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
