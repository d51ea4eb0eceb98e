"""The torch lowering of temporal graphs (FS, AMOS) against the temporal simulator, and what both lowerings share:
evaluation in chunks of steps, parameters by node, fan-outs that follow the weights, the device option."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.errors import SimulationError  # noqa: E402
from snncc.ir import SNN, Amos, FewSpike, Graph, ops  # noqa: E402
from snncc.passes.fs_fit import relu_closed_form  # noqa: E402
from snncc.runtime import Simulator, TemporalSimulator, reference  # noqa: E402
from snncc.runtime.kernels import fan_outs  # noqa: E402
from snncc.runtime.torch_lowering import LoweredTemporalGraph, TorchSimulator, lower  # noqa: E402
from tests.conftest import assert_same_results  # noqa: E402
from tests.runtime.test_torch_lowering import _dyadic, _dyadic_inputs, every_op_graph  # noqa: E402


def _dyadic_fs(rng: np.random.Generator, k: int) -> FewSpike:
    """An FS unit whose parameters are multiples of 1/16 (so every value it decodes sums exactly)."""
    def sixteenths(mean, scale):
        return tuple(float(v) for v in np.round(rng.normal(mean, scale, k) * 16) / 16)
    return FewSpike(threshold=sixteenths(0.3, 0.3), height=sixteenths(0.5, 0.25), weight=sixteenths(0.25, 0.5),
                    offset=-0.125)


def temporal_graph(seed: int = 0) -> Graph:
    """A temporal SNN-level graph with FS (closed-form ReLU and free units) and AMOS populations, max pooling of
    decoded values, average pooling, an Add of branches of different depth (the earlier one waits), Concat, views,
    global pooling and a readout; weights and inputs in multiples of 1/8, so every sum is exact in any order."""
    rng = np.random.default_rng(seed)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2, 8, 8)), name="x")
    c0 = g.add(ops.Conv2d(weight=_dyadic(rng, (4, 2, 3, 3), 0.5), bias=_dyadic(rng, (4,), 0.2) + 0.25,
                          padding=(1, 1, 1, 1)), [x], name="conv0")
    mp = g.add(ops.MaxPool2d(kernel=(2, 2), stride=(2, 2)), [c0], name="maxpool")
    p0 = g.add(ops.Population(neuron=relu_closed_form(4)), [mp], name="fs_relu")
    c1 = g.add(ops.Conv2d(weight=_dyadic(rng, (4, 4, 3, 3), 0.4), bias=_dyadic(rng, (4,), 0.2), padding=(1, 1, 1, 1)),
               [p0], name="conv1")
    p1 = g.add(ops.Population(neuron=_dyadic_fs(rng, 4)), [c1], name="fs_free")
    c2 = g.add(ops.Conv2d(weight=_dyadic(rng, (4, 4, 1, 1), 0.5)), [p1], name="conv2")
    p2 = g.add(ops.Population(neuron=Amos.from_few_spike(relu_closed_form(4))), [c2], name="amos")
    add = g.add(ops.Add(), [p2, p0], name="add")  # p0's value waits for p2's window to end
    pool = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [add], name="avgpool")
    ident = g.add(ops.Identity(), [pool], name="identity")
    cat = g.add(ops.Concat(axis=0), [pool, ident], name="concat")
    gap = g.add(ops.GlobalAvgPool(), [cat], name="gap")
    flat = g.add(ops.Flatten(), [gap], name="flatten")
    p3 = g.add(ops.Population(neuron=relu_closed_form(4, alpha=2.0)), [flat], name="fs_fc")
    out = g.add(ops.Linear(weight=_dyadic(rng, (3, 8), 1.0), bias=_dyadic(rng, (3,), 0.2)), [p3], name="fc")
    g.outputs = [g.add(ops.Readout(), [out], name="readout")]
    return g


@pytest.mark.parametrize("extra", [0, 3, -2])  # T at, past and before the latency
def test_the_temporal_graph_is_bit_identical_to_the_temporal_simulator(extra):
    graph = temporal_graph()
    x = _dyadic_inputs(16)
    latency = TemporalSimulator(graph).latency
    ref = TemporalSimulator(graph, latency + extra).run_batch(x)
    low = TorchSimulator(graph, latency + extra).run_batch(x)
    assert low.outputs[0].shape[0] == latency + extra and isinstance(lower(graph), LoweredTemporalGraph)
    # every population fires, and the FS units more than once per neuron somewhere (else the test would prove little)
    assert all(s.sum() > 0 for s in ref.spikes.values()) or extra < 0
    assert ref.max_spikes_per_neuron["fs_relu"] > 1 and ref.max_spikes_per_neuron["amos"] == 1
    assert_same_results(ref, low, peaks=True)


def test_the_backend_runs_temporal_graphs_through_the_simulator():
    graph = temporal_graph()
    x = _dyadic_inputs(10)
    ours = Simulator(graph, None, backend="torch", batch_size=4).run(x, apply_scaling=False)
    theirs = Simulator(graph, None, backend="reference", batch_size=4).run(x, apply_scaling=False)
    assert ours.latency == theirs.latency == 16 and ours.neurons == theirs.neurons
    assert ours.max_spikes_per_neuron == theirs.max_spikes_per_neuron
    np.testing.assert_array_equal(ours.outputs, theirs.outputs)
    np.testing.assert_array_equal(ours.synops, theirs.synops)
    for name in theirs.spikes:
        np.testing.assert_array_equal(ours.spikes[name], theirs.spikes[name])


def test_a_readout_loss_reaches_every_window_parameter():
    graph = temporal_graph()
    module = lower(graph, surrogate="triangle", width=0.25)
    result = module(torch.as_tensor(_dyadic_inputs(8)))
    loss = torch.nn.functional.cross_entropy(result.outputs[0][-1], torch.arange(8) % 3)
    loss.backward()
    for node in ("fs_relu", "fs_free", "amos", "fs_fc"):
        names = set(module.parameters_of(node))
        expected = {"threshold", "weight", "offset"} | ({"gain", "inhibition"} if node == "amos" else {"height"})
        assert names == expected, node
        for name, parameter in module.parameters_of(node).items():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (node, name)
    inhibition = module.parameters_of("amos")["inhibition"].grad
    assert (inhibition.triu() == 0).all()  # only the strict lower triangle is read
    for node in ("conv0", "conv1", "conv2", "fc"):
        assert module.parameters_of(node)["weight"].grad.abs().sum() > 0, node


def test_trained_window_parameters_are_written_back_into_the_ops():
    graph = temporal_graph()
    module = lower(graph)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for node in ("fs_free", "amos"):
            for parameter in module.parameters_of(node).values():
                parameter += torch.as_tensor(np.round(rng.normal(0, 0.1, parameter.shape) * 16) / 16,
                                             dtype=torch.float32)
    trained = graph.clone()
    for node in ("fs_free", "amos"):
        op = module.module_of(node).trained_op(graph.op(node))
        assert type(op.neuron) is type(graph.op(node).neuron) and op.neuron != graph.op(node).neuron
        trained.replace(node, op)
    amos = trained.op("amos").neuron
    np.testing.assert_array_equal(amos.inhibition_matrix(),
                                  np.tril(module.parameters_of("amos")["inhibition"].detach().numpy(), -1))
    x = _dyadic_inputs(12)
    with torch.no_grad():
        moved = module(torch.as_tensor(x))
    ref = TemporalSimulator(trained).run_batch(x)
    np.testing.assert_array_equal(ref.outputs[0], moved.outputs[0].numpy())
    for name in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[name], moved.spikes[name].numpy())


# ----------------------------------------------------------------------------------------------------------------
# Shared by both lowerings
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_steps", [1, 5, 11])
def test_evaluation_in_chunks_equals_one_chunk_exactly(chunk_steps):
    graph = every_op_graph()
    module = lower(graph)
    x = torch.as_tensor(_dyadic_inputs(8, seed=4))
    with torch.no_grad():
        whole = module(x, 11, chunk_steps=11)
        parts = module(x, 11, chunk_steps=chunk_steps)
    for a, b in zip(whole.outputs, parts.outputs):
        assert torch.equal(a, b)
    assert whole.spikes.keys() == parts.spikes.keys()
    for name in whole.spikes:
        assert torch.equal(whole.spikes[name], parts.spikes[name]), name
    assert torch.equal(whole.synops, parts.synops)


def test_evaluation_chunks_by_the_reference_rule_and_training_runs_one_chunk(monkeypatch):
    graph = every_op_graph()
    module = lower(graph)
    chunks = []
    original = module._run_chunk
    monkeypatch.setattr(module, "_run_chunk", lambda x, T, *rest: chunks.append(T) or original(x, T, *rest))
    monkeypatch.setattr("snncc.runtime.torch_lowering._CHUNK_VALUES", 8 * 4 * 8 * 8 * 3)  # 3 steps of 8 inputs
    x = torch.as_tensor(_dyadic_inputs(8))
    with torch.no_grad():
        module(x, 10)
    assert chunks == [3, 3, 3, 1]
    chunks.clear()
    module(x, 10)  # gradients on: the multi-step form over all T
    assert chunks == [10]


def test_parameters_by_node():
    module = lower(every_op_graph())
    assert set(module.parameters_of("conv_shared")) == {"weight", "bias"}
    assert set(module.parameters_of("lif_zero")) == {"threshold", "decay"}
    assert module.parameters_of("avgpool") == {}
    named = dict(module.named_parameters_by_node())
    assert "cubalif.keep_u" in named and "fc.weight" in named
    assert {id(p) for p in named.values()} == {id(p) for p in module.parameters()}
    for p in module.parameters_of("conv0").values():  # freezing one layer leaves it without a gradient
        p.requires_grad_(False)
    result = module(torch.as_tensor(_dyadic_inputs(4)), 6)
    result.outputs[0][-1].sum().backward()
    assert module.parameters_of("conv0")["weight"].grad is None
    assert module.parameters_of("conv1")["weight"].grad is not None
    with pytest.raises(SimulationError, match="node 'nope' is not a lowered node.*lowered nodes: conv0"):
        module.parameters_of("nope")


def test_fan_outs_follow_the_weights():
    graph = every_op_graph()
    module = lower(graph)
    types = graph.types()
    for node in module.index:
        op = graph.op(node)
        if op.synaptic:
            expected = fan_outs(op, types[graph.inputs(node)[0]].shape)
            got = module.fan_outs_of(node)
            assert len(got) == len(expected), node
            for a, b in zip(expected, got):
                np.testing.assert_array_equal(a.ravel(), b.numpy(), err_msg=node)
    # An in-place change of the weights (as an optimizer step makes) changes the count: zeroed weights cost nothing.
    with torch.no_grad():
        module.parameters_of("conv_shared")["weight"][:, :3] = 0
        module.parameters_of("fc")["weight"][1] = 0
    changed = graph.clone()
    for node in ("conv_shared", "fc"):
        weight = module.parameters_of(node)["weight"].detach().numpy()
        changed.replace(node, graph.op(node).replace(weight=weight))
    x = _dyadic_inputs(6)
    with torch.no_grad():
        ours = module(torch.as_tensor(x), 8)
    theirs = reference.ReferenceSimulator(changed, 8).run_batch(x)
    np.testing.assert_array_equal(ours.synops.numpy(), theirs.synops)
    assert not np.array_equal(theirs.synops, reference.ReferenceSimulator(graph, 8).run_batch(x).synops)


def test_a_device_is_refused_by_backends_without_devices_and_cuda_without_cuda():
    graph = temporal_graph()
    with pytest.raises(SimulationError, match="backend 'reference' runs on the CPU only.*a device is for torch"):
        Simulator(graph, None, backend="reference", device="cpu")
    assert Simulator(graph, None, backend="torch", device="cpu").backend == "torch"
    if not torch.cuda.is_available():
        with pytest.raises(SimulationError, match="no CUDA device"):
            Simulator(graph, None, backend="torch", device="cuda")
