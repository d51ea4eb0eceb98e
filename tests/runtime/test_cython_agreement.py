"""The Cython runtime against the numpy reference simulator: the same spikes, step for step and neuron for neuron.

Spikes are compared per population, step, sample and neuron by recording what every population emits in both
engines (the tests wrap the population update of each engine; the engines themselves have no tracing code).
What is exact and what is bounded:

- Where snncc controls the order of every sum, the results are bit-identical: the kernels against an explicit
  ascending-order sum, and whole graphs whose weights, biases and inputs are multiples of 1/8 (every float32 sum of
  them is exact in any order).
- Where the reference's synaptic current is a BLAS product, its summation order is the BLAS's: OpenBLAS splits long
  reductions into blocks and uses small-matrix kernels with their own order, which differ between machines and
  instruction sets (AVX2, AVX-512). The event-driven kernels add the same float32 terms in ascending order. Spikes
  and predicted classes must still be equal; the readouts agree within the bound of the summation order,
  :func:`_order_bound`. A spike may flip only where the reference's membrane lies within that bound of the threshold
  (accumulated over the steps up to the flip); flips must be rarer than 1 in 100,000 spikes and change no class.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

if not __import__("snncc.runtime", fromlist=["cython_available"]).cython_available()[0]:
    pytest.skip("the Cython runtime is not built (python -m pip install -e .)", allow_module_level=True)

from snncc.errors import IRError, SimulationError  # noqa: E402
from snncc.ir import IF, LIF, SNN, Graph, ops  # noqa: E402
from snncc.runtime import Simulator, TemporalSimulator, _kernels, cython_engine, kernels, reference  # noqa: E402
from tests.conftest import MODELS, data_dir  # noqa: E402

MAX_FLIP_RATE = 1e-5
UNIT_ROUNDOFF = 2.0 ** -24  # float32


def _gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): a float32 sum of n + 1 terms in any order (any summation tree of depth at
    most n) differs from the exact sum by at most gamma_n times the sum of the terms' magnitudes (Higham, Accuracy
    and Stability of Numerical Algorithms, 2nd ed., section 4.2). Products with a 0/1 spike are exact."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def _synaptic_bound(op: ops.Op, window: int = 1) -> np.ndarray:
    """Per output channel, the largest difference between two float32 sums of one output of ``op`` over binary
    inputs that add the same terms in different orders: twice gamma_n of the sum of |weights| and |bias| (n + 1
    terms at most). The same bound holds for every spatial position of a convolution.

    ``window``: the size of an average pooling before ``op`` that the Cython runtime folds into it. The reference
    rounds the pooled value ``count / window`` and sums ``n`` products; the folded layer sums up to ``n window``
    terms ``W / window``, each rounded once. Both lie within gamma_(n window + 2) of the exact current times the same
    magnitude (every pooled value is at most 1)."""
    weight = np.abs(op.weight.astype(np.float64)).reshape(op.weight.shape[0], -1)
    magnitude = weight.sum(axis=1) + (0 if op.bias is None else np.abs(op.bias.astype(np.float64)))
    terms = weight.shape[1] + 1 if window == 1 else weight.shape[1] * window + 2
    return 2 * _gamma(terms) * magnitude


def _pooling_window(graph: Graph, node: str) -> int:
    """The window size of a non-overlapping average pooling read (through views) by synaptic ``node``, which the
    Cython runtime folds into it; 1 where there is none."""
    (src,) = graph.inputs(node)
    while isinstance(graph.op(src), (ops.Flatten, ops.Reshape, ops.Identity)):
        (src,) = graph.inputs(src)
    op = graph.op(src)
    if isinstance(op, ops.GlobalAvgPool):
        return int(np.prod(graph.types()[graph.inputs(src)[0]].shape[1:]))
    if isinstance(op, ops.AvgPool2d) and op.kernel == op.stride and not any(op.padding):
        return op.kernel[0] * op.kernel[1]
    return 1


def _readout_bound(graph: Graph, readout: str) -> np.ndarray:
    """Per readout value, how far the two engines' readouts may lie apart (same spikes, sums in another order).

    A readout is the mean over steps of its input; the input is a Conv2d or Linear of spikes, seen through views.
    The mean of currents that each differ by at most b differs by at most b; each engine rounds it once more to
    float32 (the relative term added by the caller)."""
    (node,) = graph.inputs(readout)
    while isinstance(graph.op(node), (ops.Flatten, ops.Reshape, ops.Identity)):
        (node,) = graph.inputs(node)
    op = graph.op(node)
    if not isinstance(op, (ops.Conv2d, ops.Linear)):
        pytest.fail(f"no summation-order bound for a readout of {type(op).__name__} {node}")
    bound = _synaptic_bound(op, _pooling_window(graph, node))
    shape = graph.types()[node].shape
    per_value = np.broadcast_to(bound.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
    return per_value.reshape(graph.types()[readout].shape)


def _largest_current_bound(graph: Graph) -> float:
    """The order bound of the largest synaptic current fed by spikes (currents from the analog input are the same
    BLAS call in both engines, hence identical; an average pooling the Cython runtime folds into the layer after it
    lengthens that layer's sum, see :func:`_synaptic_bound`)."""
    bounds = [float(_synaptic_bound(graph.op(n), _pooling_window(graph, n)).max()) for n in graph.topological_order()
              if isinstance(graph.op(n), (ops.Conv2d, ops.Linear))
              and not isinstance(graph.op(graph.inputs(n)[0]), ops.Input)]
    return max(bounds, default=0.0)


def _built_variants() -> list[str]:
    import importlib

    names = []
    for name in ("portable", "avx2", "avx512"):
        if not _kernels.cpu_supports(name):  # before the import: a module built for a wider instruction set dies of SIGILL on import
            continue
        module = "snncc.runtime._kernels" + ("" if name == "portable" else f"_{name}")
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        names.append(name)
    return names


@pytest.fixture(params=_built_variants())
def variant(request, monkeypatch):
    """Run a test on each instruction-set variant of the kernels that is built and that this CPU runs."""
    import importlib

    module = importlib.import_module("snncc.runtime._kernels" + ("" if request.param == "portable"
                                                                else f"_{request.param}"))
    assert module.variant() == request.param
    monkeypatch.setattr(cython_engine, "_kernels", module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Tracing both engines
# ----------------------------------------------------------------------------------------------------------------

@contextmanager
def _record_reference(trace: list):
    """Record (state, spikes, membrane before reset, threshold) of every reference population step."""
    original = reference._PopulationState.step

    def step(self, current):
        params = self.params
        v = self.state.v * params.decay if params.decay is not None else self.state.v.copy()
        v = v + current
        spikes = original(self, current)
        trace.append((self, spikes.copy(), v, params.threshold))
        return spikes

    reference._PopulationState.step = step
    try:
        yield
    finally:
        reference._PopulationState.step = original


@contextmanager
def _record_cython(trace: list):
    """Record the spikes of every Cython population step. A population fused with its max pooling never writes
    its spikes: they are recomputed by the unfused kernel from a copy of the state, and the fused kernel must leave
    the same membranes and spike counts."""
    original = cython_engine._Population.advance
    original_fused = cython_engine._PopulationMaxPool.advance

    def run(self, v, signal, tc, batch, shape):
        out, counts = original(self, v, signal, tc, batch, shape)
        trace.append((self, out.data.reshape(tc, batch, -1).copy()))
        return out, counts

    def run_fused(self, v, pool_state, signal, tc, batch):
        v_alone = v.copy()
        alone, alone_counts = original(self.population, v_alone, signal, tc, batch, self.pool.in_shape)
        pooled, counts = original_fused(self, v, pool_state, signal, tc, batch)
        np.testing.assert_array_equal(v, v_alone)
        np.testing.assert_array_equal(counts, alone_counts)
        trace.append((self.population, alone.data.reshape(tc, batch, -1).copy()))
        return pooled, counts

    original_conv = cython_engine._ConvPopulation.advance

    def run_conv_fused(self, signal, tc, batch, synops, states):
        # The unfused plans on copies of the states (recording the population's spikes), then the fused kernel on
        # the real ones: the same states, output, spike counts and synaptic operations.
        as_tuple = lambda state: state if isinstance(state, tuple) else (state,)  # noqa: E731
        nodes = (self.population_node, self.output_node)
        copies = {n: tuple(a.copy() for a in as_tuple(states[n])) for n in nodes}
        alone_synops = synops.copy()
        statistics = self.synapse.events, self.synapse.inputs, dict(self.synapse.chunks)
        current = self.synapse.advance(signal, tc, batch, alone_synops)
        self.synapse.events, self.synapse.inputs, self.synapse.chunks = statistics  # the chunk counts once
        if self.pool is None:
            alone, alone_counts = run(self.population, copies[self.population_node][0], current, tc, batch,
                                      self.synapse.out_shape)
        else:
            alone, alone_counts = run_fused(self.follower, copies[self.population_node][0],
                                            copies[self.output_node], current, tc, batch)
        cython_engine._Population.advance, cython_engine._PopulationMaxPool.advance = original, original_fused
        try:
            out, counts = original_conv(self, signal, tc, batch, synops, states)
        finally:
            cython_engine._Population.advance, cython_engine._PopulationMaxPool.advance = run, run_fused
        for n in nodes:
            for a, b in zip(as_tuple(states[n]), copies[n]):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(out.data, alone.data)
        np.testing.assert_array_equal(counts, alone_counts)
        np.testing.assert_array_equal(synops, alone_synops)
        return out, counts

    cython_engine._Population.advance = run
    cython_engine._PopulationMaxPool.advance = run_fused
    cython_engine._ConvPopulation.advance = run_conv_fused
    try:
        yield
    finally:
        cython_engine._Population.advance = original
        cython_engine._PopulationMaxPool.advance = original_fused
        cython_engine._ConvPopulation.advance = original_conv


def _group(trace: list, per_step: bool) -> list[np.ndarray]:
    """Per population (in order of first appearance, i.e. topological), its spikes as (T, B, n)."""
    order, parts = [], {}
    for entry in trace:
        key = id(entry[0])
        if key not in parts:
            order.append(key)
            parts[key] = []
        parts[key].append(entry[1].reshape(1, entry[1].shape[0], -1) if per_step else entry[1])
    return [np.concatenate(parts[k]).astype(np.uint8) for k in order]


def _membranes(trace: list) -> list[tuple[np.ndarray, np.float32]]:
    order, parts, thresholds = [], {}, {}
    for state, _, v, threshold in trace:
        if id(state) not in parts:
            order.append(id(state))
            parts[id(state)] = []
            thresholds[id(state)] = threshold
        parts[id(state)].append(v.reshape(1, v.shape[0], -1))
    return [(np.concatenate(parts[k]), thresholds[k]) for k in order]


def _run_both(graph: Graph, x: np.ndarray, timesteps: int, threads: int = 2):
    ref_trace, cy_trace = [], []
    with _record_reference(ref_trace):
        ref = reference.ReferenceSimulator(graph, timesteps).run_batch(x)
    engine = cython_engine.CythonSimulator(graph, timesteps, threads=threads)
    with _record_cython(cy_trace):
        cy = engine.run_batch(x)
    return ref, cy, _group(ref_trace, per_step=True), _group(cy_trace, per_step=False), _membranes(ref_trace)


def _assert_agreement(graph, x, timesteps, threads=2, exact=True) -> dict:
    """Compare both engines; returns counts. ``exact``: without flips the outputs must be bit-identical."""
    ref, cy, ref_spikes, cy_spikes, membranes = _run_both(graph, x, timesteps, threads)
    assert len(ref_spikes) == len(cy_spikes)
    total = sum(int(s.sum()) for s in ref_spikes)
    flips = sum(int((a != b).sum()) for a, b in zip(ref_spikes, cy_spikes))
    if flips:
        # The earliest flip (first step, then first population in topological order) is the cause of any later
        # ones: there the reference's membrane must sit within float rounding of the threshold.
        first = min((int(np.argmax((a != b).reshape(len(a), -1).any(axis=1))), i)
                    for i, (a, b) in enumerate(zip(ref_spikes, cy_spikes)) if (a != b).any())
        t, i = first
        v, threshold = membranes[i]
        where = ref_spikes[i][t] != cy_spikes[i][t]
        gap = np.abs(v[t][where] - threshold)
        # Up to the first flip both engines saw the same spikes, so each step's current differed by at most the
        # order bound, and each membrane update rounded once more (relative u of the membrane).
        allowed = (t + 1) * (_largest_current_bound(graph) + 2 * UNIT_ROUNDOFF * float(np.abs(v[:t + 1]).max()))
        assert gap.max() <= allowed, \
            f"a spike flipped at step {t} of population {i} with the membrane {gap.max()} from the threshold " \
            f"(the summation order explains at most {allowed})"
    assert flips <= MAX_FLIP_RATE * total, f"{flips} flipped spikes out of {total}"
    for a, b in zip(ref.outputs, cy.outputs):
        np.testing.assert_array_equal(a[-1].reshape(len(x), -1).argmax(1), b[-1].reshape(len(x), -1).argmax(1))
    if not flips:
        for name in ref.spikes:
            np.testing.assert_array_equal(ref.spikes[name], cy.spikes[name])
        if exact:
            for a, b in zip(ref.outputs, cy.outputs):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ref.synops, cy.synops)
        else:
            for output, a, b in zip(graph.outputs, ref.outputs, cy.outputs):
                allowed = _readout_bound(graph, output) + 2 * UNIT_ROUNDOFF * np.abs(a)
                excess = np.abs(a.astype(np.float64) - b) - allowed
                assert excess.max() <= 0, \
                    f"readout {output}: {int((excess > 0).sum())} values differ by more than the summation-order " \
                    f"bound (largest difference {np.abs(a - b).max()})"
            np.testing.assert_array_equal(ref.synops, cy.synops)  # spike counts times fan-outs: exact below 2^24
    predictions = [o[-1].reshape(len(x), -1).argmax(1) for o in (ref.outputs[0], cy.outputs[0])]
    return {"flips": flips, "spikes": total, "predictions": predictions}


# ----------------------------------------------------------------------------------------------------------------
# Random small graphs
# ----------------------------------------------------------------------------------------------------------------

neurons = st.one_of(
    st.builds(IF, threshold=st.sampled_from([0.5, 1.0, 1.3]), reset=st.sampled_from(["subtract", "zero"]),
              v_init=st.sampled_from([0.0, 0.5, 0.2])),
    st.builds(LIF, threshold=st.sampled_from([0.5, 1.0, 0.8]), tau_mem=st.sampled_from([2.0, 5.0, 20.0]),
              reset=st.sampled_from(["subtract", "zero"]), v_init=st.sampled_from([0.0, 0.5])),
)


@st.composite
def snn_graphs(draw):
    """An SNN-level graph: analog input -> [conv | linear] -> population -> [pooling] -> conv -> population ->
    flatten -> linear -> population -> linear -> readout, with random geometry, neurons and weights."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    quantized = draw(st.booleans())  # weights in multiples of 1/8: membranes land exactly on the threshold

    def weights(shape, fan_in):
        w = rng.normal(0, draw(st.sampled_from([1.0, 2.0, 3.0])) / np.sqrt(fan_in), shape)
        return np.round(w * 8) / 8 if quantized else w

    def bias(n):
        b = rng.uniform(-0.05, 0.3, n)
        return np.round(b * 8) / 8 if quantized else b

    g = Graph(level=SNN)
    conv_input = draw(st.booleans())
    if conv_input:
        channels = draw(st.integers(1, 3))
        shape = (channels, draw(st.integers(5, 11)), draw(st.integers(5, 11)))
        h = g.add(ops.Input(shape=shape), name="x")
        out_ch, k = draw(st.integers(2, 5)), draw(st.sampled_from([1, 3]))
        pad = draw(st.integers(0, 1))
        pad_value = rng.uniform(0, 0.5, channels) if draw(st.booleans()) else None
        h = g.add(ops.Conv2d(weight=weights((out_ch, channels, k, k), channels * k * k), bias=bias(out_ch),
                             padding=(pad,) * 4, pad_value=pad_value), [h], name="conv0")
        h = g.add(ops.Population(neuron=draw(neurons)), [h], name="pop0")
        pool = draw(st.sampled_from(["none", "max", "avg"]))
        if pool == "max":
            k = draw(st.integers(2, 3))
            h = g.add(ops.SpikingMaxPool2d(kernel=(k, k), stride=(draw(st.integers(1, 2)),) * 2,
                                           padding=(draw(st.integers(0, k - 1)),) * 4), [h], name="pool")
        elif pool == "avg":
            h = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2), padding=(draw(st.integers(0, 1)),) * 4), [h],
                      name="pool")
        in_ch = out_ch
        groups = draw(st.sampled_from([1, 2])) if in_ch % 2 == 0 else 1
        out_ch = draw(st.sampled_from([2, 4, 6]))
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        try:
            h = g.add(ops.Conv2d(weight=weights((out_ch, in_ch // groups, kh, kw), in_ch // groups * kh * kw),
                                 bias=bias(out_ch) if draw(st.booleans()) else None,
                                 stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                                 padding=tuple(draw(st.integers(0, 2)) for _ in range(4)),
                                 dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), groups=groups),
                      [h], name="conv1")
            g.types()
        except IRError:
            assume(False)
        h = g.add(ops.Population(neuron=draw(neurons)), [h], name="pop1")
        # Average pooling before the fully connected layer: 2x2 windows (the last row and column dropped where the
        # size is odd) or global. The Cython runtime folds both into fc1. A window whose size is not a power of two
        # makes W / size inexact, and quantized graphs put membranes exactly on the threshold, where any rounding
        # flips spikes: those get only windows of 2^k inputs.
        tail_pool = draw(st.sampled_from(["none", "avg", "global"]))
        spatial = g.types()[h].shape[1:]
        size = spatial[0] * spatial[1]
        if tail_pool == "avg" and min(spatial) >= 2:
            h = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [h], name="tail_pool")
        elif tail_pool == "global" and (not quantized or size & (size - 1) == 0):
            h = g.add(ops.GlobalAvgPool(), [h], name="tail_pool")
        h = g.add(ops.Flatten(), [h], name="flatten")
    else:
        shape = (draw(st.integers(3, 40)),)
        h = g.add(ops.Input(shape=shape), name="x")
        n = draw(st.integers(2, 30))
        h = g.add(ops.Linear(weight=weights((n, shape[0]), shape[0]), bias=bias(n)), [h], name="fc0")
        h = g.add(ops.Population(neuron=draw(neurons)), [h], name="pop1")
    fan_in = g.types()[h].size
    assume(fan_in <= 400)  # below the reduction length at which a BLAS may split the sum (see cython_engine)
    hidden = draw(st.integers(2, 24))
    h = g.add(ops.Linear(weight=weights((hidden, fan_in), fan_in), bias=bias(hidden)), [h], name="fc1")
    h = g.add(ops.Population(neuron=draw(neurons)), [h], name="pop2")
    classes = draw(st.integers(2, 6))
    h = g.add(ops.Linear(weight=weights((classes, hidden), hidden), bias=bias(classes)), [h], name="fc2")
    g.outputs = [g.add(ops.Readout(), [h], name="out")]
    x = rng.uniform(0, 1, (draw(st.integers(1, 5)),) + shape).astype(np.float32)
    x = np.round(x * 8) / 8 if quantized else x
    return g, x, quantized


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=snn_graphs(), timesteps=st.integers(1, 40), path=st.sampled_from(["auto", "sparse", "dense"]),
       small_chunks=st.booleans(), threads=st.sampled_from([1, 2]))
def test_random_graphs_spike_for_spike(case, timesteps, path, small_chunks, threads):
    """Quantized weights, biases and inputs (multiples of 1/8) make every synaptic sum exact in any order: then the
    engines must agree bit for bit, membranes landing exactly on the threshold included. With real-valued weights
    only the BLAS's summation order can differ (see the module docstring)."""
    graph, x, quantized = case
    with pytest.MonkeyPatch.context() as mp:
        if path != "auto":  # force every event-driven synapse onto one path
            mp.setattr(cython_engine, "DENSE_ABOVE", {k: (2.0 if path == "sparse" else -1.0)
                                                      for k in cython_engine.DENSE_ABOVE})
        if small_chunks:  # several chunks per run: state must carry across them
            mp.setattr(reference, "_CHUNK_VALUES", max(1, graph.types()["x"].size * len(x) * 3))
        result = _assert_agreement(graph, x, timesteps, threads, exact=quantized)
    if quantized:
        assert result["flips"] == 0


# ----------------------------------------------------------------------------------------------------------------
# Kernels one by one
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("neuron", [IF(), IF(threshold=0.75, reset="zero", v_init=0.0),
                                    LIF(threshold=1.0, tau_mem=3.0), LIF(threshold=0.5, tau_mem=7.0, reset="zero",
                                                                         v_init=0.5)])
@pytest.mark.parametrize("constant", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_population_kernel_matches_the_reference_state_bit_for_bit(neuron, constant, dtype, variant):
    """Currents in multiples of 1/4 put membranes exactly on the threshold: the comparison is >=, as specified."""
    rng = np.random.default_rng(0)
    T, B, n = 23, 3, 37 + 64  # longer than one vector of every variant, with a remainder
    current = (rng.integers(-1, 6, (1 if constant else T, B, n)) / 4).astype(np.float32)
    op = ops.Population(neuron=neuron)
    state = reference._PopulationState(op, (B, n))
    expected = np.stack([state.step(current[0 if constant else t]) for t in range(T)])
    pop = cython_engine._Population(op, n, threads=2)
    v = pop.start(B)
    spikes, counts = np.empty((T, B, n), dtype), np.empty((T, B), np.float32)
    variant.population_steps(current, v, spikes, counts, pop.threshold, pop.decay, pop.leak, pop.subtract, 2)
    np.testing.assert_array_equal(spikes, expected)
    np.testing.assert_array_equal(v, state.state.v)
    np.testing.assert_array_equal(counts, expected.sum(axis=2))


@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                                                     ((3, 2), (1, 2), (0, 1, 2, 0)), ((2, 3), (3, 1), (1, 0, 0, 2))])
def test_spiking_maxpool_kernel_matches_the_reference_state(kernel, stride, padding, variant):
    rng = np.random.default_rng(1)
    T, B, shape = 30, 2, (3, 7, 8)
    spikes = (rng.random((T, B) + shape) < 0.3).astype(np.uint8)
    op = ops.SpikingMaxPool2d(kernel=kernel, stride=stride, padding=padding)
    out_shape = op.infer([ops.TensorType(shape, ops.Rate())]).shape
    assert cython_engine._MaxPool.supports(op, shape, out_shape)
    state = reference._MaxCountState(op, (B,) + shape)
    expected = np.stack([state.step(spikes[t].astype(np.float32)) for t in range(T)])
    pool = cython_engine._MaxPool(op, shape, out_shape, threads=2)
    got = pool.advance(pool.start(B), cython_engine._Signal(spikes, False, True), T, B).data
    np.testing.assert_array_equal(got, expected)


