"""The torch lowering (runtime/torch_lowering.py) against the reference simulator, its gradients and its backend."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.errors import SimulationError  # noqa: E402
from snncc.ir import IF, LIF, SNN, CubaLIF, FewSpike, Graph, ops  # noqa: E402
from snncc.runtime import BACKENDS, Simulator, reference  # noqa: E402
from snncc.runtime.torch_lowering import LOWERINGS, TorchSimulator, lower  # noqa: E402
from tests.conftest import MODELS, data_dir  # noqa: E402
from tests.runtime.test_cython_agreement import UNIT_ROUNDOFF, _readout_bound  # noqa: E402

MAX_FLIP_RATE = 1e-5


def _dyadic(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Random multiples of 1/8: every float32 sum of them (and of 0/1 spikes times them) is exact in any order,
    so torch's convolutions and products must give the reference's currents bit for bit."""
    return np.round(rng.normal(0, scale, shape) * 8) / 8


def every_op_graph(seed: int = 0) -> Graph:
    """An SNN-level graph with every lowered op and every stepped neuron model: IF (subtract, per-channel
    thresholds; zero reset; signed), LIF, the memoryless LIF gate, CubaLIF; shared-weight Conv2d and Linear."""
    rng = np.random.default_rng(seed)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2, 8, 8)), name="x")
    c0 = g.add(ops.Conv2d(weight=_dyadic(rng, (4, 2, 3, 3), 0.6), bias=_dyadic(rng, (4,), 0.2) + 0.25,
                          padding=(1, 1, 1, 1), pad_value=np.array([0.25, 0.5])), [x], name="conv0")
    p0 = g.add(ops.Population(neuron=IF(threshold=(1.0, 0.75, 1.25, 1.0), reset="subtract", v_init=0.5)), [c0],
               name="if_subtract")
    pool = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2), padding=(1, 1, 1, 1)), [p0], name="avgpool")
    p1 = g.add(ops.Population(neuron=LIF(threshold=0.5, tau_mem=5.0, reset="zero", v_init=0.2)), [pool],
               name="lif_zero")
    smp = g.add(ops.SpikingMaxPool2d(kernel=(2, 2), stride=(1, 1)), [p1], name="maxpool")
    pad = g.add(ops.Pad2d(padding=(1, 0, 0, 1)), [smp], name="pad")
    cpad = g.add(ops.ChannelPad(before=1, after=1), [pad], name="channelpad")
    sl = g.add(ops.Slice(starts=(0, 0, 0), stops=(6, 5, 5), steps=(1, 2, 2)), [cpad], name="slice")
    c1 = g.add(ops.Conv2d(weight=_dyadic(rng, (6, 4, 2, 2), 0.8), bias=_dyadic(rng, (6,), 0.2), stride=(3, 3)),
               [p0], name="conv1")
    p2 = g.add(ops.Population(neuron=IF(threshold=1.0, reset="subtract", v_init=0.5, signed=True)), [c1],
               name="if_signed")
    gains = (np.float32(1.0), np.array([0.5, 1.0, 2.0, 0.25, 1.0, 0.5], np.float32))
    c2 = g.add(ops.Conv2d(weight=_dyadic(rng, (4, 6, 3, 3), 0.5), bias=_dyadic(rng, (4,), 0.2) + 0.125,
                          padding=(1, 1, 1, 1), input_gains=gains), [sl, p2], name="conv_shared")
    aff = g.add(ops.Affine(scale=np.float32(0.5), shift=np.float32(0.125)), [c2], name="affine")
    add = g.add(ops.Add(), [c2, aff], name="add")
    p3 = g.add(ops.Population(neuron=LIF(threshold=0.5, tau_mem=0.0)), [add], name="lif_gate")
    ident = g.add(ops.Identity(), [p3], name="identity")
    cat = g.add(ops.Concat(axis=0), [p3, ident], name="concat")
    gap = g.add(ops.GlobalAvgPool(), [cat], name="gap")
    f0 = g.add(ops.Flatten(), [gap], name="flatten0")
    sl2 = g.add(ops.Slice(starts=(0, 0, 0), stops=(2, 2, 2), steps=(1, 1, 1)), [p2], name="slice2")
    rs = g.add(ops.Reshape(shape=(8,)), [sl2], name="reshape")
    lin = g.add(ops.Linear(weight=_dyadic(rng, (6, 8), 1.0), bias=_dyadic(rng, (6,), 0.2) + 0.25,
                           input_gains=(np.float32(1.0), np.float32(0.5))), [f0, rs], name="linear_shared")
    p4 = g.add(ops.Population(neuron=CubaLIF(threshold=0.75, current_decay=0.5, voltage_decay=0.25, bias=0.125)),
               [lin], name="cubalif")
    out = g.add(ops.Linear(weight=_dyadic(rng, (3, 6), 1.0), bias=_dyadic(rng, (3,), 0.2)), [p4], name="fc")
    g.outputs = [g.add(ops.Readout(), [out], name="readout")]
    return g


