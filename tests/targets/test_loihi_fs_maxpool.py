"""FS max pooling on Loihi 2 (targets/loihi/fs_maxpool.py): the max of the currents as the bit-serial max of the FS
trains, exact: the two facts it rests on on random integers, the max neuron by hand, the lowering, the emulator
bit for bit against the float SNN, the refusals, the netx layers and the timing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snncc.ir import Graph, ops, verify
from snncc.ir.neurons import FewSpike
from snncc.runtime import Simulator
from snncc.targets.base import get_target
from snncc.targets.emit import emit
from snncc.targets.loihi.fewspike import LoihiFewSpike
from snncc.targets.loihi.fs_maxpool import LoihiFewSpikeMax, masks, max_trains
from snncc.targets.loihi.netx import read_netx
from tests.targets.test_loihi_fewspike import small_fs_cnn


def fs_trains(x: np.ndarray, threshold: np.ndarray, height: np.ndarray) -> np.ndarray:
    """The FS neuron of Stoeckl & Maass on integer inputs ``x`` (any shape): ``z(t) = [v >= T(t)]``, ``v -= h(t)
    z(t)``; trains (K, *shape)."""
    v = x.astype(np.int64)
    trains = np.zeros((len(threshold),) + x.shape, np.uint8)
    for t in range(len(threshold)):
        trains[t] = v >= threshold[t]
        v = v - height[t] * trains[t]
    return trains


def window_inputs(trains: np.ndarray, payloads: np.ndarray) -> np.ndarray:
    """The gather's synaptic input ``(p(t) sum_j 2^j z_j(t)) << 6`` of windows (K, ..., n)."""
    bits = 1 << np.arange(trains.shape[-1], dtype=np.int64)
    mask = (trains.astype(np.int64) * bits).sum(axis=-1)
    return (payloads.reshape((-1,) + (1,) * (mask.ndim - 1)) * mask) << 6


@pytest.mark.parametrize("seed", range(12))
def test_the_online_max_of_the_trains_is_the_train_of_the_max_current(seed):
    """For any thresholds and heights (not only the binary code), windows of 1..8 inputs: the max neuron's train
    from the gather's input equals the FS train of the window's largest current (fact 1 and 2 of the module)."""
    rng = np.random.default_rng(seed)
    steps, n = int(rng.integers(2, 9)), int(rng.integers(1, 9))
    threshold = np.sort(rng.integers(1, 5000, steps))[::-1].copy() if seed % 2 else rng.integers(-500, 5000, steps)
    height = rng.integers(0, 6000, steps)
    payloads = rng.integers(1, 256, steps)
    x = rng.integers(-2000, 12000, (64, n))
    x[:8] = x[:8, :1]  # windows of equal currents (ties)
    trains = fs_trains(x, threshold, height)  # (K, 64, n)
    pooled = max_trains(masks(window_inputs(trains, payloads), payloads), n)
    want = fs_trains(x.max(axis=1), threshold, height)
    np.testing.assert_array_equal(pooled, want)
    assert want.any() and (n == 1 or (trains != want[..., None]).any())  # windows whose trains differ


def test_the_max_neuron_by_hand():
    """Trains 101, 110, 011, 000 (first step first): the lexicographic max is 110. Step 0: inputs 0 and 1 spike
    (m = 0b0011), out 1, C = 0b0011; step 1: inputs 1, 2 (m = 0b0110), C & m = 0b0010, out 1, C = 0b0010; step 2:
    inputs 0, 2 (m = 0b0101), C & m = 0, out 0."""
    trains = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]], np.uint8)[:, None, :]
    payloads = np.array([128, 64, 32])
    a = window_inputs(trains, payloads)
    assert a.ravel().tolist() == [128 * 3 << 6, 64 * 6 << 6, 32 * 5 << 6]
    assert masks(a, payloads).ravel().tolist() == [3, 6, 5]
    assert max_trains(masks(a, payloads), 4).ravel().tolist() == [1, 1, 0]