def _ascending_sum(op: ops.Conv2d | ops.Linear, x: np.ndarray) -> np.ndarray:
    """The synaptic current of binary ``x`` summed term by term in ascending order of the reduction index (kernel
    row, kernel column, input channel for a convolution: the reference's channels-last im2col), in float32, then the
    bias: the order the kernels use, and the BLAS's order for reductions it does not split."""
    if isinstance(op, ops.Linear):
        acc = np.zeros((len(x), op.weight.shape[0]), np.float32)
        for k in range(op.weight.shape[1]):
            acc = np.where(x[:, k:k + 1] != 0, acc + op.weight[:, k], acc)
        return acc if op.bias is None else acc + op.bias
    out_ch, per_group, kh, kw = op.weight.shape
    (sh, sw), (dh, dw), (top, left, bottom, right) = op.stride, op.dilation, op.padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    acc = np.zeros((len(x), out_ch, ho, wo), np.float32)
    per_out = out_ch // op.groups
    for o in range(out_ch):
        g = o // per_out
        for i in range(kh):
            for j in range(kw):
                for c in range(per_group):
                    window = xp[:, g * per_group + c, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                j * dw:j * dw + sw * (wo - 1) + 1:sw]
                    acc[:, o] = np.where(window != 0, acc[:, o] + op.weight[o, c, i, j], acc[:, o])
    return acc if op.bias is None else acc + op.bias[None, :, None, None]


