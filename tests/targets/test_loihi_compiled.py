"""The Loihi emulator's compiled path (targets/loihi/compiled.py, targets/loihi/_cuba.pyx) gives the integers of its
numpy path (arithmetic.py's equations, the specification): the population kernel against ``arithmetic.cuba_window``
on random records and sums (wrap, saturation, both resets, decays, exponents, layer biases, the 32-bit and the int64
loop), and the whole emulator, spike for spike, output for output and synaptic operation for synaptic operation, on
random hw graphs (channel blocks of one source, as the legalization splits layers) and on the shipped models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.ir.neurons import CubaLIF
from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi import compiled as lc
from snncc.targets.loihi import emulator
from tests.conftest import assert_same_results

pytestmark = pytest.mark.skipif(not lc.available()[0], reason="the compiled Loihi emulator is not built")


def _numpy_window(sums, weight_exp, layer_bias, start, neuron, steps):
    """The numpy path's population on the same sums: synaptic_input, the layer bias, cuba_window."""
    batch, n = sums.shape[1:]
    current = la.synaptic_input(np.broadcast_to(sums, (steps, batch, n)).astype(np.int64), weight_exp)
    if layer_bias is not None:
        current = current + np.repeat(layer_bias.astype(np.int64), n // layer_bias.size)
    state = la.CubaState(np.broadcast_to(start.u, (batch, n)).copy(), np.broadcast_to(start.v, (batch, n)).copy())
    _, spikes = la.cuba_window(state, current, neuron.current_decay, neuron.voltage_decay, neuron.bias,
                               neuron.threshold, subtract=neuron.reset == "subtract")
    return spikes


@pytest.mark.parametrize("seed", range(24))
def test_the_population_kernel_gives_cuba_windows_integers(seed):
    rng = np.random.default_rng(seed)
    steps, batch, channels, plane = 6, 3, 4, 5
    n = channels * plane
    memoryless = seed % 3 != 2  # the records of loihi-quantize: the 32-bit loop (unless the bias is too large)
    big = seed % 2 == 0  # sums whose shifted values pass 24 bits (the wrap) and drive v to its limits
    weight_exp = int(rng.integers(-8, 8))
    scale = (1 << 23) if big else (1 << 10)
    given = 1 if seed % 4 == 3 else steps  # the graded input's sums: the same at every step
    wide = rng.integers(-scale, scale, (given, batch, n + 3)).astype(np.float32)
    sums = wide[:, :, 2:2 + n]  # a block's channels of its group's sums: a strided view
    current = (scale >> max(0, -weight_exp)) << (la.ACTIVATION_SHIFT + max(0, weight_exp))  # the inputs' scale
    bias = int(rng.integers(-min(current >> 3, 1 << 20), min(current >> 3, 1 << 20))) if seed % 5 else 0
    if seed == 7:
        bias = (1 << 24) + 64  # beyond the 32-bit loop's bound: the int64 loop
    limit = min(current >> 2, 1 << 30)
    layer_bias = rng.integers(-limit, limit, channels).astype(np.int32) if seed % 2 else None
    threshold = la.record_threshold(int(rng.integers(1, int(np.clip(current >> 6, 2, (1 << 17) - 1)))))
    neuron = CubaLIF(threshold=threshold, current_decay=la.DECAY_UNIT if memoryless else int(rng.integers(1, 4097)),
                     voltage_decay=0 if memoryless else int(rng.integers(0, 4096)), decay_unit=la.DECAY_UNIT,
                     bias=bias, reset="subtract" if seed % 2 else "zero", initial_voltage=0)
    start = la.CubaState(rng.integers(-(1 << 20), 1 << 20, n).astype(np.int64),
                         rng.integers(-threshold, threshold, n).astype(np.int64))
    want = _numpy_window(sums, weight_exp, layer_bias, start, neuron, steps)
    if big and weight_exp > -6:  # the test reached the wrap of u (and, through it, the saturation of v)
        assert np.abs(la.synaptic_input(sums.astype(np.int64), weight_exp)).max() >= la.STATE_LIMIT
    counts = np.zeros((steps, batch), np.float32)
    got = lc.population_window(lc.PendingSums(sums, weight_exp, layer_bias), neuron, start, steps, counts, 2)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counts, want.sum(axis=2))
    assert want.sum() > 0


