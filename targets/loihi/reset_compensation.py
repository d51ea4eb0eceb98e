"""A measured compensation for Loihi 1's reset to zero: per-layer thresholds calibrated on training images.

The float SNN resets by subtraction, ``v -= theta``, and keeps the charge above the threshold; Loihi 1's CUBA
neuron resets to zero and drops it, so each spike loses on average about half a step's input and a layer fires
less than the float layer (LeNet-5 / MNIST: 0.44 points). A neuron with a constant input ``I`` per step fires at
``I / theta`` with the subtraction and at ``1 / ceil(theta / I)`` with the reset to zero; a lower threshold
``f theta`` (``f < 1``) moves the second towards the first for the inputs the layer actually receives.

:func:`calibrate_reset_to_zero` chooses ``f`` per population, in topological order (each layer sees the
compensated layers before it), by bisection on ``[0.5, 1]`` so that the layer's total spike count in the Loihi 1
emulator matches the float SNN's on the calibration images (training images, never the test set). The factors go
into ``graph.attrs["loihi_reset_compensation"]`` (population -> f), which ``loihi-quantize{variant=loihi1}`` reads:
the layer's stored threshold becomes ``vth = floor((f S - 1) / 64)`` for its membrane scale ``S`` (weights and
biases unchanged). It costs nothing on the chip (the same neurons, synapses and registers); the bundle's manifest
lists the factors.
"""

from __future__ import annotations

import numpy as np

from snncc.ir import Graph, ops
from snncc.ir.neurons import IF

ATTR = "loihi_reset_compensation"


def _emulated_spikes(graph: Graph, factors: dict[str, float], images: np.ndarray, timesteps: int) -> dict[str, float]:
    from snncc.passes import run_pipeline
    from snncc.runtime import Simulator
    from snncc.targets.loihi.legalize import LoihiFold, LoihiQuantize

    g = graph.clone()
    g.attrs[ATTR] = dict(factors)
    hw = run_pipeline(g, [LoihiFold(), LoihiQuantize(variant="loihi1")])
    result = Simulator(hw, timesteps, backend="loihi1").run(images)
    return {p: float(s[:timesteps].sum()) for p, s in result.spikes.items()}


def calibrate_reset_to_zero(graph: Graph, images: np.ndarray, timesteps: int, iterations: int = 7,
                            lowest: float = 0.5) -> dict[str, float]:
    """Per-population threshold factors for Loihi 1 (module docstring), set in ``graph.attrs`` and returned.
    ``images``: training images as stored (uint8 pixels)."""
    from snncc.runtime import Simulator

    reference = Simulator(graph, timesteps).run(images)
    populations = [n for n in graph.topological_order()
                   if isinstance(graph.op(n), ops.Population) and isinstance(graph.op(n).neuron, IF)]
    factors: dict[str, float] = {}
    for pop in populations:
        target = float(reference.spikes[pop][:timesteps].sum())
        if _emulated_spikes(graph, {**factors, pop: 1.0}, images, timesteps)[pop] >= target:
            factors[pop] = 1.0
            continue
        lo, hi = lowest, 1.0  # fewer spikes than the float layer at hi; a lower factor fires more
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if _emulated_spikes(graph, {**factors, pop: mid}, images, timesteps)[pop] < target:
                hi = mid
            else:
                lo = mid
        factors[pop] = round((lo + hi) / 2, 6)
    graph.attrs[ATTR] = factors
    return factors