@pytest.mark.parametrize("op, shape", [
    (ops.Conv2d(weight=np.random.default_rng(2).normal(size=(5, 2, 3, 3)), bias=np.arange(5) / 7,
                stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2)), (2, 7, 8)),
    (ops.Conv2d(weight=np.random.default_rng(3).normal(size=(6, 2, 3, 2)), groups=2, padding=(1, 1, 1, 1)),
     (4, 5, 6)),
    (ops.Conv2d(weight=np.random.default_rng(4).normal(size=(16, 6, 5, 5)), bias=np.ones(16) / 3), (6, 14, 14)),
    (ops.Conv2d(weight=np.random.default_rng(5).normal(size=(3, 4, 1, 1)), stride=(3, 3)), (4, 7, 7)),
    (ops.Conv2d(weight=np.random.default_rng(9).normal(size=(4, 3, 3, 3)), padding=(2, 2, 2, 2)), (3, 4, 4)),
    # 16 x 16 blocks of the channels-last -> channels-first copy, with leftover channels and positions.
    (ops.Conv2d(weight=np.random.default_rng(10).normal(size=(20, 3, 3, 3)), bias=np.arange(20) / 9,
                stride=(2, 2), padding=(1, 1, 1, 1)), (3, 11, 13)),
    (ops.Conv2d(weight=np.random.default_rng(11).normal(size=(32, 4, 3, 3)), padding=(1, 1, 1, 1)), (4, 9, 9)),
    (ops.Linear(weight=np.random.default_rng(6).normal(size=(13, 300)), bias=np.arange(13) / 3), (300,)),
])
@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_event_driven_synapses_sum_in_ascending_order(op, shape, density, variant):
    """Exactly the ascending-order float32 sum; the dense (BLAS) kernel agrees to rounding (its order is the
    BLAS's own: OpenBLAS sums small products in another order)."""
    rng = np.random.default_rng(7)
    rows = 40
    x = (rng.random((rows,) + shape) < density).astype(np.uint8)
    expected = _ascending_sum(op, x)
    fan_out = kernels.fan_out(op, shape).ravel()
    synapse = cython_engine._EventSynapse(op, shape, expected.shape[1:], fan_out, threads=2)
    synapse.dense_above = 2.0  # always event-driven
    synops = np.zeros(rows)
    got = synapse.advance(cython_engine._Signal(x.reshape((1, rows) + shape), False, True), 1, rows, synops).data
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)
    np.testing.assert_allclose(expected, kernels.apply(op, x.astype(np.float32)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(synops, (x.reshape(rows, -1) != 0) @ fan_out)


@pytest.mark.parametrize("op, shape", [
    (ops.Conv2d(weight=np.random.default_rng(13).normal(size=(6, 1, 5, 5)), bias=np.arange(6) / 5,
                padding=(2, 2, 2, 2)), (1, 12, 12)),
    (ops.Conv2d(weight=np.random.default_rng(14).normal(size=(4, 2, 3, 2)), groups=2, stride=(2, 1),
                dilation=(1, 2), padding=(0, 3, 1, 2), pad_value=np.array([0.25, -1.0, 0.5, 2.0])), (4, 9, 7)),
    (ops.Conv2d(weight=np.random.default_rng(15).normal(size=(3, 3, 3, 3)), stride=(3, 2)), (3, 10, 11)),
])
def test_the_first_layers_current_is_the_references(op, shape, monkeypatch):
    """The compiled im2col builds the reference's matrix, so the product (and the first layer's current) is the
    reference's to the bit, also when the batch is split into slices."""
    x = np.random.default_rng(16).uniform(-1, 1, (7,) + shape).astype(np.float32)
    for budget in (kernels._IM2COL_BUDGET, 200):
        monkeypatch.setattr(kernels, "_IM2COL_BUDGET", budget)
        got = cython_engine._constant_conv2d(op, x, 2, cython_engine._Buffers())
        np.testing.assert_array_equal(got, kernels.conv2d(op, x))


def test_two_first_layer_convolutions_of_one_shape_keep_their_own_currents():
    """Each constant convolution keeps its own output buffer (they once shared one, so the second overwrote the
    first's current and both populations fired alike)."""
    rng = np.random.default_rng(21)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2, 6, 6)), name="input")
    convs = [g.add(ops.Conv2d(weight=rng.normal(0, s, (3, 2, 3, 3)), padding=(1, 1, 1, 1)), [x]) for s in (1, 0.3)]
    pops = [g.add(ops.Population(neuron=IF()), [c]) for c in convs]  # after both convolutions in the order
    g.outputs = [g.add(ops.Readout(), [p]) for p in pops]
    _assert_agreement(g, rng.uniform(0, 1, (4, 2, 6, 6)).astype(np.float32), timesteps=6)


