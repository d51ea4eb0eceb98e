"""The reference simulator against closed forms and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.ir import IF, LIF, SNN, Graph, ops
from snncc.runtime import Simulator, kernels, reference


def _population_graph(neuron, size=64):
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(size,)), name="x")
    p = g.add(ops.Population(neuron=neuron), [x], name="pop")
    lin = g.add(ops.Linear(weight=np.eye(size)), [p], name="identity")
    g.outputs = [g.add(ops.Readout(), [lin], name="out")]
    return g


def test_if_subtract_spike_count_is_rounded_rate():
    """With v(0) = theta/2 and reset by subtraction, N(T) = floor(T * I / theta + 1/2) for 0 <= I <= theta."""
    rng = np.random.default_rng(0)
    current = rng.uniform(0, 1, (4, 64)).astype(np.float32)
    T = 50
    result = Simulator(_population_graph(IF(threshold=1.0, v_init=0.5)), timesteps=T).run(current)
    counts = result.outputs[-1] * T  # readout mean of the identity projection of the spikes
    expected = np.floor(T * current.astype(np.float64) + 0.5)
    fractional = T * current.astype(np.float64) + 0.5 - expected
    safe = (fractional > 1e-4) & (fractional < 1 - 1e-4)  # away from float ties
    np.testing.assert_allclose(counts[safe], expected[safe], atol=1e-3)
    assert result.spikes["pop"].sum() == pytest.approx(expected[safe].sum() + counts[~safe].sum(), abs=1e-2)


def _python_neuron(neuron, current, T):
    v = np.float32(neuron.v_init * neuron.threshold)
    decay = np.float32(neuron.beta) if isinstance(neuron, LIF) else None
    spikes = []
    for _ in range(T):
        if decay is not None:
            v = np.float32(v * decay)
        v = np.float32(v + current)
        s = v >= np.float32(neuron.threshold)
        if s:
            v = np.float32(v - np.float32(neuron.threshold)) if neuron.reset == "subtract" else np.float32(0)
        spikes.append(float(s))
    return spikes


@pytest.mark.parametrize("neuron", [IF(threshold=0.7, reset="zero", v_init=0.0), IF(threshold=1.3, v_init=0.2),
                                    LIF(threshold=1.0, tau_mem=5.0, reset="subtract", v_init=0.0),
                                    LIF(threshold=0.5, tau_mem=2.0, reset="zero", v_init=0.5)])
def test_neuron_dynamics_match_a_scalar_loop(neuron):
    current = np.random.default_rng(1).uniform(-0.2, 1.5, (1, 16)).astype(np.float32)
    T = 40
    g = _population_graph(neuron, 16)
    engine = reference.ReferenceSimulator(g, T)
    spikes_per_step = []
    batch = engine.run_batch(current)
    totals = batch.outputs[0][-1][0] * T
    for i in range(16):
        expected = _python_neuron(neuron, current[0, i], T)
        assert totals[i] == pytest.approx(sum(expected), abs=1e-3)
        spikes_per_step.append(expected)
    np.testing.assert_allclose(batch.spikes["pop"][:, 0], np.array(spikes_per_step).sum(axis=0))


def test_spiking_maxpool_emits_the_running_max_of_counts():
    rng = np.random.default_rng(2)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2, 6, 6)))
    p = g.add(ops.Population(neuron=IF(v_init=0.0)), [x], name="pop")
    m = g.add(ops.SpikingMaxPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)), [p], name="pool")
    f = g.add(ops.Flatten(), [m])
    g.outputs = [g.add(ops.Readout(), [f])]
    T = 30
    current = rng.uniform(0, 1, (3, 2, 6, 6)).astype(np.float32)
    out = Simulator(g, timesteps=T).run(current).outputs  # running mean of the pooled spikes
    pooled_counts = out * np.arange(1, T + 1)[:, None, None]
    increments = np.diff(np.concatenate([np.zeros_like(pooled_counts[:1]), pooled_counts]), axis=0)
    assert set(np.round(increments, 4).ravel()) <= {0.0, 1.0}, "the pooled output must be binary spikes"
    # Reference: count input spikes with the scalar loop, then max-pool the counts at each step.
    spikes = np.array([[_python_neuron(IF(v_init=0.0), c, T) for c in row] for row in current.reshape(3, -1)])
    cumulative = np.cumsum(spikes, axis=2).transpose(2, 0, 1).reshape(T, 3, 2, 6, 6)
    pool = ops.MaxPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1))
    expected = np.stack([kernels.apply(pool, c) for c in cumulative]).reshape(T, 3, -1)
    np.testing.assert_allclose(pooled_counts, expected, atol=1e-3)


def test_time_chunking_does_not_change_the_result(cnn, inputs, monkeypatch):
    """Chunking time (and batching) changes only the row count of matrix products, so BLAS may round differently
    in the last bit; spikes may flip only where a membrane sits within rounding of the threshold."""
    from snncc.passes import PassContext, run_pipeline

    snn = run_pipeline(cnn, "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))
    whole = Simulator(snn, timesteps=20, batch_size=16).run(inputs)
    monkeypatch.setattr(reference, "_CHUNK_VALUES", 1)  # one time step per chunk
    stepped = Simulator(snn, timesteps=20, batch_size=7).run(inputs)
    np.testing.assert_allclose(whole.outputs, stepped.outputs, rtol=1e-5, atol=1e-6)
    total = sum(s.sum() for s in whole.spikes.values())
    flips = sum(np.abs(whole.spikes[n] - stepped.spikes[n]).sum() for n in whole.spikes)
    assert total > 1000 and flips <= total * 1e-4


@pytest.mark.parametrize("op, shape", [
    (ops.Conv2d(weight=np.where(np.random.default_rng(3).random((5, 2, 3, 3)) > 0.3, 1.0, 0.0),
                stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2)), (2, 7, 8)),
    (ops.Conv2d(weight=np.ones((4, 1, 3, 3)), groups=2, padding=(1, 1, 1, 1)), (2, 5, 5)),
    (ops.AvgPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)), (2, 7, 7)),
    (ops.Linear(weight=np.where(np.random.default_rng(4).random((6, 9)) > 0.5, 2.0, 0.0)), (9,)),
    (ops.GlobalAvgPool(), (3, 4, 4)),
])
def test_fan_out_matches_brute_force(op, shape):
    """fan_out[i] = number of (output, nonzero weight) connections of input i, from one-hot probes."""
    size = int(np.prod(shape))
    probes = np.eye(size, dtype=np.float32).reshape((size,) + shape)
    if isinstance(op, (ops.Conv2d, ops.Linear)):
        op = op.replace(weight=(op.weight != 0).astype(np.float32))
    responses = kernels.apply(op, probes).reshape(size, -1)
    if isinstance(op, (ops.AvgPool2d, ops.GlobalAvgPool)):
        responses = responses != 0
    expected = responses.sum(axis=1)
    np.testing.assert_allclose(kernels.fan_out(op, shape).ravel(), expected)


def test_synops_count_spikes_times_fan_out():
    rng = np.random.default_rng(5)
    weight = np.where(rng.random((7, 10)) > 0.4, 1.0, 0.0)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(10,)))
    p = g.add(ops.Population(neuron=IF()), [x], name="pop")
    lin = g.add(ops.Linear(weight=weight), [p])
    g.outputs = [g.add(ops.Readout(), [lin])]
    current = rng.uniform(0, 1, (4, 10)).astype(np.float32)
    engine = reference.ReferenceSimulator(g, 12)
    batch = engine.run_batch(current)
    spikes_per_input = np.stack([_python_neuron(IF(), c, 12) for c in current.ravel()]).reshape(4, 10, 12)
    expected = np.einsum("bit,i->tb", spikes_per_input, (weight != 0).sum(axis=0))
    np.testing.assert_allclose(batch.synops, expected)


@pytest.mark.parametrize("backend", ["reference", "cython"])
def test_synops_of_a_shared_weight_layer_count_each_operands_spikes_times_its_fan_out(backend):
    """Operand j of a layer with input gains costs its spikes times the non-zero weights of ``W * g_j``: a zero
    gain silences a feature's synapses for that operand only."""
    from snncc.runtime import cython_available

    if backend == "cython" and not cython_available()[0]:
        pytest.skip("the Cython runtime is not built")
    rng = np.random.default_rng(7)
    weight = np.where(rng.random((7, 10)) > 0.4, 1.0, 0.0)
    gains = np.where(np.arange(10) < 3, 0.0, 0.5)  # features 0-2 of the second operand have no synapses
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(10,)))
    pops = [g.add(ops.Population(neuron=IF(v_init=v)), [x], name=f"pop{i}") for i, v in enumerate((0.5, 0.0))]
    shared = g.add(ops.Linear(weight=weight, input_gains=(1.0, gains)), pops)
    g.outputs = [g.add(ops.Readout(), [shared])]
    current = rng.uniform(0, 1, (4, 10)).astype(np.float32)
    T = 12
    batch = Simulator(g, T, backend=backend).run(current)
    trains = [np.stack([_python_neuron(IF(v_init=v), c, T) for c in current.ravel()]).reshape(4, 10, T)
              for v in (0.5, 0.0)]
    fan_outs = [(weight != 0).sum(axis=0), (weight * gains != 0).sum(axis=0)]
    expected = sum(np.einsum("bit,i->tb", s, f) for s, f in zip(trains, fan_outs))
    np.testing.assert_array_equal(batch.synops, expected)
    readout = (trains[0] @ np.ones(T) @ weight.T + trains[1] @ np.ones(T) @ (weight * gains).T) / T
    np.testing.assert_allclose(batch.outputs[-1], readout.reshape(4, 7), rtol=1e-6)


