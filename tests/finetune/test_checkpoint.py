"""Checkpoint directories: round trip, atomic commit, and clear errors for corrupt or mismatched ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from snncc.errors import FormatError  # noqa: E402
from snncc.finetune import FinetuneOptions, finetune  # noqa: E402
from snncc.finetune.checkpoint import Checkpoint, graph_sha256, load_checkpoint, save_checkpoint  # noqa: E402
from tests.finetune.tiny import converted_cnn, training_set  # noqa: E402

OPTIONS = FinetuneOptions(timesteps=2, epochs=1, lr=1e-3, batch_size=16, limit=32, val_limit=0)


def _checkpoint(epoch: int = 1) -> Checkpoint:
    rng = np.random.default_rng(epoch)
    return Checkpoint(epoch=epoch, step=4 * epoch, method="surrogate", options={"lr": 0.001, "limit": None},
                      graph_sha256="a" * 64, data_sha256="b" * 64,
                      parameters={"layers.0.weight": rng.normal(size=(3, 2)).astype(np.float32)},
                      optimizer={0: {"step": np.array(4.0, np.float32), "exp_avg": rng.normal(size=(3, 2)),
                                     "momentum": 0.9, "extra": None}},
                      torch_rng=rng.integers(0, 256, 16).astype(np.uint8), history=[{"epoch": 1, "loss": 0.5}])


def test_round_trip_is_exact_and_keeps_only_the_latest_arrays(tmp_path):
    save_checkpoint(_checkpoint(1), tmp_path)
    written = _checkpoint(2)
    save_checkpoint(written, tmp_path)
    read = load_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays-000002.npz", "state.json"]
    assert (read.epoch, read.step, read.history, read.options) == (2, 8, written.history, written.options)
    np.testing.assert_array_equal(read.parameters["layers.0.weight"], written.parameters["layers.0.weight"])
    assert read.optimizer[0]["momentum"] == 0.9 and read.optimizer[0]["extra"] is None
    np.testing.assert_array_equal(read.optimizer[0]["exp_avg"], written.optimizer[0]["exp_avg"])
    assert read.optimizer[0]["step"].dtype == np.float32
    np.testing.assert_array_equal(read.torch_rng, written.torch_rng)


def _corrupt_state(directory, text):
    (directory / "state.json").write_text(text)


@pytest.mark.parametrize("damage, message", [
    (lambda d: _corrupt_state(d, "{not json"), "state.json is not readable JSON"),
    (lambda d: _corrupt_state(d, json.dumps({"format": "other"})), "is not a snncc.finetune-checkpoint file"),
    (lambda d: (d / "arrays-000001.npz").unlink(), "arrays file arrays-000001.npz is missing"),
    (lambda d: (d / "arrays-000001.npz").write_bytes(b"PK\x03\x04 truncated"), "does not match the SHA-256"),
    (lambda d: _corrupt_state(d, (d / "state.json").read_text().replace('"epoch": 1', '"epoch": "1"')),
     "epoch must be an integer, got \"1\""),
    (lambda d: (d / "state.json").unlink(), "is not a fine-tuning checkpoint"),
])
def test_a_damaged_checkpoint_is_refused_clearly(tmp_path, damage, message):
    save_checkpoint(_checkpoint(1), tmp_path)
    damage(tmp_path)
    with pytest.raises(FormatError, match=message):
        load_checkpoint(tmp_path)


def test_a_newer_schema_version_is_named(tmp_path):
    save_checkpoint(_checkpoint(1), tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    state["schema_version"] = 7
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(FormatError, match="schema version 7; this snncc reads version 1"):
        load_checkpoint(tmp_path)


def test_resuming_under_other_options_data_or_graph_is_refused(tmp_path):
    graph, data = converted_cnn(), training_set()
    finetune(graph, data, "surrogate", OPTIONS.replace(checkpoint=tmp_path))
    with pytest.raises(FormatError, match=r"does not match this run: lr 0.002, checkpoint 0.001"):
        finetune(graph, data, "surrogate", OPTIONS.replace(lr=2e-3, resume=tmp_path))
    x, y = data
    with pytest.raises(FormatError, match="the training data .* differ"):
        finetune(graph, (x[::-1].copy(), y[::-1].copy()), "surrogate", OPTIONS.replace(resume=tmp_path))
    other = converted_cnn()
    other.attrs["name"] = "another"
    assert graph_sha256(other) != graph_sha256(graph)
    with pytest.raises(FormatError, match="the input .snn differs"):
        finetune(other, data, "surrogate", OPTIONS.replace(resume=tmp_path))