@pytest.mark.parametrize("stride, dilation", [(2, 1), (1, 2)])
def test_row_blocks_are_refused_where_a_row_of_taps_is_not_contiguous(stride, dilation):
    """Row blocks assume stride and dilation 1 along x; the kernel checks that on the column taps."""
    x = np.ones((1, 1, 6, 6), np.uint8)
    weight_t = np.ones((1, 3, 3, 2), np.float32)
    wo = (6 + 2 - dilation * 2 - 1) // stride + 1
    rows = cython_engine._taps(6, 6, 3, 1, 1)
    cols = cython_engine._taps(6, wo, 3, stride, 1, dilation)
    out = np.empty((1, 2, 6, wo), np.float32)
    with pytest.raises(ValueError, match="stride and dilation 1 along x"):
        _kernels.conv2d_events(x, weight_t, None, np.ones(36), out, np.zeros(1), *rows, *cols, 1, True, 1)
    _kernels.conv2d_events(x, weight_t, None, np.ones(36), out, np.zeros(1), *rows, *cols, 1, False, 1)


@pytest.mark.parametrize("also_read", [False, True])
def test_a_population_read_only_by_max_pooling_runs_fused_with_it(also_read):
    """Fused where the pooling is the population's only consumer, and then identical to the reference (the spikes
    of the fused population are checked by the recorder); not fused where anything else reads the spikes."""
    rng = np.random.default_rng(12)
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(3, 8, 8)), name="x")
    pop = g.add(ops.Population(neuron=LIF(threshold=0.7, tau_mem=5.0)), [h], name="pop")
    h = g.add(ops.SpikingMaxPool2d(kernel=(2, 2), stride=(2, 2)), [pop], name="pool")
    h = g.add(ops.Flatten(), [h])
    h = g.add(ops.Linear(weight=rng.normal(size=(5, 48)) / 4), [h], name="fc")
    outputs = [g.add(ops.Readout(), [h], name="out")]
    if also_read:
        outputs.append(g.add(ops.Readout(), [g.add(ops.Flatten(), [pop])], name="pop_rate"))
    g.outputs = outputs
    engine = cython_engine.CythonSimulator(g, 20)
    assert engine.fused == ({} if also_read else {"pop": "pool"})
    _assert_agreement(g, rng.uniform(0, 1, (4, 3, 8, 8)).astype(np.float32), 20)


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_a_spiking_convolution_read_only_by_a_population_runs_fused_with_it(pool, path, monkeypatch):
    """Conv -> population (-> max pooling) in one kernel, on both paths of the convolution, and still the
    reference's spikes (the recorder compares the fused kernel with the plans run one by one)."""
    rng = np.random.default_rng(17)
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(2, 9, 9)), name="x")
    h = g.add(ops.Population(neuron=IF(threshold=0.6)), [h], name="pop0")
    h = g.add(ops.Conv2d(weight=rng.normal(size=(4, 2, 3, 3)) / 2, bias=np.arange(4) / 10, padding=(1, 1, 1, 1)),
              [h], name="conv")
    h = g.add(ops.Population(neuron=LIF(threshold=0.8, tau_mem=8.0, reset="zero")), [h], name="pop1")
    if pool:
        h = g.add(ops.SpikingMaxPool2d(kernel=(3, 3), stride=(2, 2)), [h], name="pool")
    h = g.add(ops.Flatten(), [h])
    # Weights on a grid of 1/8: the BLAS of the reference may sum them in any order and still get these sums.
    h = g.add(ops.Linear(weight=np.round(rng.normal(size=(4, 64 if pool else 324))) / 8), [h], name="fc")
    g.outputs = [g.add(ops.Readout(), [h], name="out")]
    engine = cython_engine.CythonSimulator(g, 16)
    plan = engine.plans["conv"]
    assert isinstance(plan, cython_engine._ConvPopulation)
    assert plan.output_node == ("pool" if pool else "pop1")
    monkeypatch.setitem(cython_engine.DENSE_ABOVE, ops.Conv2d, 2.0 if path == "sparse" else -1.0)
    result = _assert_agreement(g, rng.uniform(0, 1, (3, 2, 9, 9)).astype(np.float32), 16)
    assert result["spikes"] > 0