def _dyadic_inputs(n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 17, (n, 2, 8, 8)) / 16).astype(np.float32)


def test_every_op_graph_is_bit_identical_to_the_reference():
    graph = every_op_graph()
    x = _dyadic_inputs(16)
    ref = reference.ReferenceSimulator(graph, 12).run_batch(x)
    low = TorchSimulator(graph, 12).run_batch(x)
    # Every population fires (else the comparison would prove little), and every op of the table is in the graph.
    assert all(s.sum() > 0 for s in ref.spikes.values()), {n: s.sum() for n, s in ref.spikes.items()}
    # (max pooling of graded values is in the temporal test graph, tests/runtime/test_torch_temporal.py)
    assert set(LOWERINGS) - {ops.MaxPool2d} <= {type(graph.op(n)) for n in graph.topological_order()}
    assert ref.spikes.keys() == low.spikes.keys()
    for name in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[name], low.spikes[name], err_msg=name)
    np.testing.assert_array_equal(ref.outputs[0], low.outputs[0])
    np.testing.assert_array_equal(ref.synops, low.synops)


def test_lenet5_agrees_with_the_reference_on_real_images():
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset

    model = MODELS / "lenet5-mnist.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is not built yet (python models/train.py lenet5-mnist)")
    calibration, _ = load_dataset(data_dir("mnist"), split="train", limit=200)
    x, y = load_dataset(data_dir("mnist"), split="test", limit=20)
    scaling = InputScaling(scale=1 / 255)
    graph = compile_model(model, calibration=calibration, input_scaling=scaling)
    xs = scaling.apply(x)
    ref = reference.ReferenceSimulator(graph, 32).run_batch(xs)
    low = TorchSimulator(graph, 32).run_batch(xs)
    spikes = sum(float(s.sum()) for s in ref.spikes.values())
    # torch's convolutions and products sum in their own order: a spike may flip only rarely (where a membrane lies
    # within float rounding of the threshold); without flips the spike counts are equal and the readouts lie
    # within the summation-order bound.
    flips = sum(float(np.abs(ref.spikes[n] - low.spikes[n]).sum()) for n in ref.spikes)
    assert spikes > 100_000 and flips <= MAX_FLIP_RATE * spikes, (flips, spikes)
    if not flips:
        (readout,) = graph.outputs
        a, b = ref.outputs[0], low.outputs[0]
        allowed = _readout_bound(graph, readout) + 2 * UNIT_ROUNDOFF * np.abs(a)
        assert (np.abs(a.astype(np.float64) - b) <= allowed).all(), np.abs(a - b).max()
        np.testing.assert_array_equal(ref.synops, low.synops)
    predictions = [o[-1].reshape(len(xs), -1).argmax(1) for o in (ref.outputs[0], low.outputs[0])]
    np.testing.assert_array_equal(predictions[0], predictions[1])
    assert (predictions[0] == y).mean() > 0.8


def test_a_readout_loss_reaches_every_parameter():
    graph = every_op_graph()
    module = lower(graph)
    result = module(torch.as_tensor(_dyadic_inputs(8)), 12)
    loss = torch.nn.functional.cross_entropy(result.outputs[0][-1], torch.arange(8) % 3)
    loss.backward()
    names = dict(module.named_parameters())
    # weights and biases of every synaptic layer, every population's threshold, LIF decays, CubaLIF's factors
    assert sum(n.endswith(".weight") for n in names) == 5 and sum(n.endswith(".threshold") for n in names) == 5
    assert {n for n in names if n.endswith((".decay", ".keep_u", ".keep_v"))}
    for name, parameter in names.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_training_spike_counts_are_summed_when_read_and_carry_gradients():
    """In a training forward the spike counts are summed where they are read (SpikeCounts, lazy): the same counts
    as the evaluation forward's, in population order, and a spike-count penalty reaches every population's
    threshold."""
    graph = every_op_graph()
    module = lower(graph)
    x = torch.as_tensor(_dyadic_inputs(8))
    with torch.no_grad():
        expected = module(x, 12).spikes
    result = module(x, 12)
    assert result.spikes.lazy and not expected.lazy
    assert list(result.spikes) == list(expected) == module.populations
    for name in expected:
        assert torch.equal(result.spikes[name].detach(), expected[name]), name
    sum(s.sum() for s in result.spikes.values()).backward()
    for node in module.populations:
        assert module.parameters_of(node)["threshold"].grad is not None, node