def random_hw_graph(seed: int) -> Graph:
    """Input 2x6x6 (uint8) -> conv 3x3 in three channel blocks (each its own exponent, bias and CubaLIF record)
    -> concat -> conv 3x3 stride 2 in two blocks -> CubaLIF -> concat -> flatten -> linear in two blocks ->
    CubaLIF -> concat -> linear -> readout: the shape of a legalized graph, with random integers."""
    rng = np.random.default_rng(seed)
    g = Graph(level="hw")
    x = g.add(ops.Input(shape=(2, 6, 6), name="x", dtype="uint8"), name="x")

    def neuron(k: int) -> CubaLIF:
        memoryless = (seed + k) % 3 != 0
        return CubaLIF(threshold=la.record_threshold(int(rng.integers(20, 4000))),
                       current_decay=la.DECAY_UNIT if memoryless else int(rng.integers(1, 4097)),
                       voltage_decay=0 if memoryless else int(rng.integers(0, 4096)), decay_unit=la.DECAY_UNIT,
                       bias=int(rng.integers(-20, 20)) << 6, reset="subtract" if (seed + k) % 2 else "zero",
                       initial_voltage=0)

    def blocks(name: str, src: str, sizes: list[int], make, exps: tuple[int, int]) -> str:
        pops = []
        for k, size in enumerate(sizes):
            op = make(size)
            syn = g.add(op, [src], name=f"{name}.b{k}", weight_exp=int(rng.integers(*exps)))
            pops.append(g.add(ops.Population(neuron=neuron(k)), [syn], name=f"{name}.s{k}"))
        return g.add(ops.Concat(axis=0), pops, name=f"{name}.join")

    def weights(shape, low=-128, high=128):
        return (rng.integers(low, high, shape) * 2).astype(np.int16)

    def bias(size):
        return (rng.integers(-200, 200, size) * 64).astype(np.int32)

    c1 = blocks("c1", x, [3, 2, 3], lambda o: ops.Conv2d(weight=weights((o, 2, 3, 3)), bias=bias(o),
                                                          padding=(1, 1, 1, 1), pad_value=np.array([3.0, 7.0])),
                (-8, 8))
    c2 = blocks("c2", c1, [4, 2], lambda o: ops.Conv2d(weight=weights((o, 8, 3, 3)), bias=bias(o), stride=(2, 2),
                                                        padding=(1, 1, 1, 1)), (-2, 3))
    flat = g.add(ops.Flatten(), [c2], name="flat")
    fc = blocks("fc", flat, [5, 4], lambda o: ops.Linear(weight=weights((o, 54)), bias=bias(o)), (-2, 3))
    out = g.add(ops.Linear(weight=weights((3, 9))), [fc], name="out")
    g.outputs = [g.add(ops.Readout(), [out], name="readout")]
    g.attrs["loihi"] = {"variant": "loihi2", "membrane_scale": {}, "reset": "subtract"}
    return g


@pytest.mark.parametrize("seed", range(8))
def test_compiled_and_numpy_emulators_agree_on_random_hw_graphs(seed):
    g = random_hw_graph(seed)
    x = np.random.default_rng(100 + seed).integers(0, 256, (5, 2, 6, 6)).astype(np.uint8)
    compiled = emulator.LoihiEmulator(g, 12, "loihi2", compiled=True)
    # the compiled path is the one that ran: every block's sums from its group's kernel, every population fused
    assert len(compiled._synapses.plans) == 4 and len(compiled._fused) == 7
    fast = compiled.run_batch(x)
    slow = emulator.LoihiEmulator(g, 12, "loihi2", compiled=False).run_batch(x)
    assert_same_results(slow, fast)
    assert sum(float(s.sum()) for s in slow.spikes.values()) > 0 and slow.synops.sum() > 0