@pytest.mark.parametrize("shape, kernel", [((3, 8, 8), (2, 2)), ((2, 7, 9), (2, 3)), ((4, 5, 6), (5, 6)),
                                           ((1, 4, 4), (1, 1))])
def test_pool_regroup_kernel_regroups_the_windows_and_counts_their_events(shape, kernel, variant):
    """The regrouped spikes are (C, kh, kw, Ho, Wo) (dropped rows and columns beyond the last window); the synaptic
    operations are one per spike in a window plus the next layers' fan-out at every window holding a spike."""
    rng = np.random.default_rng(31)
    rows = 7
    x = (rng.random((rows,) + shape) < 0.2).astype(np.uint8)
    (c, h, w), (kh, kw) = shape, kernel
    ho, wo = h // kh, w // kw
    windows = x[:, :, :ho * kh, :wo * kw].reshape(rows, c, ho, kh, wo, kw)
    after = rng.integers(0, 50, c * ho * wo).astype(np.float64)
    for copy in (True, False):
        out = np.full((rows, c * kh * kw * ho * wo), 7, np.uint8)
        synops = np.full(rows, 0.5)
        variant.pool_regroup(x, out, kernel, after, synops, copy, 2)
        if copy:
            np.testing.assert_array_equal(out, windows.transpose(0, 1, 3, 5, 2, 4).reshape(rows, -1))
        else:
            assert (out == 7).all()
        expected = 0.5 + windows.sum(axis=(1, 2, 3, 4, 5)) + (windows.sum(axis=(3, 5)) > 0).reshape(rows, -1) @ after
        np.testing.assert_array_equal(synops, expected)