def on_chip_grid(g: Graph, seed: int) -> Graph:
    """``g`` with weights n / 2^12 on the pixels and n / 64 on the spikes, biases multiples of 2^-16: every
    quantization and shift of the lowering is exact (test_loihi_fewspike's exact test)."""
    rng = np.random.default_rng(seed)
    for node, unit in (("c1", 2.0 ** -12), ("c2", 1 / 64), ("out", 1 / 64)):
        op = g.op(node)
        n = rng.integers(-64, 65, op.weight.shape)
        n.flat[0] = 64
        bias = None if op.bias is None else rng.integers(-2000, 2000, op.bias.shape) * 2.0 ** -16
        g.replace(node, op.replace(weight=(n * unit).astype(np.float32),
                                   bias=None if bias is None else bias.astype(np.float32)))
    return g


@pytest.mark.parametrize("seed", range(3))
def test_max_pooled_fs_graph_runs_on_loihi2_bit_for_bit(seed):
    g = on_chip_grid(small_fs_cnn(seed, pool=ops.MaxPool2d), seed)
    assert get_target("loihi2").check(g) == []
    hw = get_target("loihi2").legalize(g)
    verify(hw)
    assert not hw.find(ops.MaxPool2d)
    assert isinstance(hw.op("s1").neuron, LoihiFewSpikeMax) and hw.op("s1").neuron.inputs == 4
    assert isinstance(hw.op("s1.unpooled").neuron, LoihiFewSpike)
    gather = hw.op("pool.gather")
    assert gather.groups == 4 and gather.weight[:, 0].tolist() == [[[1, 2], [4, 8]]] * 4
    assert hw.meta["pool.gather"]["weight_exp"] == 0 and gather.bias is None
    x = (4 * np.random.default_rng(10 + seed).integers(0, 64, size=(24, 1, 8, 8))).astype(np.float32)
    emulated = Simulator(hw, 6, backend="loihi2").run(x)
    reference = Simulator(g, 6).run(x)
    np.testing.assert_array_equal(emulated.outputs[5], reference.outputs[5])
    # the pooled population's spikes are the float one's; the unpooled layer fires more (4x the neurons)
    assert emulated.spikes["s1"].sum() == reference.spikes["s1"].sum() > 0
    assert emulated.spikes["s1.unpooled"].sum() > emulated.spikes["s1"].sum()


def fs_cnn_pooled(pool: ops.MaxPool2d) -> Graph:
    """pixels 1x6x6 -> conv 1x1 -> max pool -> FS -> flatten -> linear -> readout."""
    g = Graph(level="snn")
    code = FewSpike(threshold=(0.4375, 0.1875, 0.0625), height=(0.5, 0.25, 0.125), weight=(0.5, 0.25, 0.125))
    x = g.add(ops.Input(shape=(1, 6, 6), name="x"), name="x")
    c = g.add(ops.Conv2d(weight=np.full((2, 1, 1, 1), 1 / 255, np.float32)), [x], name="c")
    p = g.add(pool, [c], name="pool")
    s = g.add(ops.Population(neuron=code), [p], name="s")
    flat = g.add(ops.Flatten(), [s], name="flat")
    out = g.add(ops.Linear(weight=np.ones((2, g.types()["flat"].shape[0]), np.float32)), [flat], name="out")
    g.outputs = [g.add(ops.Readout(), [out], name="readout")]
    return g


def test_check_refuses_windows_beyond_eight_inputs_with_the_remedy():
    (v,) = get_target("loihi2").check(fs_cnn_pooled(ops.MaxPool2d(kernel=(3, 3), stride=(3, 3))))
    assert v.node == "pool" and "9 inputs" in v.actual and "at most 8" in v.actual
    assert "2x2" in v.remedy and "average-pooling" in v.remedy
    assert get_target("loihi2").check(fs_cnn_pooled(ops.MaxPool2d(kernel=(2, 3), stride=(2, 3)))) == []


