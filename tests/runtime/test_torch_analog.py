"""The analog (ANN) mode of the torch lowering, ``LoweredGraph.forward_analog``: the ANN the conversion assumed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.errors import SimulationError  # noqa: E402
from snncc.ir import ANN, IF, LIF, Graph, ops  # noqa: E402
from snncc.passes.base import PassContext, run_pipeline  # noqa: E402
from snncc.runtime import run_analog  # noqa: E402
from snncc.runtime.torch_lowering import lower  # noqa: E402
from tests.conftest import small_cnn  # noqa: E402


def converted_cnn() -> tuple[Graph, np.ndarray]:
    """The conftest CNN, normalized on its own inputs and converted to IF neurons; and some inputs."""
    x = np.random.default_rng(1).uniform(0, 1, (64, 1, 12, 12)).astype(np.float32)
    graph = run_pipeline(small_cnn(), "canonicalize,normalize,convert-rate", PassContext(calibration=x))
    return graph, x


def assumed_ann(snn: Graph) -> Graph:
    """The SNN with every IF population written as the ANN op it stands for, ``Affine(1 / theta)`` then
    ``Clip(0, 1)``; spiking max pooling as MaxPool2d; the readout as Identity."""
    ann = snn.clone()
    for node in ann.topological_order():
        op = ann.op(node)
        if isinstance(op, ops.Population):
            ann.replace(node, ops.Clip(min=0.0, max=1.0))
            (src,) = ann.inputs(node)
            scale = np.float32(1.0) / np.asarray(op.neuron.threshold, np.float32)
            scale = scale.reshape((-1,) + (1,) * (len(ann.types()[src].shape) - 1)) if scale.ndim else scale
            fix = ann.add(ops.Affine(scale=scale, shift=np.zeros(())), [src], name=f"{node}.threshold")
            ann.set_inputs(node, [fix])
        elif isinstance(op, ops.SpikingMaxPool2d):
            ann.replace(node, ops.MaxPool2d(kernel=op.kernel, stride=op.stride, padding=op.padding))
        elif isinstance(op, ops.Readout):
            ann.replace(node, ops.Identity())
    ann.attrs["level"] = ANN
    return ann


def test_analog_mode_is_the_clipped_relu_network_the_conversion_assumed():
    graph, x = converted_cnn()
    (expected,) = run_analog(assumed_ann(graph), x)
    result = lower(graph).forward_analog(x)
    np.testing.assert_allclose(result.outputs[0].detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert result.values == {}


def test_analog_mode_divides_by_per_channel_thresholds_and_records_values():
    graph, x = converted_cnn()
    node = graph.find(ops.Population)[0]
    op = graph.op(node)
    graph.replace(node, op.replace(neuron=IF(threshold=(0.5, 1.0, 2.0, 0.75))))
    (expected,) = run_analog(assumed_ann(graph), x)
    result = lower(graph).forward_analog(x, record=(node,))
    np.testing.assert_allclose(result.outputs[0].detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    rates = result.values[node].detach().numpy()
    assert rates.shape == (64, 4, 12, 12) and rates.min() == 0.0 and rates.max() == 1.0


def test_analog_mode_shares_the_spiking_modules_parameters():
    graph, x = converted_cnn()
    module = lower(graph)
    module.forward_analog(x).outputs[0].sum().backward()
    assert all(p.grad is not None for name, p in module.named_parameters() if name.endswith("weight"))


def test_analog_mode_refuses_a_neuron_without_rate_function():
    graph, x = converted_cnn()
    node = graph.find(ops.Population)[0]
    graph.replace(node, graph.op(node).replace(neuron=LIF(threshold=1.0, tau_mem=4.0)))
    with pytest.raises(SimulationError, match=f"node '{node}': LIF populations have no rate function"):
        lower(graph).forward_analog(x)