def _pooled_network(rng: np.random.Generator, quantized: bool, global_pool: bool) -> Graph:
    """conv -> population -> 2x2 average pooling -> conv -> population -> 2x2 (or global) average pooling ->
    flatten -> linear -> population -> linear -> readout: LeNet-5 with average pooling, small."""
    def weights(shape, scale):
        w = rng.normal(0, scale, shape)
        return np.round(w * 8) / 8 if quantized else w

    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(2, 12, 13)), name="x")
    h = g.add(ops.Conv2d(weight=weights((6, 2, 3, 3), 0.6), bias=np.full(6, 0.125), padding=(1, 1, 1, 1)), [h],
              name="conv0")
    h = g.add(ops.Population(neuron=IF(threshold=0.75)), [h], name="pop0")
    h = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [h], name="pool0")
    h = g.add(ops.Conv2d(weight=weights((8, 6, 3, 3), 0.5), bias=np.full(8, 0.25), padding=(1, 1, 1, 1)), [h],
              name="conv1")
    h = g.add(ops.Population(neuron=LIF(threshold=0.5, tau_mem=10.0)), [h], name="pop1")
    h = g.add(ops.GlobalAvgPool() if global_pool else ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [h],
              name="pool1")
    h = g.add(ops.Flatten(), [h], name="flatten")
    fan_in = g.types()[h].size
    h = g.add(ops.Linear(weight=weights((12, fan_in), 2 / np.sqrt(fan_in)), bias=np.full(12, 0.125)), [h],
              name="fc0")
    h = g.add(ops.Population(neuron=IF(threshold=0.5)), [h], name="pop2")
    h = g.add(ops.Linear(weight=weights((4, 12), 0.5)), [h], name="fc1")
    g.outputs = [g.add(ops.Readout(), [h], name="out")]
    return g


@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("global_pool", [False, True])
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_average_pooling_of_spikes_is_folded_into_the_next_layer(quantized, global_pool, path, monkeypatch):
    """Both poolings fold into the layers after them, which then run event-driven (the convolution fused with its
    population); the spikes are the reference's, bit for bit where every sum is exact (weights in multiples of
    1/8, windows of 4 or 36 inputs: W / 36 is not exact, so only 2x2 windows there), else within the order bound
    of the folded sums, and the synaptic operations are the reference's exactly."""
    rng = np.random.default_rng(23)
    g = _pooled_network(rng, quantized, global_pool)
    engine = cython_engine.CythonSimulator(g, 20)
    assert isinstance(engine.plans["pool0"], cython_engine._PoolFold)
    assert isinstance(engine.plans["pool1"], cython_engine._PoolFold)
    assert isinstance(engine.plans["conv1"], cython_engine._ConvPopulation)
    assert isinstance(engine.plans["fc0"], cython_engine._EventSynapse)
    monkeypatch.setattr(cython_engine, "DENSE_ABOVE", {k: (2.0 if path == "sparse" else -1.0)
                                                       for k in cython_engine.DENSE_ABOVE})
    x = rng.uniform(0, 1, (6, 2, 12, 13)).astype(np.float32)
    x = np.round(x * 8) / 8 if quantized else x
    exact = quantized and not global_pool
    result = _assert_agreement(g, x, 20, exact=exact)
    assert result["spikes"] > 1000
    if exact:
        assert result["flips"] == 0


@pytest.mark.parametrize("height, width", [(2, 3), (3, 2), (3, 3), (2, 2)])
def test_a_single_pooling_window_smaller_than_its_input_is_regrouped(height, width):
    """A 2x2 pooling of a 2x3 (or 3x2, 3x3) input has one window that leaves a margin unread: its folded layout is
    not the input's own (only a window covering the whole input, 2x2 here, is), so the plan copies the window out.
    Hypothesis found the 2x3 case (a reshape of 12 values into 8)."""
    rng = np.random.default_rng(5)
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(2, height, width)), name="x")
    h = g.add(ops.Conv2d(weight=np.round(rng.normal(0, 0.6, (2, 2, 1, 1)) * 8) / 8, bias=np.full(2, 0.125)), [h],
              name="conv0")
    h = g.add(ops.Population(neuron=IF(threshold=0.5)), [h], name="pop0")
    h = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [h], name="pool")
    h = g.add(ops.Flatten(), [h], name="flatten")
    h = g.add(ops.Linear(weight=np.round(rng.normal(0, 0.5, (3, 2)) * 8) / 8, bias=np.full(3, 0.125)), [h],
              name="fc")
    h = g.add(ops.Population(neuron=IF(threshold=0.25)), [h], name="pop1")  # not folded into a readout's layer
    h = g.add(ops.Linear(weight=np.round(rng.normal(0, 0.5, (2, 3)) * 8) / 8), [h], name="fc1")
    g.outputs = [g.add(ops.Readout(), [h], name="out")]
    engine = cython_engine.CythonSimulator(g, 8)
    assert isinstance(engine.plans["pool"], cython_engine._PoolFold)
    assert engine.plans["pool"].copy == ((height, width) != (2, 2))
    x = np.round(rng.uniform(0, 1, (5, 2, height, width)) * 8).astype(np.float32) / 8
    result = _assert_agreement(g, x, 8, exact=True)
    assert result["spikes"] > 0 and result["flips"] == 0


