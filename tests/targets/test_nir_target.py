"""``--target nir``: the NIR export as a bundle of the target framework (check, emit, verify)."""

from __future__ import annotations

import json

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from snncc.cli import main  # noqa: E402
from snncc.targets.base import get_target  # noqa: E402
from tests.conftest import MODELS, data_dir  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from snncc.api import compile_model
    from snncc.data import load_dataset
    from snncc.ir import save

    calib, _ = load_dataset(data_dir("mnist"), split="train", limit=300)
    work = tmp_path_factory.mktemp("nir-target")
    avg = save(compile_model(MODELS / "lenet5-avg-mnist.onnx", calibration=calib), work / "avg.snn")
    maxpool = save(compile_model(MODELS / "lenet5-mnist.onnx", calibration=calib), work / "max.snn")
    return avg, maxpool


def test_emit_writes_every_flavor_and_verify_runs_the_legalized_graph(compiled, tmp_path, capsys):
    avg, _ = compiled
    bundle = tmp_path / "bundle"
    assert main(["emit", str(avg), "--target", "nir", "-o", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"] == "nir" and manifest["pipeline"]["legalization"] == get_target("nir").pipeline
    for name in ("network.nir", "network.snntorch.nir", "network.norse.nir"):
        graph = nir.read(bundle / name)  # every written file loads with the nir package
        assert any(type(n).__name__ in ("IF", "LIF") for n in graph.nodes.values())
    assert "NIR is a file format" in (bundle / "README.md").read_text()
    report = tmp_path / "r.json"
    assert main(["verify", str(bundle), "--data", str(data_dir("mnist")), "--limit", "50",
                 "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["images"] == 50 and result["prediction_agreement"] >= 0.9
    assert np.isclose(result["float_accuracy"], 1.0, atol=0.05)


def test_a_max_pooling_model_is_refused_with_the_remedy_and_nothing_is_written(compiled, tmp_path, capsys):
    _, maxpool = compiled
    assert main(["check", str(maxpool), "--target", "nir"]) == 1
    printed = capsys.readouterr().out
    assert "does not fit nir (2 violations)" in printed  # both max poolings, at once
    assert printed.count("remedy: NIR has no max pooling: use the average-pooling model") == 2
    assert main(["emit", str(maxpool), "--target", "nir", "-o", str(tmp_path / "b")]) == 2
    assert "NIR has no max pooling" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
