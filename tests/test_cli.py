"""The command line: compile, eval, inspect on a small ONNX model and .npz data; errors are one clear line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from snncc.cli import main


@pytest.fixture
def tiny_model(tmp_path):
    """A 2-layer MLP on 1x4x4 inputs (Flatten, Gemm, Relu, Gemm, Softmax), weights fixed by a seed."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, 0.5, (16, 12)).astype(np.float32), rng.normal(0, 0.1, 12).astype(np.float32)
    w2, b2 = rng.normal(0, 0.5, (12, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["z"], name="fc2"),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    x = rng.integers(0, 256, (200, 1, 4, 4)).astype(np.uint8)
    import onnxruntime as ort

    logits = ort.InferenceSession(str(path)).run(None, {"x": x.astype(np.float32) / 255})[0]
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=logits.argmax(axis=1))  # labels = the ANN's own predictions
    return path, data


def _direct(snn_path, data, timesteps: int):
    """The SNN's readouts, spikes and synaptic operations on the .npz data, from the Simulator directly (the
    numbers the CLI reports must be these)."""
    import snncc
    from snncc.runtime import Simulator

    with np.load(data) as archive:
        x, y = archive["x"], archive["y"]
    return Simulator(snncc.load(snn_path), timesteps=timesteps).run(x), y  # the recorded scaling applies


