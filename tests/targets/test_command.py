"""snncc targets, check, emit and verify on the command line."""

from __future__ import annotations

import json

import numpy as np

from snncc.cli import main
from snncc.ir import save

from .conftest import small_snn


def test_targets_lists_both_loihi_variants(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "loihi1: Intel Loihi 1" in out and "loihi2: Intel Loihi 2" in out and "neurons/core 1024" in out


def test_check_prints_every_violation_and_exits_non_zero_without_writing(tmp_path, capsys):
    path = save(small_snn(signed=True), tmp_path / "signed.snn")
    assert main(["check", str(path), "--target", "loihi1"]) == 1
    out = capsys.readouterr().out
    assert "does not fit loihi1 (2 violations)" in out
    assert "s1: unsigned spikes; actual signed IF" in out and "s2: unsigned spikes" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signed.snn"]
    assert main(["emit", str(path), "--target", "loihi1", "-o", str(tmp_path / "b")]) == 2
    assert "snncc: error: the model does not fit loihi1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_emit_then_verify_reports_accuracies_and_resources(tmp_path, capsys):
    path = save(small_snn(), tmp_path / "m.snn")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (12, 1, 8, 8)).astype(np.uint8),
             y=rng.integers(0, 3, 12))
    assert main(["emit", str(path), "--target", "loihi2", "-o", str(tmp_path / "b"), "--timesteps", "6",
                 "--data", str(tmp_path / "data.npz"), "--limit", "4"]) == 0
    assert "synaptic operations per inference" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "b"), "--data", str(tmp_path / "data.npz"),
                 "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "every file matches its sha256" in out and "prediction_agreement" in out and "chip 0 core" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == 12 and {"float_accuracy", "target_accuracy", "prediction_agreement"} <= set(report)
