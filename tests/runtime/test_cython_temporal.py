"""The Cython temporal (FS/AMOS) runtime against the numpy specification: the counting unit kernel, the blocked
convolution and whole networks (random graphs and the shipped models), values, spikes, synaptic operations and
peaks compared for equality."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snncc.runtime import cython_available

pytestmark = pytest.mark.skipif(not cython_available()[0], reason="the Cython runtime is not built")

from snncc.ir import SNN, Amos, FewSpike, Graph, ops  # noqa: E402
from snncc.runtime import TemporalSimulator, cython_engine, kernels  # noqa: E402
from snncc.runtime.dynamics import run_window  # noqa: E402
from tests.conftest import MODELS, data_dir  # noqa: E402
from tests.runtime.test_cython_agreement import _built_variants  # noqa: E402


@pytest.fixture(params=_built_variants())
def variant(request, monkeypatch):
    """Each instruction-set variant of the kernels that is built and that this CPU runs."""
    import importlib

    module = importlib.import_module("snncc.runtime._kernels" + ("" if request.param == "portable"
                                                                else f"_{request.param}"))
    monkeypatch.setattr(cython_engine, "_kernels", module)
    return module


def _neuron(rng: np.random.Generator, k: int, amos: bool) -> FewSpike | Amos:
    threshold = tuple(np.round(rng.normal(0.5, 1, k), 2))  # rounded: inputs hit thresholds exactly below
    weight = tuple(rng.normal(0, 1, k))
    offset = float(rng.choice([0.0, rng.normal()]))
    if amos:
        return Amos(threshold=threshold, weight=weight, gain=tuple(rng.normal(1, 0.3, k)),
                    inhibition=tuple(rng.normal(0.5, 0.5, k * (k - 1) // 2)), offset=offset)
    return FewSpike(threshold=threshold, height=tuple(rng.normal(0.5, 0.5, k)), weight=weight, offset=offset)


def _parameters(neuron: FewSpike | Amos) -> tuple:
    amos = isinstance(neuron, Amos)
    k = neuron.steps
    f32 = lambda v: np.ascontiguousarray(v, np.float32)  # noqa: E731
    return (f32(neuron.threshold), f32(np.zeros(k) if amos else neuron.height), f32(neuron.weight),
            f32(neuron.gain if amos else np.ones(k)), neuron.inhibition_matrix() if amos else np.zeros((k, k),
                                                                                                       np.float32),
            np.float32(neuron.offset), amos)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(k=st.sampled_from([1, 2, 5, 8, 12, 70]), batch=st.integers(1, 5), n=st.integers(1, 200),
       fan_outs=st.integers(0, 3), amos=st.booleans(), threads=st.sampled_from([1, 2]),
       largest=st.sampled_from([30, 2**30, 2**31 - 1]), seed=st.integers(0, 2**31))
def test_counting_units_are_the_window_functions(variant, k, batch, n, fan_outs, amos, threads, largest, seed):
    """temporal_units_counted: the values of dynamics.run_window bit for bit, and the spikes per step, the most
    spikes of a neuron and the synaptic operations of each fed operand as the reference counts them from the
    trains. Inputs include 0, -0, thresholds exactly, infinities and NaN; n is rarely a multiple of the block.
    Fan-outs up to 2^31 - 1 make the kernel's int32 lanes move into their int64 totals after every block."""
    rng = np.random.default_rng(seed)
    neuron = _neuron(rng, k, amos)
    x = rng.normal(0.5, 1.5, (batch, n)).astype(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, *neuron.threshold], dtype=np.float32)
    mask = rng.random(x.shape) < 0.2
    x[mask] = rng.choice(specials, mask.sum())
    fan_out = rng.integers(0, largest, (fan_outs, n), endpoint=True).astype(np.float64)
    padded = np.zeros((fan_outs, -(-n // variant.UNIT_BLOCK) * variant.UNIT_BLOCK), np.int32)
    padded[:, :n] = fan_out
    value, trains = run_window(neuron, x)  # trains (K, B, n)
    out = np.empty_like(x)
    counts, peak = np.empty((batch, k), np.int64), np.empty(batch, np.int64)
    synops = np.empty((batch, fan_outs, k))
    variant.temporal_units_counted(x, *_parameters(neuron), out, counts, peak, padded, synops, threads)
    np.testing.assert_array_equal(out.view(np.uint32), value.view(np.uint32))  # -0 and NaN bits too
    np.testing.assert_array_equal(counts, trains.sum(axis=2).T)
    per_neuron = np.minimum(trains.sum(axis=0), 1) if amos else trains.sum(axis=0)
    np.testing.assert_array_equal(peak, per_neuron.max(axis=1))
    expected = np.einsum("tbn,fn->bft", trains.astype(np.float64), fan_out)
    np.testing.assert_array_equal(synops, expected)
    # The storing kernel computes the same values with the same block function.
    flat_out, flat_trains = np.empty(x.size, np.float32), np.empty((k, x.size), np.uint8)
    variant.temporal_units(x.reshape(-1), *_parameters(neuron), flat_out, flat_trains, threads)
    np.testing.assert_array_equal(flat_out.view(np.uint32), value.reshape(-1).view(np.uint32))
    np.testing.assert_array_equal(flat_trains, trains.reshape(k, -1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(k=st.sampled_from([1, 3, 8]), batch=st.integers(1, 4), channels=st.integers(1, 5), height=st.integers(1, 13),
       width=st.integers(1, 13), window=st.sampled_from([(2, 2, 2, 2), (3, 3, 2, 2), (2, 3, 1, 2), (1, 1, 1, 1),
                                                         (3, 2, 3, 1)]),
       amos=st.booleans(), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**31))
def test_counting_units_pool_their_input_as_the_reference(variant, k, batch, channels, height, width, window, amos,
                                                          threads, seed):
    """temporal_units_counted with a max pooling of its input (the population's only operand, pooled in its
    kernel): the values, counts, peaks and synaptic operations of the plain kernel on kernels.apply's MaxPool2d of
    the input, bit for bit, on odd sizes (windows that leave the last rows out) and inputs with zeros of both signs,
    infinities and NaN (which the pooling must pass on as numpy's maximum does)."""
    kh, kw, sh, sw = window
    if kh > height or kw > width:
        return
    rng = np.random.default_rng(seed)
    neuron = _neuron(rng, k, amos)
    x = rng.normal(0.5, 1.5, (batch, channels * height * width)).astype(np.float32)
    mask = rng.random(x.shape) < 0.15
    x[mask] = rng.choice(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, *neuron.threshold], np.float32), mask.sum())
    op = ops.MaxPool2d(kernel=(kh, kw), stride=(sh, sw))
    pooled = np.ascontiguousarray(kernels.apply(op, x.reshape(batch, channels, height, width)).reshape(batch, -1))
    n = pooled.shape[1]
    padded = np.zeros((1, -(-n // variant.UNIT_BLOCK) * variant.UNIT_BLOCK), np.int32)
    padded[0, :n] = rng.integers(0, 50, n)
    results = []
    for inputs, geometry in ((pooled, None), (x, ((channels, height, width), (kh, kw), (sh, sw)))):
        out = np.empty((batch, n), np.float32)
        counts, peak, synops = np.empty((batch, k), np.int64), np.empty(batch, np.int64), np.empty((batch, 1, k))
        variant.temporal_units_counted(inputs, *_parameters(neuron), out, counts, peak, padded, synops, threads,
                                       geometry)
        results.append((out.view(np.uint32), counts, peak, synops))
    for expected, got in zip(*results):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="temporal unit input planes"):
        variant.temporal_units_counted(x, *_parameters(neuron), out, counts, peak, padded, synops, threads,
                                       ((channels, height + 1, width), (kh, kw), (sh, sw)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(k=st.sampled_from([1, 3, 8]), batch=st.integers(1, 4), n=st.integers(1, 150), shortcut=st.booleans(),
       rescale=st.booleans(), amos=st.booleans(), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**31))
def test_counting_units_form_a_junction_as_numpy(variant, k, batch, n, shortcut, rescale, amos, threads, seed):
    """temporal_units_counted with a residual junction as its input, ``(x + (y * a + b)) * c + d`` with either
    rescaling left out: the plain kernel's results on numpy's float32 Affine, Add, Affine of the same arrays, bit
    for bit, inputs with zeros of both signs (a zero shift still turns -0 into +0), infinities and NaN."""
    rng = np.random.default_rng(seed)
    neuron = _neuron(rng, k, amos)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    x, y = (rng.normal(0.3, 1.0, (batch, n)).astype(np.float32) for _ in range(2))
    for values in (x, y):
        mask = rng.random(values.shape) < 0.15
        values[mask] = rng.choice(specials, mask.sum())
    scales = [rng.normal(1, 0.5, n).astype(np.float32), rng.choice([0.0, 0.25], n).astype(np.float32)]
    scales = (scales if shortcut else [None, None]) + \
        ([rng.normal(1, 0.5, n).astype(np.float32), rng.normal(0, 0.1, n).astype(np.float32)] if rescale
         else [None, None])
    with np.errstate(invalid="ignore"):  # inf - inf
        v = y if not shortcut else (y * scales[0] + scales[1]).astype(np.float32)
        v = x + v
        current = np.ascontiguousarray(v if not rescale else (v * scales[2] + scales[3]).astype(np.float32))
    padded = np.zeros((1, -(-n // variant.UNIT_BLOCK) * variant.UNIT_BLOCK), np.int32)
    padded[0, :n] = rng.integers(0, 50, n)
    results = []
    for inputs, junction in ((current, None), (x, (y, *scales))):
        out = np.empty((batch, n), np.float32)
        counts, peak, synops = np.empty((batch, k), np.int64), np.empty(batch, np.int64), np.empty((batch, 1, k))
        variant.temporal_units_counted(inputs, *_parameters(neuron), out, counts, peak, padded, synops, threads,
                                       None, junction)
        results.append((out.view(np.uint32), counts, peak, synops))
    for expected, got in zip(*results):
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 24), channels=st.integers(1, 6), size=st.integers(3, 12), out_ch=st.integers(1, 40),
       kernel=st.integers(1, 4), stride=st.integers(1, 2), pad=st.integers(0, 2), groups=st.sampled_from([1, 2]),
       bias=st.booleans(), block_values=st.sampled_from([1, 1 << 10, 1 << 20]), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31))
def test_blocked_convolution_is_the_references(monkeypatch, batch, channels, size, out_ch, kernel, stride, pad,
                                               groups, bias, block_values, threads, seed):
    """_BlockedConv2d gives kernels.conv2d's values exactly, whatever the blocks and threads. Weights, biases and
    inputs are multiples of 1/8, so every summation order gives the same sums and the test does not depend on the
    order in which the machine's BLAS sums (on OpenBLAS here the real-valued sums agree too)."""
    rng = np.random.default_rng(seed)
    channels, out_ch = channels * groups, out_ch * groups
    op = ops.Conv2d(weight=_eighths(rng, (out_ch, channels // groups, kernel, kernel), 4),
                    bias=_eighths(rng, (out_ch,), 4) if bias else None, stride=(stride, stride),
                    padding=(pad,) * 4, groups=groups)
    x = _eighths(rng, (batch, channels, size, size), 8, low=0)
    expected = kernels.conv2d(op, x)
    monkeypatch.setattr(cython_engine, "BLOCK_VALUES", block_values)
    conv = cython_engine._BlockedConv2d(op, x.shape[1:], expected.shape[1:], threads)
    got = conv(x, np.empty_like(expected))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(conv(x, np.empty_like(expected)), expected)  # kept arrays: the same again


@pytest.mark.parametrize("stride, groups, bias, threads", [(1, 1, True, 2), (2, 1, False, 2), (1, 2, True, 1),
                                                         (1, 1, False, 3)])
def test_convolution_in_many_blocks_is_the_references(stride, groups, bias, threads):
    """Layers large enough that the batch splits into several blocks above MIN_BLOCK_PRODUCT (the shorter last
    block included), spread over the threads: kernels.conv2d's values exactly."""
    rng = np.random.default_rng(stride * 10 + groups)
    op = ops.Conv2d(weight=_eighths(rng, (32, 16 // groups, 3, 3), 3),
                    bias=_eighths(rng, (32,), 4) if bias else None, stride=(stride, stride),
                    padding=(1, 1, 1, 1), groups=groups, pad_value=None)
    x = _eighths(rng, (37, 16, 28 * stride, 28 * stride), 8, low=0)  # multiples of 1/8: sums exact in any order
    expected = kernels.conv2d(op, x)
    conv = cython_engine._BlockedConv2d(op, x.shape[1:], expected.shape[1:], threads)
    assert 2 < -(-len(x) // conv.rows) < len(x)
    np.testing.assert_array_equal(conv(x, np.empty_like(expected)), expected)


def _eighths(rng: np.random.Generator, shape: tuple[int, ...], high: int, low: int | None = None) -> np.ndarray:
    """Random multiples of 1/8 in [low/8, high/8] (low: -high by default), float32."""
    return (rng.integers(-high if low is None else low, high + 1, shape) / 8).astype(np.float32)


def _assert_same_results(graph: Graph, x: np.ndarray, threads: int = 2) -> None:
    """The engine against the reference on real-valued weights: the convolutions in blocks of the reference's own
    size (one BLAS call over these few images, the reference's call), so the comparison holds on any BLAS; the
    smaller blocks of the default are tested on multiples of 1/8 above."""
    expected = TemporalSimulator(graph).run_batch(x)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cython_engine, "BLOCK_VALUES", kernels._IM2COL_BUDGET)
        engine = cython_engine.CythonTemporalSimulator(graph, threads=threads, convolution="reference")
        _compare(engine, x, expected)


def _compare(engine, x: np.ndarray, expected) -> None:
    for _ in range(2):  # the second batch runs on the kept arrays
        got = engine.run_batch(x)
        for a, b in zip(expected.outputs, got.outputs):
            np.testing.assert_array_equal(a, b)
        assert got.spikes.keys() == expected.spikes.keys()
        for name in expected.spikes:
            np.testing.assert_array_equal(got.spikes[name], expected.spikes[name])
        np.testing.assert_array_equal(got.synops, expected.synops)
        assert got.max_spikes_per_neuron == expected.max_spikes_per_neuron
    assert expected.synops.sum() > 0


@st.composite
def temporal_cnns(draw):
    """Input -> Conv2d -> population -> [max pool] -> Conv2d (a population's spikes feed it) -> population ->
    [residual junction: Conv2d + Affine shortcut -> Add -> Affine -> population] -> Flatten -> Linear ->
    population -> Linear -> Readout, FS or AMOS units of random parameters and windows."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    amos = draw(st.booleans())
    channels, size = draw(st.integers(1, 3)), draw(st.integers(6, 10))
    in_size = size
    width = draw(st.integers(1, 5))
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(channels, size, size)), name="x")
    h = g.add(ops.Conv2d(weight=rng.normal(0, 0.6, (width, channels, 3, 3)), bias=rng.normal(0, 0.2, width),
                         padding=(1, 1, 1, 1)), [h], name="conv1")
    h = g.add(ops.Population(neuron=_neuron(rng, draw(st.integers(1, 8)), amos)), [h], name="pop1")
    if draw(st.booleans()):  # pooled in the population's kernel (its only reader), 2x2/2 or another window
        k, stride = draw(st.sampled_from([(2, 2), (2, 2), (3, 3), (3, 2), (2, 1)]))
        h = g.add(ops.MaxPool2d(kernel=(k, k), stride=(stride, stride)), [h], name="pool")
        size = (size - k) // stride + 1
    h = g.add(ops.Conv2d(weight=rng.normal(0, 0.6, (width, width, 3, 3)), padding=(1, 1, 1, 1)), [h], name="conv2")
    h = g.add(ops.Population(neuron=_neuron(rng, draw(st.integers(1, 8)), amos)), [h], name="pop2")
    if draw(st.booleans()):  # a residual junction: conv + rescaled shortcut, rescaled sum, population
        shape = (width, size, size)
        branch = g.add(ops.Conv2d(weight=rng.normal(0, 0.6, (width, width, 3, 3)), padding=(1, 1, 1, 1)), [h],
                       name="conv3")
        shortcut = g.add(ops.Affine(scale=rng.uniform(0.5, 1.5, shape), shift=np.float32(0)), [h], name="rescale")
        h = g.add(ops.Add(), [branch, shortcut], name="add")
        h = g.add(ops.Affine(scale=rng.uniform(0.5, 1.5, (width, 1, 1)), shift=rng.normal(0, 0.1, shape)), [h],
                  name="rescale_sum")
        h = g.add(ops.Population(neuron=_neuron(rng, draw(st.integers(1, 8)), amos)), [h], name="pop_res")
    h = g.add(ops.Flatten(), [h])
    h = g.add(ops.Linear(weight=rng.normal(0, 0.3, (7, width * size * size))), [h], name="fc1")
    h = g.add(ops.Population(neuron=_neuron(rng, draw(st.integers(1, 8)), amos)), [h], name="pop3")
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=rng.normal(0, 0.5, (3, 7))), [h], name="fc2")])]
    x = rng.uniform(0, 1, (draw(st.integers(1, 6)), channels, in_size, in_size)).astype(np.float32)
    return g, x


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=temporal_cnns(), threads=st.sampled_from([1, 2]))
def test_random_temporal_networks_give_the_references_results(case, threads):
    graph, x = case
    _assert_same_results(graph, x, threads)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=temporal_cnns())
def test_junctions_whose_operands_the_kernel_cannot_take_run_node_by_node(case):
    """Where a junction's operands are not float32 in C order, its nodes run one by one (here forced): the same
    results as the reference too."""
    graph, x = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cython_engine.CythonTemporalSimulator, "_junction_inputs", lambda self, node, values: None)
        _assert_same_results(graph, x, 2)


#: The shipped models in FS and AMOS form that the whole-network tests run.
ZOO_TEMPORAL = [
    ("lenet5-mnist", "mnist", "convert-fs{steps=8}"),
    ("lenet5-mnist", "mnist", "convert-amos{steps=8}"),
    ("vgg-fmnist", "fashion-mnist", "convert-fs{steps=6}"),
    ("resnet-fmnist", "fashion-mnist", "convert-fs{steps=8}"),
]


def compiled_zoo_model(model: str, dataset: str, pipeline: str, images: int) -> tuple[Graph, np.ndarray]:
    """A shipped model compiled with ``pipeline`` (calibration on 100 training images) and its first ``images``
    test images, scaled; skips where the model is not built."""
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset

    path = MODELS / f"{model}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not built yet")
    calibration, _ = load_dataset(data_dir(dataset), split="train", limit=100)
    x, _ = load_dataset(data_dir(dataset), split="test", limit=images)
    scaling = InputScaling(scale=1 / 255)
    graph = compile_model(path, calibration=calibration, pipeline=f"canonicalize,normalize,{pipeline}",
                          input_scaling=scaling)
    return graph, scaling.apply(x).astype(np.float32)


@pytest.mark.parametrize("model, dataset, pipeline", ZOO_TEMPORAL)
def test_zoo_models_give_the_references_results(model, dataset, pipeline):
    """The shipped models, FS and AMOS, on a few real images: the reference's values, spikes and operations."""
    _assert_same_results(*compiled_zoo_model(model, dataset, pipeline, images=6))