def test_the_shared_weight_gradient_is_the_sum_over_its_operands():
    """One parameter for the shared-weight Linear; its gradient equals that of explicit per-operand copies
    ``W * g_i`` (each a leaf of its own), each copy's gradient scaled back by its gain and summed."""
    rng = np.random.default_rng(3)
    g = Graph(level=SNN)
    a = g.add(ops.Input(shape=(5,)), name="x")
    h = g.add(ops.Linear(weight=rng.normal(0, 1, (6, 5)), bias=rng.uniform(0, 0.5, 6)), [a], name="fc0")
    p = g.add(ops.Population(neuron=IF()), [h], name="p")
    q = g.add(ops.Population(neuron=LIF(tau_mem=3.0, threshold=0.5)), [h], name="q")
    gains = (np.float32(1.0), np.array([0.5, 2.0, 1.0, 0.25, 1.5, 1.0], np.float32))
    shared = ops.Linear(weight=rng.normal(0, 1, (3, 6)), bias=rng.normal(0, 0.1, 3), input_gains=gains)
    o = g.add(shared, [p, q], name="shared")
    g.outputs = [g.add(ops.Readout(), [o], name="readout")]
    x = torch.as_tensor(rng.uniform(0, 1, (10, 5)).astype(np.float32))
    target = torch.arange(10) % 3

    module = lower(g)
    loss = torch.nn.functional.cross_entropy(module(x, 8).outputs[0][-1], target)
    loss.backward()
    layer = module.layers[module.index["shared"]]
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]

    # The same network with the copies written out: spikes of p and q from the lowering, weights as copies.
    copies = [torch.tensor(c.weight.astype(np.float32), requires_grad=True) for c in shared.per_input()]
    bias = torch.tensor(shared.bias.astype(np.float32))
    trains = []
    with torch.no_grad():
        current = x @ torch.as_tensor(g.op("fc0").weight.astype(np.float32)).t() + \
            torch.as_tensor(g.op("fc0").bias.astype(np.float32))
    for node in ("p", "q"):
        population = module.layers[module.index[node]]
        trains.append(population(current.unsqueeze(0).expand(8, -1, -1)).detach())
    y = (trains[0] @ copies[0].t() + bias) + trains[1] @ copies[1].t()
    mean = torch.cumsum(y.double(), 0)[-1] / 8
    torch.nn.functional.cross_entropy(mean.float(), target).backward()
    expected = copies[0].grad * torch.as_tensor(gains[0]) + copies[1].grad * torch.as_tensor(gains[1]).reshape(1, -1)
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-7)
    assert layer.weight.grad.abs().sum() > 0


def test_the_backend_is_registered_and_runs_through_the_simulator():
    assert "torch" in BACKENDS
    graph = every_op_graph()
    x = _dyadic_inputs(10)
    ours = Simulator(graph, 6, backend="torch", batch_size=4).run(x, apply_scaling=False)
    theirs = Simulator(graph, 6, backend="reference", batch_size=4).run(x, apply_scaling=False)
    np.testing.assert_array_equal(ours.outputs, theirs.outputs)
    np.testing.assert_array_equal(ours.synops, theirs.synops)
    assert ours.neurons == theirs.neurons
    for name in theirs.spikes:
        np.testing.assert_array_equal(ours.spikes[name], theirs.spikes[name])


def test_graphs_mixing_rate_and_temporal_populations_are_refused_naming_them():
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(4,)), name="x")
    h = g.add(ops.Linear(weight=np.eye(4)), [x], name="fc")
    p = g.add(ops.Population(neuron=IF()), [h], name="rate_units")
    g.outputs = [g.add(ops.Population(neuron=FewSpike()), [p], name="fs_units")]
    with pytest.raises(SimulationError, match=r"populations \['rate_units'\] are rate-coded .* one method"):
        lower(g)


def test_cuda_is_refused_when_absent():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SimulationError, match="no CUDA device"):
        lower(every_op_graph(), device="cuda")
