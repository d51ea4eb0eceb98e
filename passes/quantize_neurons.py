"""``quantize-neurons``: FS and AMOS parameters as ``bits``-bit signed fixed-point numbers, for hardware.

Neuromorphic chips store thresholds, reset amounts and synaptic weights as small integers with a shared scale
(Loihi: 8-bit weights with a per-core exponent; SpiNNaker 2: fixed point). This pass rounds each group of parameters
that a chip would store in one format to the grid ``step * {-(2^(bits-1) - 1), ..., 2^(bits-1) - 1}``, where the
step is the smallest power of two with ``max |p| <= step (2^(bits-1) - 1)`` over the group (an integer mantissa with
a shared exponent, as chips store them), per population:

- FS: thresholds and heights (membrane units) share one grid; output weights ``d(t)`` and the offset share another.
- AMOS: thresholds and the inhibition matrix (membrane units) share one grid; gains one; output weights and offset
  one.

For the closed-form ReLU code (``d(t) = 2^-t``, thresholds ``2^-t - 2^-(K+1)``) ``bits >= K + 2`` keep every
parameter exact; fewer bits round the low-order steps, which is the accuracy cost the results report measures. The grid of every population is
recorded in ``graph.meta[node]["quantization"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from snncc.errors import PassError
from snncc.ir import SNN, Graph, ops
from snncc.ir.neurons import Amos, FewSpike
from snncc.passes.base import Pass, PassContext, register

# Parameter groups sharing one fixed-point grid, per neuron model.
GROUPS = {
    FewSpike: (("threshold", "height"), ("weight", "offset")),
    Amos: (("threshold", "inhibition"), ("gain",), ("weight", "offset")),
}


def quantize_group(values: dict[str, object], bits: int) -> tuple[dict[str, object], float]:
    """Round every field of a group to one symmetric grid of ``bits`` bits; returns the fields and the step."""
    flat = np.concatenate([np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values.values()])
    largest = float(np.abs(flat).max()) if flat.size else 0.0
    levels = 2 ** (bits - 1) - 1
    step = 2.0 ** np.ceil(np.log2(largest / levels)) if largest > 0 else 1.0
    rounded = {}
    for name, value in values.items():
        q = np.round(np.asarray(value, dtype=np.float64) / step) * step
        rounded[name] = float(q) if np.ndim(value) == 0 else tuple(float(v) for v in q)
    return rounded, step


@register
@dataclass(frozen=True)
class QuantizeNeurons(Pass):
    """FS/AMOS thresholds, heights, gains, inhibition and output weights on ``bits``-bit fixed-point grids."""

    name = "quantize-neurons"
    requires_level = SNN
    bits: int = 8

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 32:
            raise PassError(f"quantize-neurons: bits must be between 2 and 32, got {self.bits}")

    def run(self, graph: Graph, context: PassContext) -> bool:
        populations = [n for n in graph.find(ops.Population) if type(graph.op(n).neuron) in GROUPS]
        if not populations:
            raise PassError("quantize-neurons: the graph has no FS or AMOS populations "
                            "(run convert-fs or convert-amos first)")
        changed = False
        for node in populations:
            neuron = graph.op(node).neuron
            changes, steps = {}, {}
            for group in GROUPS[type(neuron)]:
                rounded, step = quantize_group({name: getattr(neuron, name) for name in group}, self.bits)
                changes.update(rounded)
                steps["+".join(group)] = step
            quantized = replace(neuron, **changes)
            changed |= quantized != neuron  # parameters already on the grid stay (a second run changes nothing)
            graph.replace(node, ops.Population(neuron=quantized))
            graph.meta.setdefault(node, {})["quantization"] = {"bits": self.bits, "steps": steps}
        graph.attrs["neuron_quantization"] = {"bits": self.bits}
        return changed
