"""The fine-tuning API and loop: determinism, resume, validation split, schedule, attrs, refusals."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.errors import DataError, SnnccError  # noqa: E402
from snncc.finetune import FinetuneOptions, finetune, trainer  # noqa: E402
from snncc.finetune.methods import method_of  # noqa: E402
from snncc.ir import ops  # noqa: E402
from snncc.runtime import Simulator  # noqa: E402
from tests.conftest import small_cnn  # noqa: E402
from tests.finetune.tiny import converted_cnn, training_set  # noqa: E402

OPTIONS = FinetuneOptions(timesteps=2, epochs=2, lr=3e-3, batch_size=8, limit=48, val_limit=16, seed=3)


def _arrays(graph) -> dict[str, object]:
    """Every trained quantity of a graph: weights, biases, neuron records."""
    found = {}
    for node in graph.topological_order():
        op = graph.op(node)
        if isinstance(op, (ops.Conv2d, ops.Linear)):
            found[node + ".weight"], found[node + ".bias"] = op.weight, op.bias
        elif isinstance(op, ops.Population):
            found[node + ".neuron"] = op.neuron
    return found


def _assert_same(a, b) -> None:
    first, second = _arrays(a), _arrays(b)
    assert first.keys() == second.keys()
    for name in first:
        if isinstance(first[name], np.ndarray):
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        else:
            assert first[name] == second[name], name


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    graph, data = converted_cnn(), training_set()
    whole = finetune(graph, data, "surrogate", OPTIONS.replace(checkpoint=tmp_path / "whole"))
    # The same run, interrupted after its first epoch (Ctrl-C in the second), then resumed from the checkpoint.
    epoch = trainer._train_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(graph, data, "surrogate", OPTIONS.replace(checkpoint=tmp_path / "cut"))
    monkeypatch.setattr(trainer, "_train_epoch", epoch)
    resumed = finetune(graph, data, "surrogate", OPTIONS.replace(resume=tmp_path / "cut"))
    _assert_same(whole, resumed)
    assert whole.attrs["finetune"]["history"][1]["loss"] == resumed.attrs["finetune"]["history"][1]["loss"]
    # training changed the weights (else the equality would prove nothing)
    assert not np.array_equal(whole.op("conv1").weight, graph.op("conv1").weight)


def test_the_same_seed_gives_the_same_weights_and_another_seed_others():
    graph, data = converted_cnn(), training_set()
    options = OPTIONS.replace(epochs=1)
    first, again = (finetune(graph, data, "surrogate", options) for _ in range(2))
    _assert_same(first, again)
    other = finetune(graph, data, "surrogate", options.replace(seed=4))
    assert not np.array_equal(first.op("conv1").weight, other.op("conv1").weight)


def test_the_validation_accuracy_is_the_runtimes_on_the_held_back_images():
    """The last val_limit training images are held back; the recorded validation accuracy is what the reference
    simulator measures on them with the written-back graph (the scaling recorded in the .snn applied)."""
    graph, (x, y) = converted_cnn(), training_set()
    tuned = finetune(graph, (x, y), "surrogate", OPTIONS.replace(epochs=1))
    held_x, held_y = x[48 - 16:48], y[48 - 16:48]
    runtime = Simulator(tuned, timesteps=2, backend="reference").run(held_x).accuracy(held_y, 2)
    assert tuned.attrs["finetune"]["val_accuracy"] == [runtime]


def test_the_record_in_the_attrs():
    graph, data = converted_cnn(), training_set()
    tuned = finetune(graph, data, "surrogate", OPTIONS.replace(epochs=1))
    record = tuned.attrs["finetune"]
    assert record["method"] == "surrogate" and record["epochs"] == 1
    assert record["options"]["lr"] == 3e-3 and record["options"]["timesteps"] == 2
    assert record["data"]["images"] == 48 and record["data"]["val_limit"] == 16 and len(record["data"]["sha256"]) == 64
    assert set(record["history"][0]) >= {"loss", "train_accuracy", "val_accuracy", "images_per_second"}
    again = finetune(tuned, data, "surrogate", OPTIONS.replace(epochs=1))
    assert again.attrs["finetune"]["previous"] == record
    assert "finetune" not in graph.attrs  # the input graph is left as it was


def test_the_split_holds_back_the_last_images():
    x, y = np.arange(10.0), np.arange(10)
    x_train, y_train, x_val, y_val = trainer.split_training_data(x, y, 3)
    np.testing.assert_array_equal(x_val, [7, 8, 9])
    np.testing.assert_array_equal(y_train, np.arange(7))
    with pytest.raises(DataError, match="holds back every one of the 10 training images"):
        trainer.split_training_data(x, y, 10)


def test_learning_rate_schedules():
    options = FinetuneOptions(lr=1.0, epochs=4)
    assert trainer.learning_rate(options, 0, 10) == 1.0
    assert trainer.learning_rate(options, 20, 10) == pytest.approx(0.5)
    assert trainer.learning_rate(options, 39, 10) == pytest.approx(0.5 * (1 + np.cos(np.pi * 39 / 40)))
    step = options.replace(schedule="step")
    assert [trainer.learning_rate(step, e * 10, 10) for e in range(4)] == pytest.approx([1, 1, 0.1, 0.01])
    assert trainer.learning_rate(options.replace(schedule="none"), 39, 10) == 1.0


def test_unknown_methods_and_ann_graphs_are_refused():
    with pytest.raises(SnnccError, match=r"unknown fine-tuning method 'bptt'; available: calibrate, proxy, surrogate"):
        method_of("bptt")
    with pytest.raises(SnnccError, match="at the ann level; fine-tuning takes a converted SNN"):
        finetune(small_cnn(), training_set(), "surrogate", OPTIONS)


@pytest.mark.parametrize("change, message", [
    ({"timesteps": 0}, r"timesteps \(--timesteps\) must be a positive integer"),
    ({"batch_size": 0}, r"batch_size \(--batch-size\) must be a positive integer"),
    ({"lr": -1.0}, "lr"), ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"schedule": "linear"}, "unknown learning-rate schedule"), ({"val_limit": -1}, "val_limit")])
def test_bad_options_are_refused(change, message):
    with pytest.raises(SnnccError, match=message):
        FinetuneOptions(**change)


def test_sgd_trains_and_resumes_too(tmp_path, monkeypatch):
    graph, data = converted_cnn(), training_set()
    options = OPTIONS.replace(optimizer="sgd", schedule="step")
    whole = finetune(graph, data, "surrogate", options)
    epoch, calls = trainer._train_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(graph, data, "surrogate", options.replace(checkpoint=tmp_path / "cut"))
    monkeypatch.setattr(trainer, "_train_epoch", epoch)
    _assert_same(whole, finetune(graph, data, "surrogate", options.replace(resume=tmp_path / "cut")))
