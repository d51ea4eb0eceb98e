"""Fine-tuning a SEW-ResNet form: the gates of the connect functions stay fixed, everything else trains."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.finetune import FinetuneOptions, finetune  # noqa: E402
from snncc.finetune.trainer import freeze_logic_gates  # noqa: E402
from snncc.ir import LIF, ops  # noqa: E402
from snncc.passes import PassContext, run_pipeline  # noqa: E402
from snncc.runtime import run_analog  # noqa: E402
from snncc.runtime.dynamics import SURROGATES  # noqa: E402
from snncc.runtime.torch_lowering import lower  # noqa: E402
from tests.passes.test_residual import option_a_block  # noqa: E402


def _sew_iand(connect: str = "iand"):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (64, 1, 12, 12)).astype(np.float32)
    y = run_analog(option_a_block(), x)[0].argmax(axis=1).astype(np.int64)
    graph = run_pipeline(option_a_block(), f"canonicalize,normalize,convert-rate,sew{{connect={connect}}}",
                         PassContext(calibration=x))
    return graph, x, y


def _gates(graph) -> list[str]:
    return [n for n in graph.find(ops.Population)
            if isinstance(graph.op(n).neuron, LIF) and graph.op(n).neuron.tau_mem == 0]


def test_only_the_gates_parameters_are_frozen():
    graph, _, _ = _sew_iand()
    module = lower(graph)
    frozen = freeze_logic_gates(graph, module)
    assert frozen == _gates(graph) and len(frozen) == 1
    for node in graph.find(ops.Population):
        grads = {p.requires_grad for p in module.parameters_of(node).values()}
        assert grads == ({False} if node in frozen else {True}), node


def test_surrogate_training_of_a_sew_iand_block_keeps_its_gate_and_trains_the_rest():
    graph, x, y = _sew_iand()
    (gate,) = _gates(graph)
    options = FinetuneOptions(timesteps=8, epochs=2, lr=3e-3, batch_size=8, limit=48, val_limit=16)
    tuned = finetune(graph, (x, y), "surrogate", options)
    assert tuned.op(gate).neuron == graph.op(gate).neuron  # threshold 0.5, tau_mem 0: the IAND function
    assert not np.array_equal(tuned.op("conv3").weight, graph.op("conv3").weight)
    history = tuned.attrs["finetune"]["history"]
    assert history[1]["loss"] < history[0]["loss"]


#: connect -> the gate's input ``I`` on binary spikes a (branch), b (shortcut): its levels, and the derivative of
#: the logic function's piecewise-linear form ``clip(I - theta + 1/2, 0, 1)`` at each (AND: a b, IAND: (1 - a) b).
GATE_LEVELS = {"and": ([0.0, 1.0, 2.0], [0.0, 1.0, 1.0]), "iand": ([-1.0, 0.0, 1.0], [0.0, 1.0, 1.0])}


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("connect", sorted(GATE_LEVELS))
def test_a_gate_passes_the_gradient_of_its_logic_function_unattenuated(connect, surrogate):
    """Backward through a lowered AND/IAND gate is 1 on the two input levels next to its threshold and 0 beyond,
    whatever surrogate the rest of the network uses: a smooth surrogate (fast-sigmoid of width 0.5: 1/4 there)
    shrank the gradient at every gate, so that a six-block SEW IAND ResNet passed its early layers 1e-4 of it and
    did not learn. The forward pass stays the hard threshold."""
    graph, _, _ = _sew_iand(connect)
    (gate,) = _gates(graph)
    module = lower(graph, surrogate=surrogate).module_of(gate)
    levels, slopes = GATE_LEVELS[connect]
    shape = (4, 3) + tuple(graph.types()[gate].shape)  # (T, B, *shape), each level at every step and neuron
    steps = torch.tensor(levels).reshape(1, 3, *[1] * (len(shape) - 2)).expand(shape).clone().requires_grad_()
    spikes = module(steps)
    threshold = graph.op(gate).neuron.threshold
    assert torch.equal(spikes, (steps >= threshold).to(steps.dtype))
    spikes.sum().backward()
    expected = torch.tensor(slopes).reshape(1, 3, *[1] * (len(shape) - 2)).expand(shape)
    assert torch.equal(steps.grad, expected)
