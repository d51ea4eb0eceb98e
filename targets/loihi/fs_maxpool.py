"""FS max pooling on Loihi 2: the max of the currents as a bit-serial max of the FS spike trains, exact.

``convert-fs`` pools the currents: a max-pooling CNN becomes ``conv -> MaxPool2d -> FS``, the pooled neuron's
input ``max_i x_i`` over its window. The chip cannot take the max of synaptic sums (a neuron receives their sum),
but it can take the max of the FS trains, and two facts make that the same train:

1. **An FS train is monotone in its input.** For ``x <= x'`` the train of ``x'`` is lexicographically at least the
   train of ``x`` (first step first): while the two trains agree, both neurons subtract the same heights, so their
   membranes keep the order of ``x`` and ``x'`` (``v(t) = x - sum_{s<t} h(s) z(s)``); at the first step where they
   differ only ``z(t) = 0`` for ``x`` and ``1`` for ``x'`` is possible (``v <= v'`` against the same ``T(t)``).
   This holds for any thresholds and heights, in floats (rounding is monotone) and in the chip's saturating
   integers alike. So the pooled neuron's train ``FS(max_i x_i)`` is the lexicographic max of the window's trains
   ``FS(x_i)``, and its value ``offset + sum_t d(t) z(t)`` follows.
2. **The lexicographic max of trains that arrive step by step is computed online.** With ``C`` the window's
   inputs whose trains equal the max so far (all of them at the window's first step)::

       out(t) = OR_{i in C} z_i(t);        if out(t):  C = {i in C : z_i(t) = 1}

The lowering (:func:`pool_few_spike_trains`, run by ``loihi-quantize`` on a Loihi 2 FS graph) rewrites ``conv ->
MaxPool2d -> FS`` as

- ``conv -> FS`` at the convolution's resolution (one FS neuron per position of the windows: ``k_h k_w / s_h s_w``
  times the pooled neurons), then
- a **gather** synapse, a depthwise convolution with the pooling's kernel, stride and padding whose weight at
  window position ``j = k_w dy + dx`` is ``2^j`` (8-bit mantissas, exponent 0: windows of at most 8 inputs), so that
  at step ``t`` the synaptic input of a pooled neuron is ``(p(t) m(t)) << 6`` with ``m(t) = sum_j 2^j z_j(t)`` the
  bitmask of the window's inputs that spiked (``p(t)``, the FS payload, is the same for every neuron of a layer);
- a **max neuron** (:class:`LoihiFewSpikeMax`, a Loihi 2 microcode program; per neuron the state ``C``, ``n``
  bits for a window of ``n`` inputs, and the step counter; per population the payload table)::

      every step:   m = (a >> 6) / p(t)                      a: the synaptic input (exact: a multiple of p(t) << 6)
                    if t == 0:  C = 2^n - 1                  (the window boundary: every input a candidate)
                    if m & C:   C = C & m;  send a graded spike with payload p(t)
                    t = (t + 1) mod K

  whose train is the pooled FS neuron's, read by the next layer as before (same payloads).

Padded window positions have no synapse: their bit never sets, which is an all-zero train, and an all-zero train
never changes a lexicographic max (the max-pooling padding of ``-inf``). Padding is otherwise free.

**Timing.** The max neuron integrates at step ``s + 1`` what its FS layer sent at ``s`` and sends at once, so each
pooling adds one chip step: the layers after ``P`` poolings latch one step later per pooling (their step counters
start ``P`` steps later, a per-population phase), and an input's answer is read ``L K + P + 1`` steps after it
enters for ``L`` FS layers. The emulator keeps the float simulator's clock (the pooled population's window is its
FS layer's), as for the rest of the FS graph.

Cost: the FS neurons before the pooling (4x the pooled neurons for 2x2 windows) and ``n`` synapses per max neuron;
no approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from snncc.errors import IRError, PassError
from snncc.ir import Graph, ops
from snncc.ir.neurons import NEURON_MODELS, FewSpike, NeuronModel
from snncc.targets.loihi import arithmetic as la

#: The largest window: one bit per input, weights ``2^j`` within the 8-bit mantissa (at most 254).
MAX_WINDOW = 8


@dataclass(frozen=True)
class LoihiFewSpikeMax(NeuronModel):
    """The max neuron of an FS max pooling (module docstring): ``weight`` the payload ``p(t)`` of each of the ``K``
    steps (its FS layer's: the float ``d(t)`` before ``loihi-quantize``, the graded integers after), ``inputs``
    the window's size ``n`` (bits of its state)."""

    kind = "LoihiFSMax"
    hw_integer_fields: ClassVar[tuple[str, ...]] = ("weight",)
    emits_few_spike_code: ClassVar[bool] = True
    weight: tuple[float, ...] = (0.5,)
    inputs: int = 4

    def __post_init__(self) -> None:
        weights = tuple(float(w) for w in np.asarray(self.weight, np.float64).reshape(-1))
        if not weights or not all(np.isfinite(weights)):
            raise IRError(f"LoihiFSMax: weight must be K finite payloads, got {self.weight}")
        # Integers stay integers (the hw level's payloads); d(t) before loihi-quantize stays float.
        object.__setattr__(self, "weight", tuple(int(w) if w.is_integer() else w for w in weights))
        if not 1 <= int(self.inputs) <= MAX_WINDOW:
            raise IRError(f"LoihiFSMax: a window of 1..{MAX_WINDOW} inputs, got {self.inputs}")
        object.__setattr__(self, "inputs", int(self.inputs))

    @property
    def steps(self) -> int:
        return len(self.weight)


NEURON_MODELS[LoihiFewSpikeMax.kind] = LoihiFewSpikeMax  # so that hw.snn files with FS max poolings load


def pooled_population(graph: Graph, pool: str) -> tuple[str, str] | str:
    """``(conv, population)`` of an FS max pooling ``conv -> MaxPool2d -> FS population`` that the lowering takes,
    or why not (one sentence naming the limit)."""
    op = graph.op(pool)
    (src,) = graph.inputs(pool)
    users = graph.users(pool)
    if not (len(users) == 1 and isinstance(graph.op(users[0][0]), ops.Population)
            and isinstance(graph.op(users[0][0]).neuron, FewSpike)):
        return "the max pooling of the currents must feed one FS population"
    if not (isinstance(graph.op(src), ops.Conv2d) and len(graph.users(src)) == 1 and src not in graph.outputs):
        return "the max pooling must pool the currents of one convolution that feeds nothing else"
    window = op.kernel[0] * op.kernel[1]
    if window > MAX_WINDOW:
        return (f"a {op.kernel[0]}x{op.kernel[1]} window has {window} inputs; the bit-serial max takes at most "
                f"{MAX_WINDOW} (one bit each, weights 2^j in 8-bit mantissas)")
    return src, users[0][0]


def gather_weight(channels: int, kernel: tuple[int, int]) -> np.ndarray:
    """The gather synapse's weights (channels, 1, k_h, k_w): ``2^j`` at window position ``j = k_w dy + dx``."""
    bits = (1 << np.arange(kernel[0] * kernel[1], dtype=np.int64)).reshape(kernel)
    return np.broadcast_to(bits, (channels, 1) + tuple(kernel)).astype(np.int16)


def pool_few_spike_trains(graph: Graph) -> bool:
    """Rewrite every ``conv -> MaxPool2d -> FS`` of a (folded, float) FS graph as ``conv -> FS -> gather -> max
    neuron`` (module docstring), in place; the pooled population keeps its node id. Refuses what it cannot take,
    naming the node, the limit and the remedy."""
    changed = False
    for pool in graph.find(ops.MaxPool2d):
        found = pooled_population(graph, pool)
        if isinstance(found, str):
            raise PassError(f"{pool!r}: {found}; pool 2x2 between a convolution and its FS neurons, or use an "
                            "average-pooling model")
        conv, pop = found
        op = graph.op(pool)
        neuron = graph.op(pop).neuron
        channels = graph.types()[pool].shape[0]
        unpooled = graph.add(ops.Population(neuron=neuron), [conv], name=f"{pop}.unpooled")
        gather = graph.add(ops.Conv2d(weight=gather_weight(channels, op.kernel).astype(np.float32), groups=channels,
                                      stride=op.stride, padding=op.padding),
                           [unpooled], name=f"{pool}.gather", fs_max_gather=True)
        graph.set_inputs(pop, [gather])
        graph.replace(pop, ops.Population(neuron=LoihiFewSpikeMax(weight=neuron.weight,
                                                                  inputs=op.kernel[0] * op.kernel[1])))
        graph.remove(pool)
        changed = True
    return changed


def quantize_gather(graph: Graph, node: str, population: str, payload_scale: float) -> None:
    """The gather synapse ``node`` at the hw level (integer weights ``2^j``, exponent 0, no bias) and its max
    neuron's payloads ``round(R d(t))``, which must all be non-zero (the neuron divides its input by them)."""
    op = graph.op(node)
    graph.replace(node, op.replace(weight=np.rint(op.weight).astype(np.int16), bias=None))
    graph.meta[node]["weight_exp"] = 0
    neuron = graph.op(population).neuron
    payload = np.round(np.asarray(neuron.weight, np.float64) * payload_scale)
    if np.any(payload == 0):
        raise PassError(f"{population!r}: an FS step's payload rounds to 0 (d(t) = {neuron.weight}); the max "
                        "neuron reads which inputs spiked from the payload, so every step needs one: use an "
                        "average-pooling model")
    graph.replace(population, ops.Population(neuron=LoihiFewSpikeMax(weight=tuple(payload), inputs=neuron.inputs)))


def masks(a: np.ndarray, payloads: np.ndarray) -> np.ndarray:
    """The max neuron's ``m = (a >> 6) / p(t)`` per step from its synaptic inputs ``a`` (K, ...) int64."""
    shape = (len(payloads),) + (1,) * (a.ndim - 1)
    return (a >> la.ACTIVATION_SHIFT) // payloads.astype(np.int64).reshape(shape)


def max_trains(m: np.ndarray, inputs: int) -> np.ndarray:
    """The max neuron's spikes (K, ...) uint8 from its bitmasks ``m`` (K, ...) int64: the online lexicographic max
    of the window's trains (module docstring)."""
    candidates = np.full(m.shape[1:], (1 << inputs) - 1, np.int64)
    trains = np.zeros(m.shape, np.uint8)
    for t in range(len(m)):
        hit = m[t] & candidates
        fired = hit != 0
        candidates = np.where(fired, hit, candidates)
        trains[t] = fired
    return trains


__all__ = ["MAX_WINDOW", "LoihiFewSpikeMax", "gather_weight", "masks", "max_trains", "pool_few_spike_trains",
           "pooled_population", "quantize_gather"]
