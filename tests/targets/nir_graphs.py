"""Small SNN-level graphs built directly (no ONNX) for the NIR tests: the layer kinds of LeNet-5 with average
pooling, with random weights scaled so that every population spikes."""

from __future__ import annotations

import numpy as np

from snncc.ir import IF, LIF, SNN, CubaLIF, Graph, ops


def small_cnn(neuron=None, pad_value: float | None = None, groups: int = 1, seed: int = 0) -> Graph:
    """Input [2,8,8] -> Conv2d 3x3 (pad 1) -> population -> AvgPool 2x2 -> Conv2d 3x3 -> population -> Flatten
    -> Linear -> population -> Linear -> Readout."""
    rng = np.random.default_rng(seed)
    neuron = neuron or IF(threshold=1.0, reset="zero", v_init=0.0)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2, 8, 8)), name="input")
    c1 = g.add(ops.Conv2d(weight=rng.normal(0, 0.6, (4, 2 // groups, 3, 3)), bias=rng.normal(0.1, 0.1, 4),
                          padding=(1, 1, 1, 1), groups=groups,
                          pad_value=None if pad_value is None else np.full(2, pad_value)), [x], name="conv1")
    p1 = g.add(ops.Population(neuron=neuron), [c1], name="spike1")
    a1 = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2), count_include_pad=True), [p1], name="pool1")
    c2 = g.add(ops.Conv2d(weight=rng.normal(0, 0.8, (6, 4, 3, 3)), bias=rng.normal(0.1, 0.05, 6)), [a1],
               name="conv2")
    p2 = g.add(ops.Population(neuron=neuron), [c2], name="spike2")
    f = g.add(ops.Flatten(), [p2], name="flatten")
    l1 = g.add(ops.Linear(weight=rng.normal(0, 0.5, (12, 24)), bias=rng.normal(0.1, 0.05, 12)), [f], name="fc1")
    p3 = g.add(ops.Population(neuron=neuron), [l1], name="spike3")
    l2 = g.add(ops.Linear(weight=rng.normal(0, 0.5, (5, 12)), bias=np.zeros(5)), [p3], name="fc2")
    g.outputs = [g.add(ops.Readout(), [l2], name="readout")]
    return g


def small_inputs(n: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 2, 8, 8)).astype(np.float32)


LIF_NEURON = LIF(threshold=0.8, tau_mem=6.0, reset="zero", v_init=0.0)
CUBA_NEURON = CubaLIF(threshold=0.9, current_decay=0.5, voltage_decay=0.2, reset="zero", dt=1e-4)