def test_compile_eval_inspect(tiny_model, tmp_path, capsys):
    model, data = tiny_model
    snn = tmp_path / "tiny.snn"
    assert main(["compile", str(model), "-o", str(snn), "--calib", str(data), "--input-scaling", "unit",
                 "--quiet"]) == 0
    report, plot = tmp_path / "r.json", tmp_path / "acc.png"
    assert main(["eval", str(snn), "--data", str(data), "--onnx", str(model), "--timesteps", "4,64",
                 "--report", str(report), "--plot", str(plot), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ANN accuracy (onnxruntime): 100.00%" in out
    doc = json.loads(report.read_text())
    assert doc["ann"]["accuracy"] == 1.0
    assert [e["timesteps"] for e in doc["snn"]] == [4, 64]
    assert doc["snn"][1]["accuracy"] >= 0.95
    assert (doc["neurons"], doc["synapses"], doc["images"]) == (12, 228, 200)
    result, y = _direct(snn, data, 64)
    # Every figure of the report, recomputed from the simulated values (the report averages float32 counts).
    for entry in doc["snn"]:
        t = entry["timesteps"]
        spikes = sum(float(s[:t].sum()) for s in result.spikes.values()) / len(y)
        assert entry["accuracy"] == float((result.outputs[t - 1].argmax(axis=1) == y).mean())
        assert entry["spikes_per_image"] == pytest.approx(spikes, rel=1e-6)
        assert entry["spikes_per_neuron"] == pytest.approx(spikes / 12, rel=1e-6)
        assert entry["synops_per_image"] == pytest.approx(float(result.synops[:t].sum()) / len(y), rel=1e-6)
        assert f"{100 * entry['accuracy']:>8.2f}% {100 * (entry['accuracy'] - 1):>+8.2f}" in out, "the table row"
    assert doc["snn"][1]["spikes_per_image"] > doc["snn"][0]["spikes_per_image"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(snn)]) == 0
    text = capsys.readouterr().out
    assert "Population" in text and "IF(threshold=1" in text and "rate" in text
    assert "12 neurons, 228 synapses" in text.splitlines()[-1]
    assert main(["inspect", str(model)]) == 0
    assert "level=ann" in capsys.readouterr().out


def test_recorded_input_scaling_is_used_by_eval(tiny_model, tmp_path, capsys):
    model, data = tiny_model
    snn = tmp_path / "tiny.snn"
    main(["compile", str(model), "-o", str(snn), "--calib", str(data), "--input-scaling", "unit", "--quiet"])
    main(["eval", str(snn), "--data", str(data), "--timesteps", "64", "--report", str(tmp_path / "a.json"),
          "--quiet"])
    main(["eval", str(snn), "--data", str(data), "--timesteps", "64", "--report", str(tmp_path / "b.json"),
          "--input-scaling", "none", "--quiet"])
    import snncc

    assert "ANN accuracy (onnxruntime)" in capsys.readouterr().out, "eval finds the recorded source model"
    assert snncc.load(snn).attrs["input_scaling"] == {"scale": 1 / 255, "mean": 0.0, "std": 1.0}
    scaled = json.loads((tmp_path / "a.json").read_text())["snn"][0]["spikes_per_image"]
    raw = json.loads((tmp_path / "b.json").read_text())["snn"][0]["spikes_per_image"]
    assert raw > 2 * scaled, "unscaled 0..255 inputs must drive the neurons far harder"


@pytest.mark.parametrize("args, message", [
    (["compile", "{missing}", "-o", "{out}"], "no such ONNX file"),
    (["compile", "{truncated}", "-o", "{out}"], "truncated or corrupt"),
    (["compile", "{model}", "-o", "{out}"], "needs calibration data; pass --calib"),
    (["compile", "{model}", "-o", "{out}", "--calib", "{missing}"], "does not exist"),
    (["compile", "{model}", "-o", "{out}", "--pipeline", "canonicalize,bogus"], "unknown pass 'bogus'"),
    (["eval", "{truncated}", "--data", "{data}"], "corrupt or truncated"),
])
def test_errors_are_one_line_on_stderr_and_write_nothing(tiny_model, tmp_path, capsys, args, message):
    model, data = tiny_model
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(model.read_bytes()[:200])
    out = tmp_path / "out" / "x.snn"
    values = {"model": model, "data": data, "missing": tmp_path / "nope.onnx", "truncated": truncated, "out": out}
    assert main([a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("snncc: error:") and message in err
    assert "Traceback" not in err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_eval_backend_and_threads_options(tiny_model, tmp_path, capsys):
    pytest.importorskip("snncc.runtime._kernels", reason="the Cython runtime is not built")
    model, data = tiny_model
    snn = tmp_path / "tiny.snn"
    main(["compile", str(model), "-o", str(snn), "--calib", str(data), "--input-scaling", "unit", "--quiet"])
    reports = {}
    for backend in ("reference", "cython"):
        path = tmp_path / f"{backend}.json"
        assert main(["eval", str(snn), "--data", str(data), "--timesteps", "8,32", "--backend", backend,
                     "--threads", "2", "--report", str(path), "--quiet"]) == 0
        reports[backend] = json.loads(path.read_text())
    assert "images/s (cython)" in capsys.readouterr().out
    for backend, doc in reports.items():
        assert doc["backend"] == backend and doc["threads"] == 2
        assert doc["images_per_second"] == pytest.approx(doc["images"] / doc["seconds"])
    assert reports["reference"]["snn"] == reports["cython"]["snn"], "both backends compute the same spikes"


@pytest.mark.parametrize("method", ["rate", "fs"])
def test_eval_device_option_of_the_torch_backend(tiny_model, tmp_path, capsys, method):
    torch = pytest.importorskip("torch")
    model, data = tiny_model
    snn = tmp_path / "tiny.snn"
    main(["compile", str(model), "-o", str(snn), "--calib", str(data), "--input-scaling", "unit", "--method", method,
          "--quiet"])
    reports = {}
    for backend, device in (("reference", None), ("torch", "cpu")):
        path = tmp_path / f"{backend}.json"
        extra = [] if device is None else ["--device", device]
        assert main(["eval", str(snn), "--data", str(data), "--timesteps", "8", "--backend", backend, *extra,
                     "--report", str(path), "--quiet"]) == 0
        reports[backend] = json.loads(path.read_text())
    assert reports["torch"]["device"] == "cpu" and reports["torch"]["backend"] == "torch"
    assert [r["accuracy"] for r in reports["torch"]["snn"]] == [r["accuracy"] for r in reports["reference"]["snn"]]
    capsys.readouterr()
    assert main(["eval", str(snn), "--data", str(data), "--backend", "reference", "--device", "cpu", "--quiet"]) == 2
    assert "backend 'reference' runs on the CPU only" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["eval", str(snn), "--data", str(data), "--backend", "torch", "--device", "cuda", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("snncc: error:") and "no CUDA device" in err and "--device cpu" in err


def test_eval_rejects_a_bad_thread_count(tiny_model, tmp_path, capsys):
    _, data = tiny_model
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "x.snn"), "--data", str(data), "--threads", "0"])
    assert "positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("method, most", [("fs", None), ("amos", 1)])
def test_compile_and_eval_with_temporal_codings(tiny_model, tmp_path, capsys, method, most):
    model, data = tiny_model
    snn, report = tmp_path / f"tiny-{method}.snn", tmp_path / "r.json"
    assert main(["compile", str(model), "-o", str(snn), "--calib", str(data), "--input-scaling", "unit",
                 "--method", method, "--fs-steps", "6", "--quiet"]) == 0
    assert main(["eval", str(snn), "--data", str(data), "--report", str(report), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{method} coding: answer after 6 steps, pipelined one input every 6 steps" in out
    doc = json.loads(report.read_text())
    assert doc["latency"] == 6 and doc["steps_per_image"] == 6 and [e["timesteps"] for e in doc["snn"]] == [6]
    assert doc["snn"][0]["accuracy"] >= 0.95
    # The most spikes of any neuron, from the simulated spike trains (AMOS: each neuron fires at most once)
    import snncc
    from snncc.runtime.temporal import TemporalSimulator

    graph = snncc.load(snn)
    with np.load(data) as archive:
        x, y = archive["x"].astype(np.float32) / 255, archive["y"]
    result = TemporalSimulator(graph).run_batch(x)
    assert doc["max_spikes_per_neuron"] == max(result.max_spikes_per_neuron.values())
    assert 1 <= doc["max_spikes_per_neuron"] <= (most or 6)
    assert doc["snn"][0]["accuracy"] == float((result.outputs[0][-1].argmax(axis=1) == y).mean())
    assert doc["snn"][0]["spikes_per_image"] == pytest.approx(
        sum(float(s.sum()) for s in result.spikes.values()) / len(y), rel=1e-6)
    # 16*12 + 12*3 weights; AMOS: every one of the 6 neurons of a unit gets the gate input, plus 15 inhibitory
    # synapses in each of the 12 units
    assert doc["synapses"] == (228 if method == "fs" else 228 + 5 * 16 * 12 + 12 * 15)
    assert doc["neurons"] == (12 if method == "fs" else 72)


def test_fs_steps_only_with_a_temporal_method(tiny_model, tmp_path, capsys):
    model, data = tiny_model
    assert main(["compile", str(model), "-o", str(tmp_path / "x.snn"), "--calib", str(data), "--fs-steps", "4",
                 "--quiet"]) == 2
    assert "--fs-steps applies to --method fs or amos" in capsys.readouterr().err
    assert not (tmp_path / "x.snn").exists()


@pytest.mark.parametrize("source", ["found", "moved"])
def test_wrong_shape_data_at_eval_is_one_clean_error(tiny_model, tmp_path, capsys, source):
    """With the recorded ONNX file found (the ANN is evaluated too) or not, 5x5 data for a 4x4 model is the same
    one-line error with status 2, not a traceback from onnxruntime."""
    model, _ = tiny_model
    snn = tmp_path / "tiny.snn"
    assert main(["compile", str(model), "-o", str(snn), "--quiet"] + _calib(tiny_model)) == 0
    if source == "moved":
        model.rename(tmp_path / "elsewhere.onnx")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((10, 1, 5, 5), np.uint8), y=np.zeros(10, np.uint8))
    capsys.readouterr()
    assert main(["eval", str(snn), "--data", str(wrong), "--timesteps", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"snncc: error: {wrong}: samples of shape (1, 5, 5), but {snn} takes (1, 4, 4); for images "
                   "pass --resize H,W and/or --center-crop H,W (resize=(H, W), center_crop=(H, W) in Python)\n")


def test_wrong_shape_data_for_the_ann_alone_is_a_data_error(tiny_model):
    from snncc.api import ann_accuracy
    from snncc.errors import DataError

    model, _ = tiny_model
    with pytest.raises(DataError, match=r"shape \(1, 5, 5\) per sample does not fit the ONNX model input 'x' of "
                                        r"shape \(1, 4, 4\)"):
        ann_accuracy(model, np.zeros((3, 1, 5, 5), np.float32), np.zeros(3))


def _calib(tiny_model) -> list[str]:
    return ["--calib", str(tiny_model[1]), "--input-scaling", "unit"]


@pytest.mark.parametrize("method", ["fs", "amos"])
def test_timesteps_on_a_temporal_model_says_it_answers_at_its_latency(tiny_model, tmp_path, capsys, method):
    model, data = tiny_model
    snn = tmp_path / "t.snn"
    assert main(["compile", str(model), "-o", str(snn), "--method", method, "--fs-steps", "4", "--quiet"]
                + _calib(tiny_model)) == 0
    capsys.readouterr()
    assert main(["eval", str(snn), "--data", str(data), "--timesteps", "8,16", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"note: --timesteps is ignored: {method} coding answers once, at its latency of 4 steps" in out
    assert main(["eval", str(snn), "--data", str(data), "--quiet"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_timesteps_default_for_rate_models(tiny_model, tmp_path, capsys):
    model, data = tiny_model
    snn, report = tmp_path / "r.snn", tmp_path / "r.json"
    assert main(["compile", str(model), "-o", str(snn), "--quiet"] + _calib(tiny_model)) == 0
    assert main(["eval", str(snn), "--data", str(data), "--quiet", "--report", str(report)]) == 0
    assert "note:" not in capsys.readouterr().out
    assert [e["timesteps"] for e in json.loads(report.read_text())["snn"]] == [8, 16, 32, 64, 128]


def test_compile_names_the_runtime_cost_of_a_pass_option(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    out = tmp_path / "x.snn"
    assert main(["compile", str(model), "-o", str(out), "--quiet", "--pipeline",
                 "canonicalize,normalize,convert-rate{maxpool=avg}"] + _calib(tiny_model)) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert notes[0].startswith("note: convert-rate{maxpool=avg}: average pooling of spikes stands in for the model's "
                               "max pooling, an approximation that costs accuracy")
    assert main(["compile", str(model), "-o", str(out), "--quiet"] + _calib(tiny_model)) == 0
    assert "note:" not in capsys.readouterr().out


def test_plot_title_names_the_model_and_the_image_count(tiny_model, tmp_path, monkeypatch):
    import snncc.api

    drawn = {}
    monkeypatch.setattr(snncc.api, "plot_accuracy", lambda reports, path, title="": drawn.update(
        labels=list(reports), title=title))
    model, data = tiny_model
    snn = tmp_path / "tiny.snn"
    assert main(["compile", str(model), "-o", str(snn), "--quiet"] + _calib(tiny_model)) == 0
    assert main(["eval", str(snn), "--data", str(data), "--timesteps", "4", "--plot", str(tmp_path / "p.png"),
                 "--limit", "120", "--quiet"]) == 0
    assert drawn == {"labels": ["tiny"], "title": "tiny: 120 images"}


def test_image_folder_of_mixed_sizes_needs_resize_and_then_compiles_and_evaluates(tiny_model, tmp_path, capsys):
    from PIL import Image

    model, _ = tiny_model
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        size = (4, 4) if i % 2 else (8, 6)
        Image.fromarray(rng.integers(0, 256, size).astype(np.uint8)).save(folder / f"img{i}_{i % 3}.png")
    snn = tmp_path / "m.snn"
    args = ["compile", str(model), "-o", str(snn), "--calib", str(folder), "--input-scaling", "unit", "--quiet"]
    assert main(args) == 2
    assert "images differ in size" in capsys.readouterr().err
    assert main(args + ["--resize", "4,4"]) == 0
    assert "calibration data: image folder" in capsys.readouterr().out
    assert main(["eval", str(snn), "--data", str(folder), "--resize", "8,8", "--center-crop", "4,4", "--timesteps",
                 "4", "--quiet"]) == 0
    assert "6 samples of 1x4x4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", str(snn), "--data", str(folder), "--center-crop", "4,4,4"])
    assert "expected HEIGHT,WIDTH in pixels, got '4,4,4'" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly(tiny_model):
    """`snncc inspect MODEL | head`: when the reader has gone, no BrokenPipeError traceback. The reader end is closed
    before the command writes (it is still importing), so every write meets a closed pipe."""
    import subprocess
    import sys

    model, _ = tiny_model
    child = subprocess.Popen([sys.executable, "-m", "snncc", "inspect", str(model)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.stdout.close()
    stderr = child.stderr.read()
    assert child.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_flat_data_feed_an_image_model(tiny_model, tmp_path, capsys):
    """Samples stored flat, (N, H*W), feed a (1, H, W) model in compile and eval, as the simulators always took them
    (one rule for all the shape checks: snncc.data.sample_fits)."""
    model, data = tiny_model
    with np.load(data) as archive:
        x, y = archive["x"], archive["y"]
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=x.reshape(len(x), -1), y=y)
    snn = tmp_path / "flat.snn"
    assert main(["compile", str(model), "-o", str(snn), "--calib", str(flat), "--input-scaling", "unit",
                 "--quiet"]) == 0
    report = tmp_path / "flat.json"
    assert main(["eval", str(snn), "--data", str(flat), "--timesteps", "16", "--report", str(report),
                 "--quiet"]) == 0
    assert main(["eval", str(snn), "--data", str(data), "--timesteps", "16", "--report", str(tmp_path / "img.json"),
                 "--quiet"]) == 0
    assert json.loads(report.read_text())["snn"] == json.loads((tmp_path / "img.json").read_text())["snn"]
