"""FS (few-spikes) populations on Loihi 2: graded spikes carrying ``d(t)``, a programmable neuron for ``T(t)`` and
``h(t)``, and the layer pipeline as the chip's schedule.

The float FS neuron (Stoeckl & Maass, Nature Machine Intelligence 3, 2021; :class:`~snncc.ir.neurons.FewSpike`)
receives its gate input ``x`` once and answers in ``K`` steps::

    v(1) = x;   z(t) = [v(t) >= T(t)];   v(t+1) = v(t) - h(t) z(t);   value = offset + sum_t d(t) z(t)

**Integers** (``loihi-quantize`` on an FS graph, :func:`quantize_few_spike`). Every layer's membrane is in units of
``1 / S`` with ``S = 2^16`` (:data:`MEMBRANE_SCALE`): ``T``, ``h`` and the bias become 24-bit integers ``round(S
T(t))``, ``round(S h(t))``, ``round(S b)`` (the binary code of ReLU, ``h = d = 2^-t`` and ``T = 2^-t -
2^-(K+1)``, is exact for ``K <= 15``), and the 24-bit state holds ``|x| < 128``, far above the normalized range
(saturation above it gives the same spikes: every bit fires). A spike at step ``t`` is a graded spike whose payload
is ``p(t) = round(R d(t))``, with ``R`` (:func:`payload_scale`) the largest power of two that keeps every payload in
``B = max(8, K)`` bits (:func:`payload_bits`): ``p(t) = 2^(K - t)`` for the binary code, exact. The scale of the
payload is folded into the next layer's weights: a weight ``W`` that reads payloads of scale ``R`` into a membrane
of scale ``S`` is ``W S / R`` membrane units per payload unit, stored as an 8-bit mantissa ``q`` and an exponent
``e`` (``q 2^(6 + e)``, the largest ``|q|`` near 254, :func:`fs_weight_exponent`), and the synapse computes, per
step, ``shift(p(t) sum_j q_ij z_j(t), e) << 6``, the chip's ``(sum q s) >> -e << 6`` with graded ``s`` (the
truncation of the shift costs less than ``2^(6 + e) / S`` per step: ``max|W| / (254 R)``, about ``10^-5`` of the
threshold here). The first layer reads the stored pixels (``R = 1``) as one graded event each. The offset (``-1``
for tanh, 0 for ReLU) is folded into the next layer's bias by ``loihi-fold``.

**The neuron** (a Loihi 2 microcode program; per neuron, the state in brackets; per population, a table of ``K``
entries shared by its neurons)::

    state:  acc [24 bits, saturating]  v [24 bits, saturating]  t [ceil(log2 K) bits, the step counter]
    table:  T(0..K-1), h(0..K-1)  [24 bits each]   p(0..K-1) [B bits, the payloads];   per neuron: bias [24 bits]
    every step:
        acc = sat(acc + a)                       a: this step's synaptic input (graded, << 6 as above)
        if t == 0:  v = sat(acc + bias);  acc = 0          (the window boundary: the gate input is complete)
        if v >= T(t):  v = sat(v - h(t));  send a graded spike with payload p(t)
        t = (t + 1) mod K

Operations: one saturating add for the input, at the boundary a second add and a clear, a compare, a conditional
subtract, the spike send with a payload from the table, and a counter increment modulo ``K``: two 24-bit state
registers and the counter per neuron, ``2 K`` 24-bit and ``K`` B-bit table entries per population, and the bias.
``acc`` collects the next input while ``v`` answers the current one, which is what lets the layers run as a
pipeline.

**Schedule.** A spike sent at chip step ``s`` is integrated at step ``s + 1`` (the mesh's one-step delay). The
host sends input ``i``'s pixels at step ``i K``; they reach the first layer at ``i K + 1``, its boundary. A layer
that fires during steps ``[F, F + K)`` delivers to the next during ``[F + 1, F + K]``, so the next layer's boundary
is ``F + K``: it takes the last arriving step into ``acc`` and latches at the same step. Every layer therefore has
its boundary at the steps ``s`` with ``s mod K = 1``: one phase for the whole chip (all counters start together,
``t = (s - 1) mod K``), one input every ``K`` steps, and input ``i``'s answer (the readout's integrated input) is
complete at the end of step ``i K + L K + 1`` for ``L`` FS layers. No synaptic delays are needed beyond the mesh's
own: a branch of a different depth would need ``K`` steps of delay per layer of difference (not lowered; the
emulator refuses such graphs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from snncc.errors import IRError, PassError
from snncc.ir import Graph, ops
from snncc.ir.neurons import NEURON_MODELS, FewSpike
from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi.fs_maxpool import LoihiFewSpikeMax, pool_few_spike_trains, quantize_gather

#: Membrane units per float unit of every FS layer (and of the readout): 2^16, leaving 7 bits above 1.0.
MEMBRANE_SCALE = float(1 << 16)
#: The largest state value of the 24-bit registers.
STATE_MAX = la.STATE_LIMIT - 1
_Q_MAX = la.SIGN_MODES["mixed"][1]


@dataclass(frozen=True)
class LoihiFewSpike(FewSpike):
    """The FS neuron as the Loihi 2 program stores it (module docstring): ``threshold`` ``T(t)`` and ``height``
    ``h(t)`` as 24-bit integers in membrane units, ``weight`` the graded payloads ``p(t)``, ``offset`` 0 (folded
    into the next layer's bias). The hw-level record of an FS population; its dynamics are FewSpike's."""

    kind = "LoihiFS"
    hw_integer_fields = ("threshold", "height", "weight")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.hw_integer_fields:
            values = np.asarray(getattr(self, name), np.float64)
            if np.any(values != np.round(values)) or np.abs(values).max() > STATE_MAX:
                raise IRError(f"LoihiFS: {name} must be 24-bit integers, got {getattr(self, name)}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        if self.offset != 0:
            raise IRError(f"LoihiFS: the offset is folded into the next layer's bias (0 on the chip), got "
                          f"{self.offset}")


NEURON_MODELS[LoihiFewSpike.kind] = LoihiFewSpike  # so that hw.snn files with FS layers load


def has_few_spike(graph: Graph) -> bool:
    """Whether ``graph`` has FS populations (and so takes this lowering)."""
    return any(isinstance(graph.op(n).neuron, FewSpike) for n in graph.find(ops.Population))


def payload_bits(steps: int) -> int:
    """Bits of a graded payload for an FS population of ``steps`` steps: ``max(8, K)`` (the binary code's
    ``2^(K - 1) .. 1`` exactly)."""
    return max(8, int(steps))


def payload_scale(weights: tuple[float, ...], bits: int) -> float:
    """The largest power of two ``R`` with every ``|round(R d(t))|`` below ``2^bits``."""
    largest = max(abs(float(d)) for d in weights)
    if largest == 0:
        return 1.0
    return float(2.0 ** math.floor(math.log2(((1 << bits) - 1) / largest)))


def fs_weight_exponent(w: np.ndarray) -> int:
    """The weight exponent in ``[-8, 7]`` at which the largest of membrane-unit weights ``w`` (per payload unit)
    is at most ``254 << 6`` and above half of it (8-bit mantissas)."""
    largest = float(np.abs(w).max())
    if largest == 0:
        return 0
    exp = math.ceil(math.log2(largest / (_Q_MAX * (1 << la.ACTIVATION_SHIFT))) - 1e-12)
    return int(min(la.WEIGHT_EXP_RANGE[1], max(la.WEIGHT_EXP_RANGE[0], exp)))


def spike_source(graph: Graph, node: str) -> str:
    """The population or input whose values reach ``node`` through views (Flatten, Reshape) only."""
    while graph.op(node).is_view:
        (node,) = graph.inputs(node)
    return node


def _to_state(values: np.ndarray, node: str, what: str) -> np.ndarray:
    ints = np.round(np.asarray(values, np.float64) * MEMBRANE_SCALE)
    if np.abs(ints).max(initial=0) > STATE_MAX:
        raise PassError(f"{node!r}: its {what} reaches {np.abs(values).max():.4g}, beyond the 24-bit state at "
                        f"the FS membrane scale 2^16 (|value| < 128)")
    return ints


def fold_few_spike_offsets(graph: Graph) -> bool:
    """Fold each FS population's ``offset`` (its output with no spike) into the bias of the synaptic layers that
    read it, and set it to 0: the chip sends nothing when no spike fires. Exact for dense layers and unpadded
    convolutions (every position reads every input); a padded convolution reads zeros at the border, so there the
    fold is refused."""
    changed = False
    for pop in graph.find(ops.Population):
        neuron = graph.op(pop).neuron
        if not isinstance(neuron, FewSpike) or neuron.offset == 0:
            continue
        for user in _synaptic_readers(graph, pop):
            op = graph.op(user)
            if isinstance(op, ops.Conv2d) and any(op.padding):
                raise PassError(f"{pop!r}: its FS offset {neuron.offset} cannot be folded into the padded "
                                f"convolution {user!r} (the border reads zeros, not the offset)")
            w = op.weight.astype(np.float64)
            add = neuron.offset * w.reshape(w.shape[0], -1).sum(axis=1)
            bias = add if op.bias is None else op.bias.astype(np.float64) + add
            graph.replace(user, op.replace(bias=bias.astype(np.float32)))
        graph.replace(pop, ops.Population(neuron=FewSpike(threshold=neuron.threshold, height=neuron.height,
                                                          weight=neuron.weight, offset=0.0)))
        changed = True
    return changed


def _synaptic_readers(graph: Graph, node: str) -> list[str]:
    readers = []
    for user, _ in graph.users(node):
        op = graph.op(user)
        if op.is_view:
            readers += _synaptic_readers(graph, user)
        elif isinstance(op, (ops.Conv2d, ops.Linear)) and op.input_gains is None:
            readers.append(user)
        else:
            raise PassError(f"{node!r}: FS spikes reach {op.kind} {user!r}; on Loihi they feed synaptic layers "
                            "(Conv2d, Linear) through views only")
    return readers


def quantize_few_spike(graph: Graph, variant: str) -> None:
    """Quantize a folded FS graph to the integers of the module docstring, in place; sets the hw level's
    ``graph.attrs["loihi"]`` (``coding: fs``, the membrane and payload scales, the steps)."""
    from snncc.ir.ops import HW

    if variant != "loihi2":
        raise PassError("FS populations need graded spikes, which Loihi 1 does not have; use --target loihi2 "
                        "(or --method rate for Loihi 1)")
    pool_few_spike_trains(graph)  # max pooling of the currents: a bit-serial max of the trains (fs_maxpool.py)
    payload_scales: dict[str, float] = {}
    steps = set()
    for pop in graph.find(ops.Population):
        neuron = graph.op(pop).neuron
        if isinstance(neuron, LoihiFewSpikeMax):  # its FS layer's payloads
            steps.add(neuron.steps)
            payload_scales[pop] = payload_scale(neuron.weight, payload_bits(neuron.steps))
            continue
        if not isinstance(neuron, FewSpike):
            raise PassError(f"{pop!r}: {neuron.kind} neurons in an FS graph; Loihi 2 lowers FS populations only "
                            "here (convert the whole graph with one method)")
        steps.add(neuron.steps)
        payload_scales[pop] = payload_scale(neuron.weight, payload_bits(neuron.steps))
    if len(steps) != 1:
        raise PassError(f"the FS populations use windows of {sorted(steps)} steps; the chip's schedule has one "
                        "phase, so every population needs the same K")
    membrane_scales = {}
    for node in graph.topological_order():
        op = graph.op(node)
        if not op.synaptic:
            continue
        if not isinstance(op, (ops.Conv2d, ops.Linear)) or op.input_gains is not None:
            raise PassError(f"{node!r}: {op.kind} has no Loihi form (run loihi-fold first; shared-weight layers "
                            "are not lowered)")
        if graph.meta[node].get("fs_max_gather"):
            (population, _), = graph.users(node)
            quantize_gather(graph, node, population, payload_scales[population])
            continue
        source = spike_source(graph, graph.inputs(node)[0])
        src_op = graph.op(source)
        if isinstance(src_op, ops.Input):
            read_scale = 1.0  # the stored pixels, one graded event each
        elif isinstance(src_op, ops.Population):
            read_scale = payload_scales[source]
        else:
            raise PassError(f"{node!r}: reads {src_op.kind} {source!r}; on Loihi a synaptic layer reads the input "
                            "or FS spikes through views")
        users = graph.users(node)
        population = users[0][0] if len(users) == 1 and isinstance(graph.op(users[0][0]), ops.Population) \
            else None
        if population is None and not all(isinstance(graph.op(u), ops.Readout) for u, _ in users):
            raise PassError(f"{node!r}: {op.kind} must feed one population (or the readout) on Loihi")
        w = op.weight.astype(np.float64) * (MEMBRANE_SCALE / read_scale)
        exp = fs_weight_exponent(w)
        q = la.quantize_weights(w, exp, "mixed").q
        bias = None if op.bias is None else _to_state(op.bias, node, "bias").astype(np.int32)
        fields = {}
        if isinstance(op, ops.Conv2d) and op.pad_value is not None:
            fields["pad_value"] = np.round(op.pad_value).astype(np.int32)
        graph.replace(node, op.replace(weight=q, bias=bias, **fields))
        graph.meta[node]["weight_exp"] = exp
        membrane_scales[node] = MEMBRANE_SCALE
        if population is not None:
            neuron = graph.op(population).neuron
            threshold = _to_state(neuron.threshold, population, "thresholds")
            height = _to_state(neuron.height, population, "heights")
            payload = np.round(np.asarray(neuron.weight, np.float64) * payload_scales[population])
            graph.replace(population, ops.Population(neuron=LoihiFewSpike(
                threshold=tuple(threshold), height=tuple(height), weight=tuple(payload), offset=0.0)))
    (source,) = graph.input_nodes()
    graph.replace(source, graph.op(source).replace(dtype="uint8"))
    graph.attrs["level"] = HW
    (k,) = steps
    graph.attrs["loihi"] = {"variant": variant, "coding": "fs", "steps": k, "membrane_scale": membrane_scales,
                            "payload_scale": payload_scales, "payload_bits": payload_bits(k),
                            "reset": "subtract h(t) (microcode)"}