def test_average_pooling_read_by_anything_but_synaptic_layers_is_not_folded():
    """A pooling whose value is also a graph output, or overlapping windows, run the reference's numpy kernel."""
    rng = np.random.default_rng(24)
    g = _pooled_network(rng, quantized=False, global_pool=False)
    g.outputs = g.outputs + [g.add(ops.Flatten(), ["pool0"], name="pooled")]
    engine = cython_engine.CythonSimulator(g, 8)
    assert isinstance(engine.plans["pool0"], cython_engine._Stateless)
    assert isinstance(engine.plans["conv1"], cython_engine._Stateless)  # graded input: the reference's product
    assert isinstance(engine.plans["pool1"], cython_engine._PoolFold)
    x = rng.uniform(0, 1, (3, 2, 12, 13)).astype(np.float32)
    expected, got = reference.ReferenceSimulator(g, 8).run_batch(x), engine.run_batch(x)
    np.testing.assert_array_equal(got.outputs[1], expected.outputs[1])
    for name in expected.spikes:
        np.testing.assert_array_equal(got.spikes[name], expected.spikes[name])
    np.testing.assert_array_equal(got.synops, expected.synops)
    overlapping = ops.AvgPool2d(kernel=(3, 3), stride=(2, 2))
    assert cython_engine._PoolFold.geometry(overlapping, (6, 12, 13)) is None
    # A global pooling before the layer that is read out (a ResNet's head): that current stays the reference's.
    head = Graph(level=SNN)
    h = head.add(ops.Input(shape=(3, 4, 4)), name="x")
    h = head.add(ops.Population(neuron=IF(threshold=0.5)), [h], name="pop")
    h = head.add(ops.Reshape(shape=(3,)), [head.add(ops.GlobalAvgPool(), [h], name="gap")])
    head.outputs = [head.add(ops.Readout(), [head.add(ops.Linear(weight=rng.normal(size=(2, 3))), [h])])]
    engine = cython_engine.CythonSimulator(head, 8)
    assert isinstance(engine.plans["gap"], cython_engine._Stateless)
    x = rng.uniform(0, 1, (3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(engine.run_batch(x).outputs[0],
                                  reference.ReferenceSimulator(head, 8).run_batch(x).outputs[0])


def test_stateful_ops_without_kernels_fall_back_to_the_reference_state():
    """Max pooling of a non-binary train (after average pooling) and windows made of padding only (max -inf, then
    NaN increments) run the reference's numpy state and agree with it exactly, NaN included."""
    rng = np.random.default_rng(8)
    for pool in (ops.SpikingMaxPool2d(kernel=(2, 2), stride=(1, 1)),
                 ops.SpikingMaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(2, 2, 0, 0))):
        g = Graph(level=SNN)
        h = g.add(ops.Input(shape=(2, 6, 6)), name="x")
        h = g.add(ops.Population(neuron=IF()), [h], name="pop")
        if pool.padding[0] == 0:
            h = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(1, 1)), [h], name="avg")
        h = g.add(pool, [h], name="pool")
        h = g.add(ops.Flatten(), [h])
        g.outputs = [g.add(ops.Readout(), [h])]
        engine = cython_engine.CythonSimulator(g, 12)
        assert isinstance(engine.plans["pool"], cython_engine._ReferenceState)
        x = rng.uniform(0, 1, (3, 2, 6, 6)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # -inf - -inf in both engines
            expected = reference.ReferenceSimulator(g, 12).run_batch(x)
            got = engine.run_batch(x)
        np.testing.assert_array_equal(got.outputs[0], expected.outputs[0])
        np.testing.assert_array_equal(got.synops, expected.synops)


# ----------------------------------------------------------------------------------------------------------------
# The shipped models on real images
# ----------------------------------------------------------------------------------------------------------------

AVERAGE_POOLING = "canonicalize,normalize,convert-rate{maxpool=avg}"


@pytest.mark.parametrize("name, dataset, pipeline, images", [
    ("lenet5-mnist", "mnist", None, 200), ("vgg-fmnist", "fashion-mnist", None, 200),
    # Average pooling of spikes, folded into the next layer by the Cython runtime.
    ("lenet5-mnist", "mnist", AVERAGE_POOLING, 100), ("vgg-fmnist", "fashion-mnist", AVERAGE_POOLING, 100)])
def test_shipped_models_on_real_images(name, dataset, pipeline, images):
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset

    model = MODELS / f"{name}.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is not built yet (python models/train.py {name})")
    calibration, _ = load_dataset(data_dir(dataset), split="train", limit=500)
    x, y = load_dataset(data_dir(dataset), split="test", limit=images)
    scaling = InputScaling(scale=1 / 255)
    graph = compile_model(model, calibration=calibration, input_scaling=scaling, pipeline=pipeline)
    xs = scaling.apply(x)
    flips = spikes = 0
    correct = np.zeros(2, dtype=int)
    for start in range(0, len(xs), 100):
        # The reference's currents are BLAS products whose summation order depends on the machine (block splits of
        # VGG's 3136-input fc1, small-matrix kernels on AVX-512 even for LeNet's short sums): readouts agree within
        # the order bound, spikes exactly (or with rare flips at the threshold, see _assert_agreement).
        result = _assert_agreement(graph, xs[start:start + 100], 32, exact=False)
        flips, spikes = flips + result["flips"], spikes + result["spikes"]
        correct += [int((p == y[start:start + 100]).sum()) for p in result["predictions"]]
    assert spikes > 50_000 * len(xs) // 100 and flips <= MAX_FLIP_RATE * spikes, (flips, spikes)
    assert correct[0] == correct[1] and correct[0] > 0.8 * len(xs)  # the same accuracy, and a working SNN


# ----------------------------------------------------------------------------------------------------------------
# Facade
# ----------------------------------------------------------------------------------------------------------------

def test_missing_extension_falls_back_to_the_reference_with_one_warning(monkeypatch):
    from snncc import runtime

    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(4,)), name="x")
    h = g.add(ops.Population(neuron=IF()), [h])
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.eye(4)), [h])])]
    monkeypatch.setattr(runtime, "cython_available", lambda: (False, "No module named 'snncc.runtime._kernels'"))
    monkeypatch.setattr(runtime, "_warned_fallback", False)
    with pytest.warns(runtime.BackendFallbackWarning, match="pip install -e"):
        sim = Simulator(g, 4, backend="cython")
    assert sim.backend == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only one warning per process
        assert Simulator(g, 4, backend="cython").backend == "reference"
    assert sim.run(np.ones((2, 4), np.float32)).outputs.shape == (4, 2, 4)


def test_facade_selects_the_cython_engine_and_checks_threads():
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(4,)), name="x")
    h = g.add(ops.Population(neuron=IF()), [h])
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.eye(4)), [h])])]
    sim = Simulator(g, 4, backend="cython", threads=1)
    assert sim.backend == "cython" and isinstance(sim._engine, cython_engine.CythonSimulator)
    with pytest.raises(SimulationError, match="threads"):
        Simulator(g, 4, backend="cython", threads=0)
    with pytest.raises(SimulationError, match="unknown backend"):
        Simulator(g, 4, backend="fpga")


def test_stale_variant_modules_are_not_loaded(monkeypatch):
    """A variant left over from an earlier editable build (another source) must not run: the loader compares build
    stamps and falls back to the portable module, or refuses when that variant is asked for by name."""
    import sys
    import types

    from snncc import runtime

    for name in ("avx512", "avx2"):
        stale = types.ModuleType(f"snncc.runtime._kernels_{name}")
        stale.build_stamp = lambda: "stale"
        monkeypatch.setitem(sys.modules, f"snncc.runtime._kernels_{name}", stale)
    monkeypatch.delenv("SNNCC_KERNELS", raising=False)
    assert runtime.load_kernels() is _kernels
    if _kernels.cpu_supports("avx2"):
        monkeypatch.setenv("SNNCC_KERNELS", "avx2")
        with pytest.raises(ImportError, match="another build"):
            runtime.load_kernels()
    monkeypatch.setenv("SNNCC_KERNELS", "sse9")
    with pytest.raises(SimulationError, match="SNNCC_KERNELS"):
        runtime.load_kernels()


@pytest.mark.parametrize("maxpool", [True, False])
def test_signed_neurons_agree_spike_for_spike(inputs, maxpool):
    """Signed IF neurons (negative spikes take back earlier positive ones) give the reference's spikes, including
    the negative ones, through a dense synapse and the spiking max pooling."""
    from snncc.passes import PassContext, run_pipeline

    from tests.conftest import small_cnn

    snn = run_pipeline(small_cnn(3, maxpool=maxpool), "canonicalize,normalize,convert-rate{signed=true}",
                       PassContext(calibration=inputs))
    ref = Simulator(snn, timesteps=24, backend="reference").run(inputs)
    fast = Simulator(snn, timesteps=24, backend="cython").run(inputs)
    np.testing.assert_array_equal(fast.outputs, ref.outputs)
    for node in ref.spikes:
        np.testing.assert_array_equal(fast.spikes[node], ref.spikes[node])
    np.testing.assert_array_equal(fast.synops, ref.synops)


