"""Knowledge distillation from the ANN (``--distill``): the loss against a hand computation, that it replaces the
labels at weight 1, the teacher read from the .snn's source model, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.api import ann_accuracy, ann_logits, compile_model  # noqa: E402
from snncc.cli import main  # noqa: E402
from snncc.data import load_dataset  # noqa: E402
from snncc.errors import SnnccError  # noqa: E402
from snncc.finetune import FinetuneOptions, finetune  # noqa: E402
from snncc.finetune.distill import distillation_loss, teacher_file, teacher_logits  # noqa: E402
from snncc.ir import load, ops, save  # noqa: E402
from snncc.runtime import run_analog  # noqa: E402
from tests.conftest import REPO, data_dir, small_cnn  # noqa: E402
from tests.finetune.tiny import SCALING, converted_cnn, training_set  # noqa: E402

OPTIONS = FinetuneOptions(timesteps=2, epochs=1, lr=3e-3, batch_size=8, limit=48, val_limit=16, seed=3)


def _ann_teacher(x: np.ndarray) -> np.ndarray:
    """The tiny SNN's own ANN on model inputs (already scaled)."""
    return run_analog(small_cnn(), x)[0]


def test_the_loss_is_tau_squared_times_the_kl_divergence_of_the_softened_outputs():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)) * 3
    tau = 2.5

    def softmax(z):
        e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(teacher), softmax(student)
    expected = tau ** 2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    s = torch.tensor(student, requires_grad=True)
    t = torch.tensor(teacher, requires_grad=True)
    loss = distillation_loss(s, t, tau)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    loss.backward()
    # d/ds of tau^2 KL is tau (q - p) / B; the teacher gets no gradient
    np.testing.assert_allclose(s.grad.numpy(), tau * (q - p) / len(student), rtol=1e-10)
    assert t.grad is None
    same = distillation_loss(torch.tensor(teacher), torch.tensor(teacher), tau)
    assert abs(float(same)) < 1e-12


def test_at_weight_one_the_labels_do_not_matter_and_below_one_they_do():
    graph, (x, y) = converted_cnn(), training_set()
    other = (y + 1) % 5  # every label wrong
    options = OPTIONS.replace(distill=1.0)
    first = finetune(graph, (x, y), "surrogate", options, teacher=_ann_teacher)
    relabelled = finetune(graph, (x, other), "surrogate", options, teacher=_ann_teacher)
    half = finetune(graph, (x, y), "surrogate", options.replace(distill=0.5), teacher=_ann_teacher)
    plain = finetune(graph, (x, y), "surrogate", options.replace(distill=0.0))
    for node in ("conv1", "fc2"):
        np.testing.assert_array_equal(first.op(node).weight, relabelled.op(node).weight)
        assert not np.array_equal(first.op(node).weight, graph.op(node).weight)  # it trained
        assert not np.array_equal(half.op(node).weight, plain.op(node).weight)
        assert not np.array_equal(half.op(node).weight, first.op(node).weight)
    record = first.attrs["finetune"]
    assert record["options"]["distill"] == 1.0 and record["options"]["temperature"] == 4.0
    assert record["teacher"] == {"path": None, "sha256": None}  # a function, not a file
    assert "teacher" not in plain.attrs["finetune"]


def test_the_teachers_logits_are_checked():
    x = SCALING.apply(training_set()[0])
    assert teacher_logits(_ann_teacher, x, 5).shape == (len(x), 5)
    with pytest.raises(SnnccError, match="gives 5 outputs per image and the SNN.s readout 3"):
        teacher_logits(_ann_teacher, x, 3)
    with pytest.raises(SnnccError, match="non-finite logits"):
        teacher_logits(lambda z: np.full((len(z), 5), np.nan), x, 5)


def test_the_teacher_is_the_recorded_source_model_unchanged(tmp_path):
    graph = converted_cnn()
    with pytest.raises(SnnccError, match="does not record an ONNX file it came from.*--teacher ANN.onnx"):
        teacher_file(graph)
    with pytest.raises(SnnccError, match="does not exist; give the ONNX file"):
        teacher_file(graph, tmp_path / "none.onnx")
    model = tmp_path / "ann.onnx"
    model.write_bytes((REPO / "models" / "lenet5-mnist.onnx").read_bytes())
    graph.attrs["source_model"] = {"path": str(model), "sha256": "0" * 64}
    with pytest.raises(SnnccError, match="has changed since this .snn was compiled from it"):
        teacher_file(graph)
    graph.attrs["source_model"] = {"path": str(tmp_path / "moved.onnx"), "sha256": "0" * 64}
    with pytest.raises(SnnccError, match="is not there any more"):
        teacher_file(graph)
    assert teacher_file(graph, model) == model


def test_distillation_is_refused_for_a_training_free_method_and_out_of_range():
    with pytest.raises(SnnccError, match="method 'calibrate' does not train"):
        finetune(converted_cnn(), training_set(), "calibrate", OPTIONS.replace(distill=0.5), teacher=_ann_teacher)
    with pytest.raises(SnnccError, match=r"distill \(--distill\) is the weight of the distillation loss"):
        FinetuneOptions(distill=1.5)
    with pytest.raises(SnnccError, match=r"temperature \(--temperature\) must be a positive number"):
        FinetuneOptions(temperature=0)


def test_ann_logits_give_the_ann_accuracy():
    x, y = load_dataset(data_dir("mnist"), split="test", limit=200)
    model = REPO / "models" / "lenet5-mnist.onnx"
    logits = ann_logits(model, x / 255.0)
    assert logits.shape == (200, 10) and logits.dtype == np.float32
    assert ann_accuracy(model, x / 255.0, y) == float((logits.argmax(axis=1) == y).mean()) > 0.95


def test_finetune_distils_from_the_model_the_snn_was_compiled_from(tmp_path, capsys):
    """End to end: the shipped LeNet-5 compiled from its ONNX file, fine-tuned with --distill from it (the .snn's
    recorded source model), the teacher recorded; without the file, a one-line refusal before training."""
    mnist = data_dir("mnist")
    x, _ = load_dataset(mnist, split="train", limit=100)
    model = tmp_path / "lenet5.onnx"
    model.write_bytes((REPO / "models" / "lenet5-mnist.onnx").read_bytes())
    snn = save(compile_model(model, calibration=x), tmp_path / "lenet5.snn")
    out = tmp_path / "tuned.snn"
    run = ["finetune", str(snn), "--data", str(mnist), "-o", str(out), "--timesteps", "2", "--limit", "40",
           "--val-limit", "8", "--batch-size", "16", "--distill", "0.5", "--temperature", "2", "--quiet"]
    assert main(run) == 0
    tuned = load(out)
    record = tuned.attrs["finetune"]
    assert record["teacher"]["path"] == str(model.resolve()) and len(record["teacher"]["sha256"]) == 64
    assert record["options"]["distill"] == 0.5 and record["options"]["temperature"] == 2.0
    conv = next(n for n in tuned.topological_order() if isinstance(tuned.op(n), ops.Conv2d))
    assert not np.array_equal(tuned.op(conv).weight, load(snn).op(conv).weight)
    model.unlink()
    out.unlink()
    capsys.readouterr()
    assert main(run) == 2
    err = capsys.readouterr().err.strip()
    assert "is not there any more; give its ONNX file with --teacher ANN.onnx" in err and "\n" not in err
    assert not out.exists()
