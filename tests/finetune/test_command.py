"""``snncc finetune``: a tiny run end to end (then ``snncc eval`` of the written file), and every refusal: exit 2,
one line on stderr, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.cli import main  # noqa: E402
from snncc.finetune import trainer  # noqa: E402
from snncc.ir import IF, SNN, Graph, load, ops, save  # noqa: E402
from snncc.ir.neurons import FewSpike  # noqa: E402
from tests.conftest import small_cnn  # noqa: E402

RUN = ["--timesteps", "2", "--epochs", "1", "--limit", "48", "--val-limit", "16", "--batch-size", "16", "--quiet"]


def test_finetune_then_eval_end_to_end(files, tmp_path, capsys):
    snn, data = files
    out = tmp_path / "tuned.snn"
    assert main(["finetune", str(snn), "--data", str(data), "-o", str(out), *RUN]) == 0
    printed = capsys.readouterr().out
    assert "training data: .npz" in printed and f"wrote {out} (surrogate, 1 epoch; validation accuracy" in printed
    tuned = load(out)
    record = tuned.attrs["finetune"]
    assert record["method"] == "surrogate" and record["data"]["path"] == str(data) and record["epochs"] == 1
    assert record["input"]["path"] == str(snn.resolve()) and len(record["input"]["sha256"]) == 64
    assert not np.array_equal(tuned.op("conv1").weight, load(snn).op("conv1").weight)
    report = tmp_path / "report.json"
    assert main(["eval", str(out), "--data", str(data), "--timesteps", "2", "--report", str(report), "--quiet"]) == 0
    assert json.loads(report.read_text())["snn"][0]["timesteps"] == 2


@pytest.mark.parametrize("method", ["proxy", "calibrate"])
def test_the_other_methods_run_from_the_command(files, tmp_path, capsys, method):
    snn, data = files
    out = tmp_path / f"{method}.snn"
    assert main(["finetune", str(snn), "--data", str(data), "-o", str(out), "--method", method, *RUN]) == 0
    assert f"wrote {out} ({method}" in capsys.readouterr().out
    before, tuned = load(snn), load(out)
    assert tuned.attrs["finetune"]["method"] == method
    changed = [n for n in before.find(ops.Conv2d) + before.find(ops.Linear)
               if not np.array_equal(tuned.op(n).bias, before.op(n).bias)]
    assert changed  # proxy trains every bias; calibration corrects the biases feeding the populations
    if method == "calibrate":
        assert tuned.attrs["calibration"]["timesteps"] == 2 and tuned.attrs["finetune"]["epochs"] == 0
    assert main(["eval", str(out), "--data", str(data), "--timesteps", "2", "--quiet"]) == 0


def _ann_file(tmp_path):
    return save(small_cnn(), tmp_path / "ann.snn")


def _unlowered_file(tmp_path):
    """An SNN-level graph the torch lowering refuses: rate-coded and few-spike populations mixed."""
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 12, 12)), name="input")
    flat = g.add(ops.Flatten(), [x], name="flatten")
    fc = g.add(ops.Linear(weight=np.ones((5, 144), np.float32) / 144), [flat], name="fc")
    spikes = g.add(ops.Population(neuron=IF()), [fc], name="if")
    fc2 = g.add(ops.Linear(weight=np.ones((4, 5), np.float32) / 5), [spikes], name="fc2")
    fs = g.add(ops.Population(neuron=FewSpike()), [fc2], name="fs")
    g.outputs = [g.add(ops.Readout(), [fs], name="readout")]
    return save(g, tmp_path / "mixed.snn")


def _wrong_shape_data(tmp_path):
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((40, 1, 5, 5), np.uint8), y=np.zeros(40, np.int64))
    return path


def _corrupt_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "state.json").write_text("{truncated")
    return ["--resume", str(directory)]


@pytest.mark.parametrize("change, message", [
    (lambda p, args: args.__setitem__(1, str(_ann_file(p))), "is at the ann level; fine-tuning takes a converted SNN"),
    (lambda p, args: args.__setitem__(1, str(_unlowered_file(p))), r"populations \['if'\] are rate-coded but the graph also has few-spike populations"),
    (lambda p, args: args.__setitem__(3, str(_wrong_shape_data(p))), r"samples of shape \(1, 5, 5\), but .* takes"),
    (lambda p, args: args.extend(_corrupt_checkpoint(p)), "is corrupt or incomplete: state.json is not readable"),
    (lambda p, args: args.extend(["--timesteps", "0"]), r"timesteps \(--timesteps\) must be a positive integer"),
    (lambda p, args: args.extend(["--method", "bptt"]), "unknown fine-tuning method 'bptt'; available: calibrate, proxy"),
    (lambda p, args: args.extend(["--val-limit", "48"]), "holds back every one of the 48 training images"),
])
def test_refusals_are_one_line_and_write_nothing(files, tmp_path, capsys, change, message):
    snn, data = files
    out = tmp_path / "out" / "tuned.snn"
    args = ["finetune", str(snn), "--data", str(data), "-o", str(out), *RUN]
    change(tmp_path, args)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("snncc: error: ") and "\n" not in err
    assert __import__("re").search(message, err), err
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_refused(files, tmp_path, capsys):
    snn, data = files
    out = tmp_path / "tuned.snn"
    assert main(["finetune", str(snn), "--data", str(data), "-o", str(out), *RUN, "--device", "cuda"]) == 2
    assert "torch sees no CUDA device here; use --device cpu" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_leaves_no_partial_snn_but_the_last_checkpoint(files, tmp_path, capsys, monkeypatch):
    snn, data = files
    out = tmp_path / "out" / "tuned.snn"
    epoch, calls = trainer._train_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", interrupted)
    args = ["finetune", str(snn), "--data", str(data), "-o", str(out), *RUN, "--epochs", "2",
            "--checkpoint", str(tmp_path / "ckpt")]
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(trainer, "_train_epoch", epoch)
    args[-2:] = ["--resume", str(tmp_path / "ckpt")]
    assert main(args) == 0 and load(out).attrs["finetune"]["epochs"] == 2
