"""The shipped ResNets: both exports import and canonicalize exactly (against onnxruntime) and compile to rate SNNs.

``resnet20-cifar10`` (random-but-fixed weights, option-A shortcuts, ``models/make_resnet_cifar.py``) runs on the 20
real CIFAR-10 test images in ``../shared/data/cifar10-first20-test-foolbox``; ``resnet-fmnist`` on Fashion-MNIST.
"""

from __future__ import annotations

import numpy as np
import pytest

from snncc.api import compile_model
from snncc.data import InputScaling, load_dataset
from snncc.frontend.onnx import import_onnx
from snncc.ir import ops
from snncc.passes import run_pipeline
from snncc.runtime import Simulator, run_analog
from tests.conftest import MODELS, data_dir

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


@pytest.mark.parametrize("connect", ["add", "and", "iand"])
def test_sew_pass_runs_on_both_shipped_resnets(connect):
    """The sew pass rewrites every residual block of both ResNets into a graph whose every inter-layer signal is
    spikes, and the result simulates (a few images, a few steps)."""
    from snncc.ir.verify import spikes_only_problems

    cifar, _ = cifar20()
    fmnist, _ = load_dataset(data_dir("fashion-mnist"), split="test", limit=8)
    for name, x, blocks in (("resnet-fmnist", UNIT.apply(fmnist), 6), ("resnet20-cifar10", cifar, 9)):
        rate = compile_model(_model(name), calibration=x, input_scaling=NONE)
        sew = run_pipeline(rate, f"sew{{connect={connect}}}")
        assert sew.attrs["sew"]["residual_blocks"] == blocks and len(sew.attrs["sew"]["blocks"]) == blocks
        assert not spikes_only_problems(sew)
        result = Simulator(sew, timesteps=4, batch_size=4).run(x[:4])
        assert result.outputs.shape == (4, 4, 10) and np.isfinite(result.outputs).all()
