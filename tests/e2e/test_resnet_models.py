"""The shipped ResNets: both exports import and canonicalize exactly (against onnxruntime) and compile to rate SNNs.

``resnet20-cifar10`` (random-but-fixed weights, option-A shortcuts, ``models/make_resnet_cifar.py``) runs on the 20
real CIFAR-10 test images in ``../shared/data/cifar10-first20-test-foolbox``; ``resnet-fmnist`` on Fashion-MNIST.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from snncc.api import compile_model
from snncc.data import InputScaling, load_dataset
from snncc.frontend.onnx import import_onnx
from snncc.ir import LIF, ops
from snncc.passes import run_pipeline
from snncc.runtime import Simulator, run_analog
from tests.conftest import MODELS, data_dir
from tests.passes.test_sew import record

UNIT = InputScaling(scale=1 / 255)
NONE = InputScaling()  # for images already scaled (the models declare pixels / 255 in their metadata)
EXPORTERS = ["", ".dynamo"]


def _model(name: str, exporter: str = ""):
    path = MODELS / f"{name}{exporter}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not built yet")
    return path


def cifar20() -> tuple[np.ndarray, np.ndarray]:
    """The 20 CIFAR-10 test images as ``(pixels / 255 of shape (20, 3, 32, 32), labels)``."""
    raw = np.fromfile(data_dir("cifar10-first20-test-foolbox") / "test_first20.bin", dtype=np.uint8)
    records = raw.reshape(20, 1 + 3 * 32 * 32)
    return UNIT.apply(records[:, 1:].reshape(20, 3, 32, 32).astype(np.float32)), records[:, 0].astype(np.int64)


def _onnxruntime(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _assert_canonical_matches(model, x: np.ndarray) -> ops.Op:
    canonical = run_pipeline(import_onnx(model), "canonicalize")
    assert not canonical.find((ops.Affine, ops.Identity)), "normalization and BatchNorm must fold into layers"
    reference = _onnxruntime(model, x)
    assert np.abs(run_analog(canonical, x)[0] - reference).max() <= 1e-4 * np.abs(reference).max()
    return canonical


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cifar_resnet_canonical_graph_agrees_with_onnxruntime(exporter):
    x, _ = cifar20()
    canonical = _assert_canonical_matches(_model("resnet20-cifar10", exporter), x)
    slices = [canonical.op(n) for n in canonical.find(ops.Slice)]
    pads = [canonical.op(n) for n in canonical.find(ops.ChannelPad)]
    assert [s.steps for s in slices] == [(1, 2, 2)] * 2, "one merged x[:, :, ::2, ::2] per downsampling block"
    assert [(p.before, p.after, p.value) for p in pads] == [(8, 8, 0.0), (16, 16, 0.0)]
    assert len(canonical.find(ops.Add)) == 9


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fmnist_resnet_canonical_graph_agrees_with_onnxruntime(exporter):
    x, _ = load_dataset(data_dir("fashion-mnist"), split="test", limit=64)
    canonical = _assert_canonical_matches(_model("resnet-fmnist", exporter), UNIT.apply(x))
    # ResNet-14 layout: stem, 2 blocks of 2 convolutions per stage, 2 projection shortcuts.
    assert len(canonical.find(ops.Add)) == 6 and len(canonical.find(ops.Conv2d)) == 15


def test_both_cifar_exports_compile_to_the_same_rate_snn():
    x, _ = cifar20()
    graphs = [compile_model(_model("resnet20-cifar10", e), calibration=x, input_scaling=NONE) for e in EXPORTERS]
    kinds = [[g.op(n).kind for n in g.topological_order()] for g in graphs]
    assert kinds[0] == kinds[1]
    assert kinds[0].count("Population") == 19 and kinds[0].count("Slice") == 2
    for a, b in zip(*(g.topological_order() for g in graphs)):
        for field, value in graphs[0].op(a).params().items():
            if isinstance(value, np.ndarray):
                np.testing.assert_allclose(value, getattr(graphs[1].op(b), field), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cifar_resnet_rate_snn_predicts_like_onnxruntime_at_t256():
    """Issue 5 acceptance: at least 95 % agreement with onnxruntime at T=256 (here calibrated on the same images)."""
    x, _ = cifar20()
    model = _model("resnet20-cifar10")
    snn = compile_model(model, calibration=x, input_scaling=NONE)
    result = Simulator(snn, timesteps=256, batch_size=20).run(x)
    agreement = (result.outputs[-1].argmax(1) == _onnxruntime(model, x).argmax(1)).mean()
    assert agreement >= 0.95


def _gate_operands(graph, gate: str) -> tuple[str, str]:
    """(branch spikes A, shortcut train S) of a SEW gate population ``Population(Add(S, a))`` with ``a = A`` (AND)
    or ``a = Affine(-1)(A)`` (IAND)."""
    (total,) = graph.inputs(gate)
    shortcut, a = graph.inputs(total)
    if isinstance(graph.op(a), ops.Affine):
        assert graph.op(a).scale == -1
        (a,) = graph.inputs(a)
    return a, shortcut


@pytest.mark.parametrize("name", ["resnet-fmnist", "resnet20-cifar10"])
def test_sew_gates_of_both_shipped_resnets_compute_their_truth_table_at_every_step(name):
    """Every AND gate fires exactly when its branch neuron and its shortcut train both spike at that step, every
    IAND gate when the shortcut spikes and the branch does not (Fang et al. 2021), neuron by neuron."""
    x, blocks = _resnet_inputs(name)
    rate = _rate_snn(name)
    for connect, truth in (("and", lambda a, s: a * s), ("iand", lambda a, s: (1 - a) * s)):
        sew = run_pipeline(rate, f"sew{{connect={connect}}}")
        gates = [n for n in sew.find(ops.Population) if isinstance(sew.op(n).neuron, LIF)]
        assert len(gates) == blocks, "one gate per block (each identity shortcut carries one train)"
        operands = {gate: _gate_operands(sew, gate) for gate in gates}
        values = record(sew, sorted({n for pair in operands.values() for n in pair} | set(gates)), x[:3], 6)
        fired = 0
        for gate, (a, shortcut) in operands.items():
            spikes = {n: np.rint(values[n]) for n in (gate, a, shortcut)}
            assert set(np.unique(spikes[a])) <= {0, 1} and set(np.unique(spikes[shortcut])) <= {0, 1}
            np.testing.assert_array_equal(spikes[gate], truth(spikes[a], spikes[shortcut]), err_msg=gate)
            fired += int(spikes[gate].sum())
        assert fired > 0, "the gates must fire somewhere, or the truth table is not tested"


def _resnet_inputs(name: str) -> tuple[np.ndarray, int]:
    """A few images for ``name`` and its number of residual blocks."""
    if name == "resnet20-cifar10":
        return cifar20()[0], 9
    fmnist, _ = load_dataset(data_dir("fashion-mnist"), split="test", limit=20)
    return UNIT.apply(fmnist), 6


@functools.cache
def _rate_snn(name: str):
    """The rate SNN of a shipped ResNet calibrated on :func:`_resnet_inputs` (compiled once; passes clone it)."""
    return compile_model(_model(name), calibration=_resnet_inputs(name)[0], input_scaling=NONE)


def test_sew_add_of_the_fmnist_resnet_stores_each_weight_once_and_reads_every_train(tmp_path):
    """The saved SEW ADD graph holds exactly the rate SNN's weight arrays (one per Conv2d/Linear, the same bytes
    up to the branch rescalings folded in by the pass), and its classifier computes ``W (sum_i g_i x_i) + b`` over
    the trains it reads, against numpy."""
    import io
    import zipfile

    import snncc

    x, _ = _resnet_inputs("resnet-fmnist")
    rate = _rate_snn("resnet-fmnist")
    sew = run_pipeline(rate, "sew{connect=add}")

    def weight_arrays(graph) -> list[tuple[int, ...]]:
        """The shapes of the 2-D and 4-D arrays (Linear and Conv2d weights) in the saved file."""
        with zipfile.ZipFile(snncc.save(graph, tmp_path / "g.snn")) as archive:
            arrays = [np.load(io.BytesIO(archive.read(n)), allow_pickle=False) for n in archive.namelist()
                      if n.endswith(".npy")]
        return sorted(a.shape for a in arrays if a.ndim in (2, 4))

    layers = [n for n in sew.find((ops.Conv2d, ops.Linear))]
    assert len(layers) == len(rate.find((ops.Conv2d, ops.Linear))) == 16
    assert weight_arrays(sew) == weight_arrays(rate), "the same weight arrays, none copied"
    shared = [n for n in layers if sew.op(n).input_gains is not None]
    assert len(shared) == 8 and max(len(sew.inputs(n)) for n in shared) == 3
    for n in layers:  # every weight array is the rate SNN's, or its rescaling by the pass (A's scale)
        w, w_rate = sew.op(n).weight, rate.op(n).weight
        ratio = (w.astype(np.float64) / np.where(w_rate == 0, 1, w_rate)).reshape(w.shape[0], -1)
        np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-5, err_msg=n)
    fc = sew.op("fc_Gemm")
    trains = sew.inputs("fc_Gemm")
    values = record(sew, trains, x[:4], 5)
    current = sum(values[t] @ (fc.weight.astype(np.float64) * np.asarray(g, np.float64).reshape(1, -1)).T
                  for t, g in zip(trains, fc.input_gains)) + fc.bias
    expected = np.cumsum(current, axis=0) / np.arange(1, 6).reshape(-1, 1, 1)
    np.testing.assert_allclose(values["output"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("connect", ["add", "and", "iand"])
def test_sew_pass_rewrites_every_block_of_both_shipped_resnets_into_spikes(connect, tmp_path):
    """Every residual block of both ResNets is rewritten (no residual Add and no block output population is
    left), every inter-layer signal is spikes, and the graph survives a file round trip with the same outputs."""
    import snncc
    from snncc.ir.verify import spikes_only_problems

    for name in ("resnet-fmnist", "resnet20-cifar10"):
        x, blocks = _resnet_inputs(name)
        rate = _rate_snn(name)
        sew = run_pipeline(rate, f"sew{{connect={connect}}}")
        info = sew.attrs["sew"]
        assert info["residual_blocks"] == blocks
        assert [b["index"] for b in info["blocks"]] == list(range(blocks))
        assert {b["connect"] for b in info["blocks"]} == {connect}
        removed = {b["add"] for b in info["blocks"]}
        assert len(removed) == blocks and not removed & set(sew.nodes())
        assert not sew.find(ops.Add) if connect == "add" else len(sew.find(ops.Add)) == blocks
        assert spikes_only_problems(sew) == []
        # per block: + the branch neuron A (+ a neuron on a projection shortcut), - the block's output population,
        # + a gate (AND, IAND; each identity shortcut carries one train)
        projections = {"resnet-fmnist": 2, "resnet20-cifar10": 0}[name]
        added = len(sew.find(ops.Population)) - len(rate.find(ops.Population))
        assert added == projections + (0 if connect == "add" else blocks)
        path = snncc.save(sew, tmp_path / f"{name}.snn")
        np.testing.assert_array_equal(Simulator(snncc.load(path), timesteps=2).run(x[:2]).outputs,
                                      Simulator(sew, timesteps=2).run(x[:2]).outputs)
