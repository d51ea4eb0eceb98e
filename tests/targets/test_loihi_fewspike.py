"""FS populations on Loihi 2 (graded spikes, the microcode FS neuron) and the exact average-pooling fold."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.errors import PassError
from snncc.ir import SNN, Graph, ops, verify
from snncc.ir.neurons import FewSpike
from snncc.runtime import Simulator
from snncc.runtime.kernels import apply
from snncc.targets.base import get_target
from snncc.targets.bundle import read_bundle
from snncc.targets.emit import emit
from snncc.targets.emit import verify as verify_bundle
from snncc.targets.loihi.avgpool import fold_average_pools
from snncc.targets.loihi.fewspike import STATE_MAX, LoihiFewSpike
from snncc.targets.loihi.netx import read_netx

# The rounding binary code of ReLU on [0, 1) with K = 3: h = d = 2^-t, T = 2^-t - 2^-4.
CODE3 = FewSpike(threshold=(0.4375, 0.1875, 0.0625), height=(0.5, 0.25, 0.125), weight=(0.5, 0.25, 0.125))


def tiny_fs(w1=((2 ** -8, -(2 ** -9)),), b1=(0.01,), w2=((1.5,),)) -> Graph:
    """pixels (2,) -> Linear -> FS K=3 -> Linear -> readout: small enough to compute by hand."""
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2,), name="x"), name="x")
    fc1 = g.add(ops.Linear(weight=np.array(w1, np.float32), bias=np.array(b1, np.float32)), [x], name="fc1")
    fs = g.add(ops.Population(neuron=CODE3), [fc1], name="fs")
    fc2 = g.add(ops.Linear(weight=np.array(w2, np.float32), bias=np.zeros(len(w2), np.float32)), [fs], name="fc2")
    g.outputs = [g.add(ops.Readout(), [fc2], name="readout")]
    return g


def test_fs_integers_by_hand():
    hw = get_target("loihi2").legalize(tiny_fs())
    verify(hw)
    neuron = hw.op("fs").neuron
    assert isinstance(neuron, LoihiFewSpike)
    # S = 2^16 membrane units per float unit; payload scale R = 256 (8-bit payloads of the binary code)
    assert neuron.threshold == (28672, 12288, 4096) and neuron.height == (32768, 16384, 8192)
    assert neuron.weight == (128, 64, 32)
    # fc1: W S = [256, -128] membrane units per pixel -> exponent -5, q = W S / 2^(6-5) = [128, -64]
    assert hw.meta["fc1"]["weight_exp"] == -5 and hw.op("fc1").weight.tolist() == [[128, -64]]
    assert hw.op("fc1").bias.tolist() == [655]  # round(0.01 * 2^16)
    # fc2: 1.5 S / R = 384 per payload unit -> exponent -5, q = 192
    assert hw.meta["fc2"]["weight_exp"] == -5 and hw.op("fc2").weight.tolist() == [[192]]


def test_fs_emulator_by_hand():
    """pixels (200, 100): (128*200 - 64*100) >> 5 << 6 = 38400, + bias 655 = 39055; spikes at t = 1 (v -> 6287)
    and t = 3 (6287 >= 4096), not t = 2; the readout integrates (128*192 >> 5 << 6) + (32*192 >> 5 << 6) = 61440,
    i.e. 61440 / 2^16 = 0.9375 = 1.5 * (0.5 + 0.125)."""
    g = tiny_fs()
    hw = get_target("loihi2").legalize(g)
    x = np.array([[200, 100]], np.float32)
    result = Simulator(hw, None, backend="loihi2").run(x)
    assert result.latency == 3
    assert result.outputs[2].ravel().tolist() == [0.9375]
    assert np.all(result.outputs[:2] == 0)
    assert result.spikes_per_image(3) == 2
    # the float SNN computes the same value for this input (0.5959 -> code 101)
    assert Simulator(g, None).run(x).outputs[2].ravel() == pytest.approx([1.5 * 0.625])


def test_fs_state_saturates_and_every_bit_fires():
    """A gate input far above the 24-bit range (|x| < 128 at the scale 2^16) saturates v at 2^23 - 1; every step
    still fires, as in the float neuron."""
    g = tiny_fs(w1=((0.9, 0.0),), b1=(0.0,))
    hw = get_target("loihi2").legalize(g)
    result = Simulator(hw, None, backend="loihi2").run(np.array([[255, 0]], np.float32))
    assert result.spikes_per_image(3) == 3
    assert result.outputs[2].ravel()[0] == pytest.approx(1.5 * 0.875, abs=1e-3)
    assert STATE_MAX == 2 ** 23 - 1


def small_fs_cnn(seed: int = 0, pool: type = ops.AvgPool2d) -> Graph:
    """pixels 1x8x8 -> conv 3x3 pad 1 -> FS -> pool 2x2 -> conv 3x3 pad 1 -> FS -> flatten -> linear -> readout."""
    rng = np.random.default_rng(seed)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 8, 8), name="x"), name="x")
    c1 = g.add(ops.Conv2d(weight=rng.normal(0, 1 / 255, (4, 1, 3, 3)).astype(np.float32),
                          bias=rng.normal(0, 0.1, 4).astype(np.float32), padding=(1, 1, 1, 1)), [x], name="c1")
    if pool is ops.MaxPool2d:  # the FS conversion's form: the max of the currents, before the neurons
        c1 = g.add(ops.MaxPool2d(kernel=(2, 2), stride=(2, 2)), [c1], name="pool")
    s1 = g.add(ops.Population(neuron=CODE3), [c1], name="s1")
    if pool is ops.AvgPool2d:
        s1 = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [s1], name="pool")
    c2 = g.add(ops.Conv2d(weight=rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
                          bias=rng.normal(0, 0.1, 4).astype(np.float32), padding=(1, 1, 1, 1)), [s1], name="c2")
    s2 = g.add(ops.Population(neuron=CODE3), [c2], name="s2")
    flat = g.add(ops.Flatten(), [s2], name="flat")
    out = g.add(ops.Linear(weight=rng.normal(0, 0.3, (3, 64)).astype(np.float32),
                           bias=np.zeros(3, np.float32)), [flat], name="out")
    g.outputs = [g.add(ops.Readout(), [out], name="readout")]
    return g


def test_fs_emulator_agrees_with_the_float_snn(tmp_path):
    g = small_fs_cnn()
    x = np.random.default_rng(1).integers(0, 256, size=(32, 1, 8, 8)).astype(np.float32)
    emit(g, "loihi2", tmp_path / "b", timesteps=6, activity_data=x[:4])
    report = verify_bundle(tmp_path / "b", x, np.zeros(32, np.int64))
    assert report["prediction_agreement"] >= 0.9
    hw = read_bundle(tmp_path / "b").hw_graph()  # the LoihiFS records load from hw.snn
    assert isinstance(hw.op("s2").neuron, LoihiFewSpike)
    emulated = Simulator(hw, 6, backend="loihi2").run(x).outputs[5]
    reference = Simulator(g, 6).run(x).outputs[5]
    # 8-bit weights: a few FS bits flip near their thresholds (one bit of the last layer is 0.125 x a weight)
    assert np.abs(emulated - reference).max() < 0.3
    assert np.abs(emulated - reference).mean() < 0.1


def test_fs_emulator_is_exact_where_the_weights_are_on_the_chip_grid():
    """Weights n / 2^12 on the pixels and n / 64 on the spikes (|n| <= 64), biases multiples of 2^-16 and pixels
    multiples of 4: every quantization and every shift is exact, so the emulator gives the float SNN's readout
    bit for bit."""
    g = small_fs_cnn()
    rng = np.random.default_rng(5)
    for node, unit in (("c1", 2.0 ** -12), ("c2", 1 / 64), ("out", 1 / 64)):
        op = g.op(node)
        n = rng.integers(-64, 65, op.weight.shape)
        n.flat[0] = 64  # the largest weight sets the exponent
        bias = None if op.bias is None else rng.integers(-2000, 2000, op.bias.shape) * 2.0 ** -16
        g.replace(node, op.replace(weight=(n * unit).astype(np.float32),
                                   bias=None if bias is None else bias.astype(np.float32)))
    x = (4 * rng.integers(0, 64, size=(16, 1, 8, 8))).astype(np.float32)
    hw = get_target("loihi2").legalize(g)
    emulated = Simulator(hw, 6, backend="loihi2").run(x)
    reference = Simulator(g, 6).run(x)
    np.testing.assert_array_equal(emulated.outputs[5], reference.outputs[5])
    assert emulated.spikes_per_image(6) == reference.spikes_per_image(6) > 0


def test_fs_netx_layers(tmp_path):
    emit(small_fs_cnn(), "loihi2", tmp_path / "b", timesteps=6)
    layers = read_netx(tmp_path / "b" / "network.net")
    kinds = [layer["type"] for layer in layers]
    assert kinds == ["input", "conv", "conv", "flatten", "dense"]  # the pooling is folded into the second conv
    fs = layers[1]["neuron"]
    assert fs["type"] == "snnccFewSpike" and fs["gradedSpike"] and fs["snnccSteps"] == 3
    assert fs["snnccThreshold"].tolist() == [28672, 12288, 4096] and fs["snnccPayload"].tolist() == [128, 64, 32]
    assert "snnccBias" in layers[1] and "bias" not in layers[1] and "snnccBiasStartStep" not in layers[1]
    assert all(layer["snnccGradedInput"] for layer in layers if "weight" in layer)
    assert layers[2]["weight"].shape == (4, 4, 6, 6) and layers[2]["stride"].tolist() == [2, 2]


def test_fs_bundle_readme_states_the_fs_timing(tmp_path):
    """An FS bundle's README gives the answer's latency in FS terms (K steps per layer), not as rate answer steps."""
    manifest = emit(small_fs_cnn(), "loihi2", tmp_path / "b", timesteps=6)
    readme = (tmp_path / "b" / "README.md").read_text()
    assert manifest["latency_steps"] == 2 * 3 + 1  # two FS layers of K = 3 steps, plus one
    assert "K = 3 steps per layer" in readme and "read 7 chip steps later" in readme
    assert "answer steps; the answer of step t" not in readme


def test_check_refuses_fs_on_loihi1():
    violations = get_target("loihi1").check(small_fs_cnn())
    assert {v.node for v in violations} == {"s1", "s2"}
    assert all("--target loihi2" in v.remedy and "binary spikes" in v.limit for v in violations)
    # FS max pooling needs graded spikes too (test_loihi_fs_maxpool.py: on Loihi 2 it is lowered)
    pool = [v for v in get_target("loihi1").check(small_fs_cnn(pool=ops.MaxPool2d)) if v.node == "pool"]
    assert len(pool) == 1 and "--target loihi2" in pool[0].remedy


def test_check_refuses_fs_windows_of_different_lengths():
    g = small_fs_cnn()
    g.replace("s2", ops.Population(neuron=FewSpike(threshold=(0.5, 0.25), height=(0.5, 0.25),
                                                   weight=(0.5, 0.25))))
    (violation,) = get_target("loihi2").check(g)
    assert "[2, 3] steps" in violation.remedy and "same K" in violation.remedy


# ----------------------------------------------------------------------------------------------------------------
# average pooling folded into the next layer
# ----------------------------------------------------------------------------------------------------------------

def _pool_then(layer: ops.Op, shape=(3, 8, 8), pool=(2, 2), flatten=False) -> Graph:
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=shape, name="x"), name="x")
    p = g.add(ops.AvgPool2d(kernel=pool, stride=pool), [x], name="pool")
    if flatten:
        p = g.add(ops.Flatten(), [p], name="flat")
    g.outputs = [g.add(layer, [p], name="layer")]
    return g


def _run(g: Graph, x: np.ndarray) -> np.ndarray:
    values = {}
    for node in g.topological_order():
        op = g.op(node)
        values[node] = x if isinstance(op, ops.Input) else apply(op, *[values[u] for u in g.inputs(node)])
    return values[g.outputs[0]]


@pytest.mark.parametrize("layer, flatten", [
    (ops.Conv2d(weight=np.random.default_rng(0).normal(size=(5, 3, 3, 3)).astype(np.float32),
                bias=np.ones(5, np.float32), padding=(1, 1, 1, 1)), False),
    (ops.Conv2d(weight=np.random.default_rng(1).normal(size=(5, 3, 2, 2)).astype(np.float32), stride=(2, 2)), False),
    (ops.Conv2d(weight=np.random.default_rng(2).normal(size=(3, 1, 3, 3)).astype(np.float32), groups=3,
                padding=(1, 1, 1, 1)), False),
    (ops.Linear(weight=np.random.default_rng(3).normal(size=(7, 48)).astype(np.float32)), True),
])
def test_average_pool_folds_exactly(layer, flatten):
    g = _pool_then(layer, flatten=flatten)
    x = np.random.default_rng(4).normal(size=(6, 3, 8, 8)).astype(np.float32)
    before = _run(g, x)
    folded = g.clone()
    assert fold_average_pools(folded)
    assert not folded.find(ops.AvgPool2d)
    np.testing.assert_allclose(_run(folded, x), before, rtol=1e-5, atol=1e-5)


def test_average_pool_fold_refuses_what_is_not_exact():
    conv = ops.Conv2d(weight=np.ones((2, 3, 3, 3), np.float32), padding=(1, 1, 1, 1))
    with pytest.raises(PassError, match="does not fold exactly at the borders"):
        fold_average_pools(_pool_then(conv, shape=(3, 9, 9)))  # a leftover row under the padded conv
    with pytest.raises(PassError, match="folds into a Conv2d or a Flatten"):
        g = Graph(level=SNN)
        x = g.add(ops.Input(shape=(3, 8, 8), name="x"), name="x")
        p = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [x], name="pool")
        g.outputs = [g.add(ops.Readout(), [p], name="readout")]
        fold_average_pools(g)


def test_rate_average_pooling_lowers_to_loihi2(pixels):
    from .conftest import small_snn

    g = small_snn()
    g.replace("pool", ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)))
    assert get_target("loihi2").check(g) == []
    hw = get_target("loihi2").legalize(g)
    assert not hw.find(ops.AvgPool2d) and not hw.find(ops.SpikingMaxPool2d)
    assert Simulator(hw, 8, backend="loihi2").run(pixels).outputs[7].shape == (16, 3)
