"""Dynamics of the temporal neuron models (FS and AMOS) in numpy: the specification the simulators and the fits share.

Both take the gate input ``x`` (any shape, float32), delivered once, and return the output value and the spikes of
every step. The arithmetic is float32 in a fixed order (subtractions in step order, the output summed in step order,
the offset added last), so the Cython kernels reproduce it bit for bit and the fit error a fit reports is the error
the simulator gives.
"""

from __future__ import annotations

import numpy as np

from snncc.errors import SimulationError
from snncc.ir.neurons import Amos, FewSpike, NeuronModel


def few_spike(neuron: FewSpike, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output value and spikes (K, *x.shape) uint8 of FS neurons with gate input ``x``.

    ``v(1) = x; z(t) = [v(t) >= T(t)]; v(t+1) = v(t) - h(t) z(t); out = offset + sum_t d(t) z(t)``.
    """
    f32 = np.float32
    v = np.array(x, dtype=f32, copy=True)
    out = np.zeros_like(v)
    spikes = np.empty((neuron.steps,) + v.shape, dtype=np.uint8)
    for t, (threshold, height, weight) in enumerate(zip(neuron.threshold, neuron.height, neuron.weight)):
        z = v >= f32(threshold)
        np.subtract(v, f32(height), out=v, where=z)
        np.add(out, f32(weight), out=out, where=z)
        spikes[t] = z
    if neuron.offset:
        out += f32(neuron.offset)
    return out, spikes


def amos(neuron: Amos, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output value and spikes (K, *x.shape) uint8 of AMOS units with gate input ``x``; row ``j`` holds neuron ``j``.

    ``u(j) = gain[j] x - sum_{i<j} w[j, i] z(i)`` (subtracted in order of ``i``); ``z(j) = [u(j) >= T(j)]``;
    ``out = offset + sum_j d(j) z(j)``. Neuron ``j`` decides at step ``j`` only, so it fires at most once.
    """
    f32 = np.float32
    x = np.asarray(x, dtype=f32)
    inhibition = neuron.inhibition_matrix()
    out = np.zeros_like(x)
    spikes = np.empty((neuron.steps,) + x.shape, dtype=np.uint8)
    for j in range(neuron.steps):
        u = x * f32(neuron.gain[j])
        for i in range(j):
            np.subtract(u, inhibition[j, i], out=u, where=spikes[i].astype(bool))
        z = u >= f32(neuron.threshold[j])
        np.add(out, f32(neuron.weight[j]), out=out, where=z)
        spikes[j] = z
    if neuron.offset:
        out += f32(neuron.offset)
    return out, spikes


DYNAMICS = {FewSpike: few_spike, Amos: amos}


def temporal_unit(neuron: NeuronModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on the neuron model: (value, spikes per step) of a temporal population."""
    try:
        dynamics = DYNAMICS[type(neuron)]
    except KeyError:
        raise SimulationError(f"neuron model {neuron.kind} is not a temporal (few-spike) model") from None
    return dynamics(neuron, x)