def test_loihi1_still_refuses_fs_and_names_loihi2():
    violations = get_target("loihi1").check(small_fs_cnn(pool=ops.MaxPool2d))
    assert {v.node for v in violations} >= {"s1", "s2", "pool"}
    assert all("loihi2" in v.remedy for v in violations)


def test_netx_layers_and_timing_of_a_max_pooled_fs_bundle(tmp_path):
    manifest = emit(small_fs_cnn(pool=ops.MaxPool2d), "loihi2", tmp_path / "b", timesteps=6)
    assert manifest["latency_steps"] == 2 * 3 + 1 + 1  # two FS layers of K = 3, one max pooling, plus one
    assert "read 8 chip steps later (2 FS layers of 3 steps, 1 max poolings of one step each" in \
        (tmp_path / "b" / "README.md").read_text()
    layers = read_netx(tmp_path / "b" / "network.net")
    assert [layer["type"] for layer in layers] == ["input", "conv", "conv", "conv", "flatten", "dense"]
    gather = layers[2]
    assert gather["snnccRole"] == "fs-max-pool" and int(gather["groups"]) == 4
    assert gather["weight"][:, 0].tolist() == [[[1, 2], [4, 8]]] * 4 and gather["stride"].tolist() == [2, 2]
    neuron = gather["neuron"]
    assert neuron["type"] == "snnccFewSpikeMax" and neuron["gradedSpike"] and neuron["snnccInputs"] == 4
    assert neuron["snnccPayload"].tolist() == [128, 64, 32] and neuron["snnccSteps"] == 3
    assert layers[1]["neuron"]["type"] == "snnccFewSpike" and tuple(layers[1]["shape"]) == (4, 8, 8)


def test_the_shipped_max_pooling_lenet5_fs_runs_on_loihi2():
    """The shipped LeNet-5 (max pooling) converted with FS K=8 now lowers to Loihi 2, and its emulator gives the
    float SNN's class on the first 64 MNIST test images (the full test set: docs/targets.md)."""
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset
    from tests.conftest import MODELS, data_dir

    model = MODELS / "lenet5-mnist.onnx"
    calibration, _ = load_dataset(data_dir("mnist"), split="train", limit=200)
    x, y = load_dataset(data_dir("mnist"), split="test", limit=64)
    scaling = InputScaling.from_json(json.loads((MODELS / "lenet5-mnist.json").read_text())["input_scaling"])
    g = compile_model(model, method="fs", calibration=calibration, input_scaling=scaling)
    assert g.find(ops.MaxPool2d) and get_target("loihi2").check(g) == []
    hw = get_target("loihi2").legalize(g)
    chip = Simulator(hw, None, backend="loihi2").run(x)
    float_ = Simulator(g, None).run(x)
    agree = (chip.outputs[-1].reshape(64, -1).argmax(1) == float_.outputs[-1].reshape(64, -1).argmax(1)).mean()
    assert agree >= 62 / 64 and (chip.outputs[-1].reshape(64, -1).argmax(1) == y).mean() > 0.95


def test_a_bundles_hw_graph_loads_without_importing_the_target_first(tmp_path):
    """hw.snn holds the target's own neuron records (LoihiFS, LoihiFSMax); ``snncc.ir.load`` in a fresh process
    loads them (the registry loads the targets on an unknown kind, as the pass and backend registries do)."""
    import subprocess
    import sys

    emit(small_fs_cnn(pool=ops.MaxPool2d), "loihi2", tmp_path / "b", timesteps=6)
    code = ("import sys; from snncc.ir import load; g = load(sys.argv[1]); "
            "print(sorted({g.op(n).neuron.kind for n in g.topological_order() if getattr(g.op(n), 'neuron', None)}))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b" / "hw.snn")], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "['LoihiFS', 'LoihiFSMax']"