def test_simulator_rejects_ann_graphs_and_bad_inputs(cnn):
    from snncc.errors import SimulationError

    with pytest.raises(SimulationError, match="convert it first"):
        Simulator(cnn, timesteps=4)
    snn = _population_graph(IF(), 8)
    with pytest.raises(SimulationError, match="does not fit the model input"):
        Simulator(snn, timesteps=4).run(np.zeros((2, 9), np.float32))


def test_signed_if_net_count_tracks_the_rounded_cumulative_input():
    """Signed neuron with memory: N(t) = max(0, round(S(t))) with S(t) the cumulative input, at every step."""
    rng = np.random.default_rng(6)
    T, n = 60, 32
    # Graph inputs are constant in time, so the population's state is driven directly with varying currents.
    state = reference._PopulationState(ops.Population(neuron=IF(signed=True)), (1, n))
    currents = rng.uniform(-1, 1, (T, 1, n)).astype(np.float32)
    net = np.zeros((1, n))
    for t in range(T):
        out = state.step(currents[t])
        assert set(np.unique(out)) <= {-1.0, 0.0, 1.0}
        net += out
        expected = np.maximum(0, np.floor(currents[: t + 1].astype(np.float64).sum(axis=0) + 0.5))
        close_to_tie = np.abs(currents[: t + 1].astype(np.float64).sum(axis=0) + 0.5 - expected) < 1e-4
        np.testing.assert_array_equal(net[~close_to_tie], expected[~close_to_tie])