def row_block_hw_graph(seed: int) -> Graph:
    """Input 2x9x7 -> conv 3x3 (one block) -> CubaLIF -> conv 3x3 split by the legalization's ``_split`` into
    blocks of output rows of one channel (Loihi 1's split of a channel too large for a core: each block a Slice of
    the input rows under it), padding 1 (seed odd: stride 2, one block a channel of its own rows) -> CubaLIF ->
    the Concats -> flatten -> linear -> readout."""
    from snncc.targets.loihi.legalize import Block, _split

    rng = np.random.default_rng(seed)
    g = Graph(level="hw")
    x = g.add(ops.Input(shape=(2, 9, 7), name="x", dtype="uint8"), name="x")

    def neuron() -> CubaLIF:
        return CubaLIF(threshold=la.record_threshold(int(rng.integers(20, 400))), current_decay=la.DECAY_UNIT,
                       voltage_decay=0, decay_unit=la.DECAY_UNIT, bias=int(rng.integers(-20, 20)) << 6,
                       reset="subtract" if seed % 2 else "zero", initial_voltage=0)

    def weights(shape):
        return (rng.integers(-128, 128, shape) * 2).astype(np.int16)

    c1 = g.add(ops.Conv2d(weight=weights((4, 2, 3, 3)), padding=(1, 1, 1, 1)), [x], name="c1", weight_exp=-3)
    s1 = g.add(ops.Population(neuron=neuron()), [c1], name="s1")
    stride = 2 if seed % 2 else 1
    c2 = g.add(ops.Conv2d(weight=weights((3, 4, 3, 3)), bias=(rng.integers(-200, 200, 3) * 64).astype(np.int32),
                          stride=(stride, stride), padding=(1, 1, 1, 1)), [s1], name="c2", weight_exp=1)
    s2 = g.add(ops.Population(neuron=neuron()), [c2], name="s2")
    flat = g.add(ops.Flatten(), [s2], name="flat")
    out = g.add(ops.Linear(weight=weights((3, g.types()["flat"].shape[0]))), [flat], name="out")
    g.outputs = [g.add(ops.Readout(), [out], name="readout")]
    height = g.types()["s2"].shape[1]
    rows = 2 if stride == 1 else 3
    blocks = [Block(c, c + 1, r, min(height, r + rows)) for c in range(3) for r in range(0, height, rows)]
    if seed % 2:  # a channel in one block of all its rows beside the row blocks
        blocks = [Block(0, 1)] + [b for b in blocks if b.c0 > 0]
    _split(g, "c2", "s2", blocks, g.types()["s1"].shape)
    g.attrs["loihi"] = {"variant": "loihi1", "membrane_scale": {}, "reset": "subtract"}
    return g


@pytest.mark.parametrize("seed", range(6))
def test_row_blocks_take_one_convolution_over_the_whole_source(seed):
    """Blocks of output rows (each a convolution over a Slice of its input rows) are rows of one convolution over
    the whole source: the compiled path computes that one, never their slices, and gives the numpy path's
    integers (which runs every block on its own slice)."""
    g = row_block_hw_graph(seed)
    x = np.random.default_rng(200 + seed).integers(0, 256, (4, 2, 9, 7)).astype(np.uint8)
    compiled = emulator.LoihiEmulator(g, 10, "loihi1", compiled=True)
    slices = {n for n in g.topological_order() if isinstance(g.op(n), ops.Slice)}
    row_blocks = [n for n, b in compiled._synapses.blocks.items() if b.rows is not None]
    assert len(slices) >= 4 and compiled._bypassed == slices and len(row_blocks) == len(slices)
    assert len(compiled._synapses.plans) == (4 if seed % 2 else 3)  # c1, the rows of c2, (c2's whole channel), out
    rows_plan = compiled._synapses.plans[compiled._synapses.blocks[row_blocks[0]].group]
    assert rows_plan[1].weight.shape[0] == (2 if seed % 2 else 3)  # each channel's weights once
    fast = compiled.run_batch(x)
    slow = emulator.LoihiEmulator(g, 10, "loihi1", compiled=False).run_batch(x)
    assert_same_results(slow, fast)
    assert sum(float(s.sum()) for n, s in slow.spikes.items() if n.startswith("s2.")) > 0 and slow.synops.sum() > 0


def test_compiled_true_without_the_build_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr(lc, "available", lambda: (False, "not built here"))
    with pytest.raises(SimulationError, match="compiled Loihi emulator is not available: not built here"):
        emulator.LoihiEmulator(random_hw_graph(0), 4, "loihi2", compiled=True)
    assert not emulator.LoihiEmulator(random_hw_graph(0), 4, "loihi2").compiled  # the numpy path, silently


@pytest.mark.parametrize("name,variant,images", [("lenet5-mnist", "loihi1", 16), ("lenet5-mnist", "loihi2", 16),
                                                 ("vgg-fmnist", "loihi2", 3)])
def test_compiled_and_numpy_emulators_agree_on_the_shipped_models(name, variant, images):
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset
    from snncc.passes import run_pipeline
    from snncc.targets.base import get_target
    from tests.conftest import MODELS, data_dir

    model = MODELS / f"{name}.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is not built yet (python models/train.py {name})")
    dataset = "fashion-mnist" if "fmnist" in name else "mnist"
    calibration, _ = load_dataset(data_dir(dataset), split="train", limit=200)
    x, _ = load_dataset(data_dir(dataset), split="test", limit=images)
    scaling = InputScaling.from_json(json.loads((MODELS / f"{name}.json").read_text())["input_scaling"])
    hw = run_pipeline(compile_model(model, calibration=calibration, input_scaling=scaling),
                      get_target(variant).pipeline)
    fast = emulator.LoihiEmulator(hw, 32, variant, compiled=True).run_batch(x)
    slow = emulator.LoihiEmulator(hw, 32, variant, compiled=False).run_batch(x)
    assert sum(float(s.sum()) for s in slow.spikes.values()) > 1000
    assert_same_results(slow, fast)
