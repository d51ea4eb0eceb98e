"""Writing a trained torch lowering back into the IR (LoweredGraph.to_graph, each module's trained_op)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.errors import SimulationError  # noqa: E402
from snncc.ir import IF, LIF, SNN, Graph, ops  # noqa: E402
from snncc.runtime import reference  # noqa: E402
from snncc.runtime.torch_lowering import lower  # noqa: E402
from tests.runtime.test_torch_lowering import _dyadic_inputs, every_op_graph  # noqa: E402

# Trained values chosen as multiples of 1/16 (and dyadic decays), so that every float32 sum stays exact in any order
# and the reference simulator must agree with torch bit for bit.
DECAYS = {"decay": 0.75, "keep_u": 0.625, "keep_v": 0.875}


def _perturb(module: torch.nn.Module, seed: int = 5) -> None:
    """Move every trainable parameter as training would: weights, biases and thresholds by multiples of 1/16,
    decays to other values in [0, 1]."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            field = name.rsplit(".", 1)[-1]
            if field in DECAYS:
                parameter.fill_(DECAYS[field])
                continue
            step = torch.as_tensor(rng.integers(-2, 3, tuple(parameter.shape)) / 16, dtype=torch.float32)
            if field == "threshold":
                step = step.abs() + 0.0625  # stays positive, and every threshold moves
            parameter.add_(step)


def test_to_graph_writes_every_trained_parameter_back():
    graph = every_op_graph()
    module = lower(graph)
    _perturb(module)
    trained = module.to_graph()
    x = torch.as_tensor(_dyadic_inputs(8))
    with torch.no_grad():
        first, again = module(x, 10), lower(trained)(x, 10)
    for a, b in zip(first.outputs, again.outputs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name in first.spikes:
        torch.testing.assert_close(first.spikes[name], again.spikes[name], rtol=0, atol=0)
    # the IR changed where the parameters did: per-channel thresholds stay per channel, v_init stays the fraction
    neuron = trained.op("if_subtract").neuron
    assert isinstance(neuron.threshold, tuple) and len(neuron.threshold) == 4
    assert neuron.threshold != graph.op("if_subtract").neuron.threshold and neuron.v_init == 0.5
    assert trained.op("lif_zero").neuron.beta == pytest.approx(0.75, abs=1e-15)
    cuba = trained.op("cubalif").neuron
    assert (cuba.current_decay, cuba.voltage_decay) == (0.375, 0.125)
    assert not np.array_equal(trained.op("conv0").weight, graph.op("conv0").weight)
    assert trained.op("conv0").weight.dtype == np.float32
    np.testing.assert_array_equal(trained.op("conv_shared").input_gains[1], graph.op("conv_shared").input_gains[1])
    assert trained.attrs == graph.attrs and trained.outputs == graph.outputs


def test_the_reference_on_the_written_back_graph_equals_the_trained_module():
    """The reference simulates the written-back graph; its spikes and readout are the trained module's, bit for
    bit. This also checks that the initial membrane followed the trained thresholds (v_init * threshold)."""
    module = lower(every_op_graph())
    _perturb(module)
    x = _dyadic_inputs(16)
    ref = reference.ReferenceSimulator(module.to_graph(), 12).run_batch(x)
    with torch.no_grad():
        low = module(torch.as_tensor(x), 12)
    assert all(s.sum() > 0 for s in ref.spikes.values())
    for name in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[name], low.spikes[name].numpy(), err_msg=name)
    np.testing.assert_array_equal(ref.outputs[0], low.outputs[0].numpy())


def test_the_initial_membrane_follows_a_trained_threshold():
    """IF with v_init = 0.5, threshold trained from 1 to 2, a current of 1.25: the initial membrane is 0.5 * 2,
    so v(1) = 2.25 fires at the first step; a stale initial membrane of 0.5 * 1 would give 1.75, no spike."""
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1,)), name="x")
    p = g.add(ops.Population(neuron=IF(threshold=1.0, v_init=0.5)), [x], name="if")
    g.outputs = [g.add(ops.Readout(), [p], name="readout")]
    module = lower(g)
    with torch.no_grad():
        module.layers[module.index["if"]].threshold.fill_(2.0)
        first_step = module(torch.tensor([[1.25]]), 1).spikes["if"]
    assert first_step.item() == 1.0
    assert module.to_graph().op("if").neuron == IF(threshold=2.0, v_init=0.5)


def test_a_decay_outside_the_unit_interval_is_refused_naming_the_node():
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(3,)), name="x")
    p = g.add(ops.Population(neuron=LIF(tau_mem=4.0)), [x], name="leaky")
    g.outputs = [g.add(ops.Readout(), [p], name="readout")]
    module = lower(g)
    with torch.no_grad():
        module.layers[module.index["leaky"]].decay.fill_(1.5)
    with pytest.raises(SimulationError, match=r"node 'leaky'.*outside \[0, 1\]"):
        module.to_graph()