@pytest.mark.parametrize("neuron", [IF(threshold=(0.5, 1.0, 1.5, 0.8), v_init=(0.5, 0.0, 0.2, 0.5)),
                                    LIF(threshold=1.0, tau_mem=(2.0, 5.0, 0.0, 9.0), reset="zero"),
                                    IF(threshold=(0.7, 1.2, 1.0, 0.9), signed=True)])
def test_per_channel_populations_run_the_reference_state_with_the_same_spikes(neuron):
    """The kernels take one threshold per population, so a population with per-channel parameters runs the
    reference's state inside the Cython engine; spikes, outputs and synaptic operations are the reference's."""
    rng = np.random.default_rng(12)
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(2, 8, 8)), name="x")
    h = g.add(ops.Conv2d(weight=rng.normal(0, 0.5, (4, 2, 3, 3)), padding=(1, 1, 1, 1)), [h], name="conv1")
    h = g.add(ops.Population(neuron=neuron), [h], name="pop1")
    h = g.add(ops.SpikingMaxPool2d(kernel=(2, 2), stride=(2, 2)), [h], name="pool")
    h = g.add(ops.Conv2d(weight=rng.normal(0, 0.5, (4, 4, 3, 3)) * 8 // 1 / 8), [h], name="conv2")
    h = g.add(ops.Population(neuron=IF()), [h], name="pop2")
    h = g.add(ops.Flatten(), [h])
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.ones((3, 16)) / 4), [h])])]
    x = rng.uniform(0, 1, (5, 2, 8, 8)).astype(np.float32)
    engine = cython_engine.CythonSimulator(g, 24)
    assert isinstance(engine.plans["pop1"], cython_engine._ReferencePopulation)
    assert isinstance(engine.plans["pop2"], cython_engine._Population)
    expected = reference.ReferenceSimulator(g, 24).run_batch(x)
    got = engine.run_batch(x)
    for name in expected.spikes:
        np.testing.assert_array_equal(got.spikes[name], expected.spikes[name])
    np.testing.assert_array_equal(got.outputs[0], expected.outputs[0])
    np.testing.assert_array_equal(got.synops, expected.synops)
    assert expected.spikes["pop1"].sum() > 0 and expected.spikes["pop2"].sum() > 0


@pytest.mark.parametrize("method", ["fs", "amos"])
def test_compiled_temporal_convolutions_and_event_counts_are_the_references(cnn, inputs, method):
    """The temporal simulator's convolutions on the compiled im2col and its synaptic operations counted by the
    kernels give the reference's values, spikes and operations exactly, batch by batch and through the layer
    pipeline (run_stream keeps every input's values: the output arrays must not be reused between inputs)."""
    from snncc.passes import PassContext, run_pipeline

    graph = run_pipeline(cnn, f"canonicalize,normalize,convert-{method}{{steps=5}}", PassContext(calibration=inputs))
    engine = cython_engine.CythonTemporalSimulator(graph, threads=2)
    assert any(isinstance(graph.op(n), ops.Conv2d) for n in graph.topological_order())
    reference_engine = TemporalSimulator(graph)
    # Streamed inputs run one by one: products of another shape, compared with the reference's stream.
    for expected, got in ((reference_engine.run_batch(inputs[:9]), engine.run_batch(inputs[:9])),
                          (reference_engine.run_stream(inputs[:9])[0], engine.run_stream(inputs[:9])[0])):
        for a, b in zip(expected.outputs, got.outputs):
            np.testing.assert_array_equal(a, b)
        for name in expected.spikes:
            np.testing.assert_array_equal(got.spikes[name], expected.spikes[name])
        np.testing.assert_array_equal(got.synops, expected.synops)
    assert expected.synops.sum() > 0


@pytest.mark.parametrize("quantized", [True, False])
def test_residual_junctions_run_compiled_with_the_references_arithmetic(quantized):
    """A residual block as convert-rate leaves it: the shortcut's spikes rescaled (Affine), added to the branch's
    current (Add), the sum rescaled and fed to a population. The element-wise kernels round as numpy does, so the
    spikes are the reference's (bit for bit where every sum is exact)."""
    rng = np.random.default_rng(41)

    def weights(shape, scale):
        w = rng.normal(0, scale, shape)
        return (np.round(w * 8) / 8 if quantized else w).astype(np.float32)

    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(2, 8, 8)), name="x")
    h = g.add(ops.Conv2d(weight=weights((4, 2, 3, 3), 0.6), padding=(1, 1, 1, 1)), [h], name="stem")
    stem = g.add(ops.Population(neuron=IF(threshold=0.75)), [h], name="pop0")
    h = g.add(ops.Conv2d(weight=weights((4, 4, 3, 3), 0.4), bias=np.full(4, 0.125), padding=(1, 1, 1, 1)), [stem],
              name="conv1")
    h = g.add(ops.Population(neuron=IF(threshold=0.5)), [h], name="pop1")
    branch = g.add(ops.Conv2d(weight=weights((4, 4, 3, 3), 0.4), padding=(1, 1, 1, 1)), [h], name="conv2")
    scale = np.round(rng.uniform(0.5, 1.5, (4, 8, 8)) * 8) / 8 if quantized else rng.uniform(0.5, 1.5, (4, 8, 8))
    shortcut = g.add(ops.Affine(scale=scale, shift=np.zeros((4, 1, 1))), [stem], name="rescale")
    h = g.add(ops.Add(), [branch, shortcut], name="add")
    h = g.add(ops.Affine(scale=np.full((4, 1, 1), 0.875), shift=np.full((4, 1, 1), 0.0625)), [h], name="rescale2")
    h = g.add(ops.Population(neuron=IF()), [h], name="pop2")
    h = g.add(ops.Flatten(), [h])
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=weights((3, 256), 0.1)), [h], name="fc")])]
    engine = cython_engine.CythonSimulator(g, 12)
    assert isinstance(engine.plans["rescale"], cython_engine._Affine)
    assert isinstance(engine.plans["add"], cython_engine._Add)
    x = rng.uniform(0, 1, (4, 2, 8, 8)).astype(np.float32)
    x = np.round(x * 8) / 8 if quantized else x
    result = _assert_agreement(g, x, 12, exact=quantized)
    assert result["spikes"] > 500
    if quantized:
        assert result["flips"] == 0


def test_residual_network_on_real_images():
    """The shipped ResNet-14 (rate coding) on a few real images: the reference's spikes and classes."""
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset

    model = MODELS / "resnet-fmnist.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is not built yet")
    calibration, _ = load_dataset(data_dir("fashion-mnist"), split="train", limit=200)
    x, _ = load_dataset(data_dir("fashion-mnist"), split="test", limit=20)
    scaling = InputScaling(scale=1 / 255)
    graph = compile_model(model, calibration=calibration, input_scaling=scaling)
    result = _assert_agreement(graph, scaling.apply(x), 16, exact=False)
    assert result["spikes"] > 100_000