#: Inputs of the signed-neuron graph: a driver A that fires at every step and a driver B that fires at steps 4, 8,
#: ... (IF neurons from v = 0 on constant currents 1 and 1/4), and per signed neuron the weights (w_A, w_B).
SIGNED_WEIGHTS = np.array([[0.5, -1.0], [-0.125, 1.0], [1.0, -1.0], [0.75, -1.0], [-0.25, 0.0]])


def _signed_neuron_graph() -> Graph:
    """Drivers A, B -> Linear(SIGNED_WEIGHTS) -> signed IF (threshold 1, v(0) = 1/2) -> identity -> Readout: the
    signed neurons get the time-varying currents ``I(t) = w_A + w_B [t mod 4 = 0]``, all dyadic with |I| <= 1,
    so float32 arithmetic is exact and one spike per step always suffices."""
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2,)), name="x")
    drive = g.add(ops.Population(neuron=IF(v_init=0.0)), [x], name="drive")
    current = g.add(ops.Linear(weight=SIGNED_WEIGHTS), [drive], name="current")
    signed = g.add(ops.Population(neuron=IF(signed=True)), [current], name="signed")
    n = len(SIGNED_WEIGHTS)
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.eye(n)), [signed])], name="out")]
    return g


@pytest.mark.parametrize("backend", ["reference", "cython"])
def test_signed_neurons_take_back_spikes_to_follow_the_rounded_cumulative_input(backend):
    """Signed IF with memory (Wang et al. 2022): the net count is N(t) = max(0, floor(S(t) + 1/2)) at every step,
    S(t) the cumulative input; a negative spike comes only where the membrane falls below 0 after an earlier
    positive spike (never from a count of 0); both kinds count as spike events."""
    from snncc.runtime import cython_available

    if backend == "cython" and not cython_available()[0]:
        pytest.skip("the Cython runtime is not built")
    T = 16
    result = Simulator(_signed_neuron_graph(), timesteps=T, backend=backend).run(np.array([[1.0, 0.25]], np.float32))
    steps = np.arange(1, T + 1)
    net = np.rint(result.outputs[:, 0] * steps[:, None])  # the readout's running mean of the net spikes
    spikes = np.diff(net, axis=0, prepend=0)  # per step and neuron: -1, 0 or 1
    drivers = np.stack([np.ones(T), steps % 4 == 0], axis=1)
    cumulative = np.cumsum(drivers @ SIGNED_WEIGHTS.T, axis=0)
    np.testing.assert_array_equal(net, np.maximum(0, np.floor(cumulative + 0.5)))
    # Neuron 0, I = 1/2 except -1/2 at every 4th step: S = .5, 1, 1.5, 1, ...: it takes a spike back at 4, 8, ...
    assert spikes[:8, 0].tolist() == [1, 0, 1, -1, 1, 0, 1, -1]
    # Neuron 1, I = -1/8 except 7/8 at every 4th step: silent while its count is 0 although v < 0 at steps 1-3,
    # fires at 4, takes it back at 5 (S = 3/8 rounds to 0), fires again at 8.
    assert spikes[:9, 1].tolist() == [0, 0, 0, 1, -1, 0, 0, 1, 0]
    assert (spikes[:, 4] == 0).all(), "a neuron whose cumulative input stays negative never spikes, either sign"
    assert set(np.unique(spikes)) == {-1.0, 0.0, 1.0} and (net >= 0).all()
    events = np.abs(spikes).sum(axis=1) + drivers.sum(axis=1)  # the drivers' spikes are events too
    np.testing.assert_array_equal(result.spikes["signed"][:, 0] + result.spikes["drive"][:, 0], events)
    np.testing.assert_array_equal(result.spikes["signed"][:, 0], np.abs(spikes).sum(axis=1))


