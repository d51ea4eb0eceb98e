"""``snncc finetune --target``: fine-tuning a chip's float form (Loihi: OR gates for max pooling, Loihi 1's reset to
zero), the gates kept fixed, the result accepted by ``emit``/``verify`` of the same target and refused by another;
the refusals (a coding the target refuses, a target without a float form, an unknown one) with nothing written; and
the torch lowering of the float form against the reference simulator on the shipped LeNet-5."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.cli import main  # noqa: E402
from snncc.finetune import FinetuneOptions, finetune, for_target  # noqa: E402
from snncc.finetune.trainer import freeze_logic_gates  # noqa: E402
from snncc.ir import IF, LIF, load, ops, save  # noqa: E402
from snncc.runtime import reference  # noqa: E402
from snncc.runtime.torch_lowering import TorchSimulator, lower  # noqa: E402
from snncc.targets.base import TargetError  # noqa: E402
from snncc.targets.loihi.legalize import LoihiFold  # noqa: E402
from tests.conftest import MODELS, data_dir  # noqa: E402
from tests.finetune.tiny import converted_cnn, training_set  # noqa: E402
from tests.runtime.test_torch_lowering import MAX_FLIP_RATE  # noqa: E402

RUN = ["--timesteps", "4", "--epochs", "1", "--limit", "48", "--val-limit", "16", "--batch-size", "16", "--quiet"]


def _gates(graph):
    """The OR gates of a float form: (gather, gate) pairs."""
    return [(graph.inputs(n)[0], n) for n in graph.find(ops.Population) if graph.meta[n].get("or_gate")]


@pytest.mark.parametrize("method", ["surrogate", "calibrate"])
@pytest.mark.parametrize("variant", ["loihi1", "loihi2"])
def test_finetune_for_a_target_then_emit_and_verify_it(files, tmp_path, capsys, variant, method):
    snn, data = files
    out = tmp_path / "tuned.snn"
    assert main(["finetune", str(snn), "--data", str(data), "-o", str(out), "--target", variant,
                 "--method", method, *RUN]) == 0
    assert f"--target {variant} -o DIR" in capsys.readouterr().out
    before, tuned = load(snn), load(out)
    assert tuned.attrs["finetune"]["target"] == variant and tuned.attrs["target_form"] == variant
    assert tuned.attrs["pipeline"].startswith(before.attrs["pipeline"] + ",loihi-gates")
    assert not tuned.find(ops.SpikingMaxPool2d) and len(_gates(tuned)) == len(before.find(ops.SpikingMaxPool2d)) == 1
    for gather, gate in _gates(tuned):  # logic, not parameters: the trainer and the calibration leave them
        np.testing.assert_array_equal(tuned.op(gather).weight, 1.0)
        assert tuned.op(gather).bias is None
        assert tuned.op(gate).neuron == LIF(threshold=0.5, tau_mem=0.0, reset="zero")
    resets = {tuned.op(n).neuron.reset for n in tuned.find(ops.Population) if isinstance(tuned.op(n).neuron, IF)}
    assert resets == ({"zero"} if variant == "loihi1" else {"subtract"})
    # The input scaling and the thresholds stay unfolded (exact folds, left to emit), and training changed weights.
    assert tuned.attrs["input_scaling"] == before.attrs["input_scaling"]
    assert any(not np.array_equal(tuned.op(n).bias, before.op(n).bias) for n in before.find(ops.Conv2d))

    bundle, report = tmp_path / "bundle", tmp_path / "report.json"
    assert main(["emit", str(out), "--target", variant, "-o", str(bundle), "--timesteps", "4"]) == 0
    assert main(["verify", str(bundle), "--data", str(data), "--split", "train", "--limit", "16",
                 "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["images"] == 16 and 0 <= result["target_accuracy"] <= 1
    other = "loihi2" if variant == "loihi1" else "loihi1"
    capsys.readouterr()
    assert main(["emit", str(out), "--target", other, "-o", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert f"{variant}'s float form" in err and f"--target {variant}" in err
    assert not (tmp_path / "other").exists()


def test_fold_of_the_float_form_recognises_the_gates_and_equals_the_fold_of_the_converted_graph():
    graph = converted_cnn()
    form = for_target(graph, "loihi2")
    assert for_target(form, "loihi2") is form  # already in the form: returned as it is
    folded, changed = LoihiFold().apply(form)
    assert changed  # the exact folds (input scaling, thresholds) happen now
    direct, _ = LoihiFold().apply(graph)
    assert folded.topological_order() == direct.topological_order()
    for node in direct.topological_order():
        assert type(folded.op(node)) is type(direct.op(node)), node
        for field in ("weight", "bias", "pad_value"):
            a, b = getattr(folded.op(node), field, None), getattr(direct.op(node), field, None)
            assert (a is None) == (b is None), (node, field)
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=f"{node}.{field}")
        if isinstance(direct.op(node), ops.Population):
            assert folded.op(node).neuron == direct.op(node).neuron, node
    again, changed = LoihiFold().apply(folded)
    assert not changed and len(_gates(again)) == 1


def test_the_gates_and_their_gathers_are_frozen_and_everything_else_trains():
    form = for_target(converted_cnn(), "loihi1")
    module = lower(form)
    frozen = freeze_logic_gates(form, module)
    ((gather, gate),) = _gates(form)
    assert sorted(frozen) == sorted([gather, gate])
    for node in module.index:
        for parameter in module.parameters_of(node).values():
            assert parameter.requires_grad == (node not in frozen), node


def test_refusals_name_the_remedy_and_write_nothing(files, tmp_path, capsys):
    snn, data = files
    out = tmp_path / "out.snn"
    for target, message in [("loihi3", "unknown target 'loihi3'; known targets: "),
                            ("nir", "has no float form to fine-tune for; fine-tune without --target")]:
        assert main(["finetune", str(snn), "--data", str(data), "-o", str(out), "--target", target, *RUN]) == 2
        assert message in capsys.readouterr().err
    signed = converted_cnn()
    for node in signed.find(ops.Population):
        neuron = signed.op(node).neuron
        signed.replace(node, ops.Population(neuron=IF(threshold=neuron.threshold, v_init=neuron.v_init,
                                                      signed=True)))
    path = save(signed, tmp_path / "signed.snn")
    assert main(["finetune", str(path), "--data", str(data), "-o", str(out), "--target", "loihi1", *RUN]) == 2
    err = capsys.readouterr().err
    assert "does not fit loihi1" in err and "unsigned spikes" in err and "compile without" in err
    assert not out.exists()
    with pytest.raises(TargetError, match="does not fit loihi1"):
        finetune(signed, training_set(), "surrogate", FinetuneOptions(timesteps=2), target="loihi1")


@pytest.mark.parametrize("variant", ["loihi1", "loihi2"])
def test_the_lowering_of_lenet5s_float_forms_agrees_with_the_reference(variant):
    """The torch lowering computes the chip's float form (OR gates, Loihi 1's reset to zero) as the reference
    simulator does, before it and after the exact folds of emit, on real images of the shipped LeNet-5."""
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset

    model = MODELS / "lenet5-mnist.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is not built yet (python models/train.py lenet5-mnist)")
    calibration, _ = load_dataset(data_dir("mnist"), split="train", limit=200)
    x, _ = load_dataset(data_dir("mnist"), split="test", limit=16)
    scaling = InputScaling.from_json(json.loads((MODELS / "lenet5-mnist.json").read_text())["input_scaling"])
    form = for_target(compile_model(model, calibration=calibration, input_scaling=scaling), variant)
    folded, _ = LoihiFold().apply(form)  # pixels in: the input scaling is part of the first layer
    assert len(_gates(folded)) == 2
    for graph, inputs in [(form, scaling.apply(x)), (folded, x.astype(np.float32))]:
        ref = reference.ReferenceSimulator(graph, 32).run_batch(inputs)
        low = TorchSimulator(graph, 32).run_batch(inputs)
        spikes = sum(float(s.sum()) for s in ref.spikes.values())
        flips = sum(float(np.abs(ref.spikes[n] - low.spikes[n]).sum()) for n in ref.spikes)
        gate_spikes = sum(float(ref.spikes[g].sum()) for _, g in _gates(folded))
        assert spikes > 50_000 and gate_spikes > 10_000 and flips <= MAX_FLIP_RATE * spikes, (flips, spikes)
        predictions = [o[-1].reshape(len(x), -1).argmax(1) for o in (ref.outputs[0], low.outputs[0])]
        np.testing.assert_array_equal(predictions[0], predictions[1])