def test_signed_conversion_gives_every_population_signed_if_neurons(cnn, inputs):
    from snncc.passes import PassContext, run_pipeline

    snn = run_pipeline(cnn, "canonicalize,normalize,convert-rate{signed=true}", PassContext(calibration=inputs))
    neurons = [snn.op(n).neuron for n in snn.find(ops.Population)]
    assert neurons and all(n == IF(threshold=1.0, reset="subtract", v_init=0.5, signed=True) for n in neurons)


def _channels_graph(neuron, channels=3):
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(channels, 5, 5)), name="x")
    h = g.add(ops.Population(neuron=neuron), [h], name="pop")
    h = g.add(ops.Flatten(), [h])
    g.outputs = [g.add(ops.Readout(), [h], name="out")]
    return g


@pytest.mark.parametrize("make", [lambda t, v: IF(threshold=t, v_init=v, reset="zero"),
                                  lambda t, v: IF(threshold=t, v_init=v, signed=True),
                                  lambda t, v: LIF(threshold=t, v_init=v, tau_mem=3.0)])
def test_per_channel_parameters_run_each_channel_with_its_own_values(make):
    """A per-channel population is bit for bit the scalar populations of its channels, and a tuple of equal values
    is bit for bit the scalar."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-0.5, 1.5, (4, 3, 5, 5)).astype(np.float32)
    thresholds, v_inits = (0.6, 1.0, 1.7), (0.5, 0.0, 0.3)
    joint = reference.ReferenceSimulator(_channels_graph(make(thresholds, v_inits)), 20).run_batch(x)
    per_channel = joint.outputs[0].reshape(20, 4, 3, 25)
    for c in range(3):
        alone = reference.ReferenceSimulator(_channels_graph(make(thresholds[c], v_inits[c]), 1), 20)
        expected = alone.run_batch(x[:, c:c + 1]).outputs[0]
        np.testing.assert_array_equal(per_channel[:, :, c], expected.reshape(20, 4, 25))
    same = reference.ReferenceSimulator(_channels_graph(make((0.8,) * 3, (0.5,) * 3)), 20).run_batch(x)
    scalar = reference.ReferenceSimulator(_channels_graph(make(0.8, 0.5)), 20).run_batch(x)
    np.testing.assert_array_equal(same.outputs[0], scalar.outputs[0])
    np.testing.assert_array_equal(same.spikes["pop"], scalar.spikes["pop"])
    assert 0 < joint.spikes["pop"].sum()
