"""Loihi legalization: passes that take a rate-coded snn-level graph to the hw level of Loihi 1 or Loihi 2.

``loihi-fold`` (snn -> snn, float):

- **The input scaling into the first layer.** The chip receives the data as stored (uint8 pixels): ``x' = (x *
  scale - mean[c]) / std[c]`` becomes part of the first synaptic layers' weights and biases (``W' = W scale /
  std``, ``b' = b - sum W mean / std``). A padded first convolution pads the model input with ``pad_value`` (the
  value that normalizes to the trained padding); in stored units that is ``(pad_value std + mean) / scale``, which
  the hw level rounds to the nearest integer (33.33 -> 33 for MNIST): the only inexact step of the fold, and only
  at the image border.
- **Per-channel thresholds into the weights** (an IF neuron is invariant under scaling its input, threshold and
  membrane together), so every population has threshold 1.
- **Spiking max pooling into an OR gate.** The chip has no max over spike counts. Each pooling window becomes a
  neuron that fires at a step when any neuron of its window fired at that step (a depthwise convolution of ones
  into a memoryless neuron of threshold one spike): the max of binary spike trains at each step. Its count is at
  least the max count of the window (and at most the sum): an approximation whose cost ``snncc verify`` measures.

``loihi-gates`` (snn -> snn, float): the spiking max pooling into OR gates alone (the one inexact step of
``loihi-fold``), and ``loihi-reset{variant=loihi1}`` (snn -> snn, float): the reset the chip's neurons run. Loihi 1
resets to zero (``loihi-quantize{variant=loihi1}`` makes every neuron do so), so its IF populations become
``reset="zero"``; Loihi 2 runs the reset by subtraction, and the pass changes nothing there. Together they are the
target's float form (``Target.float_pipeline``): the float SNN that computes what the chip will, which ``snncc
finetune --target`` trains. The exact folds (input scaling, thresholds, average pooling) are left to ``emit``:
they change only how the same function is parametrized, and fine-tuning's learning rates are in the converted
graph's units (Adam moves every parameter by about ``lr`` a step, and the folded first layer's weights are
``255 std`` times smaller). ``loihi-fold`` on the float form recognises the OR gates and folds the rest.

``loihi-quantize{variant=loihi2}`` (snn -> hw): every synaptic layer gets a membrane scale ``S`` (membrane units
per float unit) chosen so that its largest weight is the largest 8-bit stored weight (254 in the mixed sign mode,
weight exponent 0, the layout netx stores) unless the largest bias would overflow its mantissa, in which case the
bias sets ``S`` and a negative weight exponent keeps the weights' 8 bits (the first layer, which carries the
input's mean); the weights become stored values ``q`` (int16, even, [-256, 254]) with ``q * 2^(6 + e) = round(W *
S)``, the biases multiples of ``2^6`` (netx's bias exponent) with 13-bit mantissas, the
neurons :class:`~snncc.ir.neurons.CubaLIF` records with ``threshold = (vth << 6) + 1`` near ``S``, a current that
holds only the step's input (``current_decay = 4096``, ``du = 4095``), a voltage that integrates (``dv = 0``) and
``initial_voltage = round(v_init * threshold)``. The reset: Loihi 1 resets to zero (the bundle uses that; its cost
against the reset by subtraction of the float SNN is measured by ``verify``); Loihi 2's programmable neurons run
the reset by subtraction (Orchard et al., "Efficient neuromorphic signal processing with Loihi 2", IEEE SiPS
2021), which the loihi2 variant uses. The weight exponents are stored per node in ``graph.meta[node]
["weight_exp"]`` and the scales in ``graph.attrs["loihi"]``.

``loihi-partition{variant=loihi2}`` (hw -> hw): splits every population that exceeds a core (compartments per
core, synaptic memory per core at 8 bits a synapse) into blocks of whole output channels, or of output rows of one
channel when a channel alone is too large, each block a synaptic node and a population of its own, joined by
Concat; then places the blocks on cores with :func:`snncc.targets.partition.place`: first-fit in topological
order, improved by moves and swaps of blocks between cores that lower the number of inter-core routes (neurons whose
spikes must reach another core), chips in order of cores. Both route counts, first-fit's and the placement's, are
recorded in ``graph.attrs["loihi"]["inter_core_routes"]``. Synaptic nodes and readouts are placed with their
neurons; rearrangements (views, slices, concatenations) are routing and stay unplaced.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from snncc.data import InputScaling
from snncc.errors import PassError
from snncc.ir import Graph, ops
from snncc.ir.neurons import IF, CubaLIF
from snncc.ir.ops import HW, SNN
from snncc.ir.placement import Placement
from snncc.passes.base import Pass, PassContext, register
from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi.avgpool import fold_average_pools
from snncc.targets.loihi.constraints import CONSTRAINTS
from snncc.targets.loihi.fewspike import fold_few_spike_offsets, has_few_spike, quantize_few_spike
from snncc.targets.partition import CoreLimits, Unit, cut, first_fit, place, routes

VARIANTS = ("loihi1", "loihi2")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise PassError(f"unknown Loihi variant {variant!r}; choose one of {', '.join(VARIANTS)}")


# ----------------------------------------------------------------------------------------------------------------
# loihi-fold
# ----------------------------------------------------------------------------------------------------------------

def _fold_input_scaling(graph: Graph) -> bool:
    scaling = InputScaling.from_json(graph.attrs.get("input_scaling", {}))
    if scaling == InputScaling():
        return False
    (source,) = graph.input_nodes()
    channels = graph.op(source).shape[0]
    mean = np.broadcast_to(np.asarray(scaling.mean, np.float64), (channels,))
    std = np.broadcast_to(np.asarray(scaling.std, np.float64), (channels,))
    gain = scaling.scale / std  # x' = x * gain - mean / std, per channel
    offset = -mean / std
    for node, _ in graph.users(source):
        op = graph.op(node)
        if not isinstance(op, (ops.Conv2d, ops.Linear)) or op.input_gains is not None:
            raise PassError(f"{node!r}: the input feeds {op.kind}; only a Conv2d or Linear can absorb the input "
                            "scaling on the chip")
        w = op.weight.astype(np.float64)
        bias = np.zeros(w.shape[0]) if op.bias is None else op.bias.astype(np.float64)
        if isinstance(op, ops.Conv2d):
            per_in = np.arange(channels).reshape(op.groups, -1)  # the channel of each input slot of each group
            g = gain[per_in]  # (groups, in_per_group)
            o = offset[per_in]
            groups_of_out = np.arange(w.shape[0]) // (w.shape[0] // op.groups)
            scale_in = g[groups_of_out][:, :, None, None]
            bias = bias + (w * o[groups_of_out][:, :, None, None]).sum(axis=(1, 2, 3))
            pad = np.zeros(channels) if op.pad_value is None else op.pad_value.astype(np.float64)
            stored_pad = (pad - offset) / gain  # the stored value that scales to the model's padding
            graph.replace(node, op.replace(weight=(w * scale_in).astype(np.float32),
                                           bias=bias.astype(np.float32),
                                           pad_value=stored_pad.astype(np.float32) if any(op.padding) else None))
        else:
            per_feature_gain = np.repeat(gain, w.shape[1] // channels)
            per_feature_offset = np.repeat(offset, w.shape[1] // channels)
            graph.replace(node, op.replace(weight=(w * per_feature_gain).astype(np.float32),
                                           bias=(bias + w @ per_feature_offset).astype(np.float32)))
    graph.attrs["folded_input_scaling"] = scaling.to_json()
    graph.attrs["input_scaling"] = InputScaling().to_json()
    return True


def _fold_thresholds(graph: Graph) -> bool:
    """Divide each channel's weights and bias by its threshold, so the population's threshold is 1."""
    changed = False
    for node in graph.find(ops.Population):
        neuron = graph.op(node).neuron
        if not isinstance(neuron, IF) or neuron.threshold == 1.0:
            continue
        (src,) = graph.inputs(node)
        op = graph.op(src)
        if not isinstance(op, (ops.Conv2d, ops.Linear)) or op.input_gains is not None or len(graph.users(src)) != 1:
            raise PassError(f"{node!r}: threshold {neuron.threshold} is not 1 and its input {src!r} is not a "
                            "synaptic layer of its own that could absorb it")
        t = np.asarray(neuron.threshold, np.float64).reshape(-1)
        t = np.broadcast_to(t, (op.weight.shape[0],))
        shape = (-1,) + (1,) * (op.weight.ndim - 1)
        bias = None if op.bias is None else (op.bias / t).astype(np.float32)
        graph.replace(src, op.replace(weight=(op.weight / t.reshape(shape)).astype(np.float32), bias=bias))
        graph.replace(node, ops.Population(neuron=IF(threshold=1.0, reset=neuron.reset, v_init=neuron.v_init,
                                                     signed=neuron.signed)))
        changed = True
    return changed


def _max_pools_to_or_gates(graph: Graph) -> bool:
    changed = False
    types = graph.types()
    for node in graph.find(ops.SpikingMaxPool2d):
        op = graph.op(node)
        channels = types[graph.inputs(node)[0]].shape[0]
        kh, kw = op.kernel
        gather = ops.Conv2d(weight=np.ones((channels, 1, kh, kw), np.float32), stride=op.stride,
                            padding=op.padding, groups=channels)
        (src,) = graph.inputs(node)
        graph.replace(node, gather)
        graph.meta[node]["or_gate_of"] = "SpikingMaxPool2d"
        # A memoryless neuron (LIF with tau 0: v = I) that fires when at least one spike arrived.
        from snncc.ir.neurons import LIF

        gate = graph.insert_after(node, ops.Population(neuron=LIF(threshold=0.5, tau_mem=0.0, reset="zero")),
                                  name=f"{node}.or")
        graph.meta[gate]["or_gate"] = True
        changed = True
    return changed


@register
@dataclass(frozen=True)
class LoihiFold(Pass):
    """Fold what Loihi cannot express: the input scaling, per-channel thresholds, spiking max pooling, average
    pooling (into the next layer, exactly: :mod:`~snncc.targets.loihi.avgpool`) and FS offsets (into the next
    bias: :mod:`~snncc.targets.loihi.fewspike`); see the module docstring."""

    name = "loihi-fold"
    requires_level = SNN

    def run(self, graph: Graph, context: PassContext) -> bool:
        changed = _fold_input_scaling(graph)
        changed |= _fold_thresholds(graph)
        changed |= _max_pools_to_or_gates(graph)
        changed |= fold_average_pools(graph)
        changed |= fold_few_spike_offsets(graph)
        return changed


@register
@dataclass(frozen=True)
class LoihiGates(Pass):
    """Spiking max pooling into OR gates (module docstring), the rest of the graph unchanged."""

    name = "loihi-gates"
    requires_level = SNN

    def run(self, graph: Graph, context: PassContext) -> bool:
        return _max_pools_to_or_gates(graph)


@register
@dataclass(frozen=True)
class LoihiReset(Pass):
    """The chip's reset in the float graph: reset to zero on Loihi 1, unchanged on Loihi 2 (module docstring)."""

    name = "loihi-reset"
    requires_level = SNN
    variant: str = "loihi2"

    def __post_init__(self) -> None:
        _check_variant(self.variant)

    def run(self, graph: Graph, context: PassContext) -> bool:
        if self.variant == "loihi2":
            return False
        changed = False
        for node in graph.find(ops.Population):
            neuron = graph.op(node).neuron
            if isinstance(neuron, IF) and neuron.reset != "zero":
                graph.replace(node, ops.Population(neuron=dataclasses.replace(neuron, reset="zero")))
                changed = True
        return changed


# ----------------------------------------------------------------------------------------------------------------
# loihi-quantize
# ----------------------------------------------------------------------------------------------------------------

#: The largest stored weight of the mixed sign mode, and what it is worth in membrane units at exponent 0.
_Q_MAX = la.SIGN_MODES["mixed"][1]
_UNIT = 1 << la.ACTIVATION_SHIFT


_BIAS_MAX = ((1 << (la.BIAS_MANTISSA_BITS - 1)) - 1) << la.NETX_BIAS_EXP


def _layer_scale(w: np.ndarray, b: np.ndarray | None, threshold: float | None) -> tuple[float, int | None]:
    """The membrane scale ``S`` of a layer and its record threshold: the largest weight maps to ``254 << 6``
    unless the largest bias would then exceed its 13-bit mantissa (``4095 << 6``), in which case the bias sets
    the scale (the first layer, which carries the input's mean: its weights keep fewer bits); rounded down so the
    threshold is ``(vth << 6) + 1``. Without a population (a readout) any scale will do."""
    largest = float(np.abs(w).max()) or 1.0
    scale = _Q_MAX * _UNIT / largest
    if b is not None and np.abs(b).max() > 0:
        scale = min(scale, _BIAS_MAX / float(np.abs(b).max()))
    if threshold is None:
        return scale, None
    vth = max(1, min((1 << la.THRESHOLD_MANTISSA_BITS) - 1, math.floor((scale * threshold - 1) / _UNIT)))
    record = la.record_threshold(vth)
    return record / threshold, record


def weight_exponent(w: np.ndarray) -> int:
    """The smallest weight exponent (down to -8, at most 0) at which membrane-unit weights ``w`` fit the mixed
    sign mode's 254: 0 when the largest weight sets the layer's scale, negative when the bias does (then the
    stored weights keep their 8 bits, and the chip truncates the shifted sum instead)."""
    largest = float(np.abs(w).max())
    if largest == 0:
        return 0
    exp = math.ceil(math.log2(largest / (_Q_MAX * _UNIT)) - 1e-12)
    return int(min(0, max(la.WEIGHT_EXP_RANGE[0], exp)))


def _quantize_layer(op: ops.Op, scale: float) -> tuple[ops.Op, dict]:
    w = op.weight.astype(np.float64) * scale
    exp = weight_exponent(w)
    q = la.quantize_weights(w, exp, "mixed").q
    bias = None
    fields = {}
    if op.bias is not None:
        mant = la.quantize_bias(op.bias.astype(np.float64) * scale)
        bias = (mant.astype(np.int32) << la.NETX_BIAS_EXP).astype(np.int32)
    if isinstance(op, ops.Conv2d) and op.pad_value is not None:
        fields["pad_value"] = np.round(op.pad_value).astype(np.int32)
    return op.replace(weight=q, bias=bias, **fields), {"weight_exp": exp}


def _cuba(neuron: IF | object, threshold: int, subtract: bool) -> CubaLIF:
    v_init = float(getattr(neuron, "v_init", 0.0))
    return CubaLIF(threshold=threshold, current_decay=la.DECAY_UNIT, voltage_decay=0, decay_unit=la.DECAY_UNIT,
                   bias=0, reset="subtract" if subtract else "zero", initial_voltage=int(round(v_init * threshold)))


_OR_GATE = CubaLIF(threshold=la.record_threshold(1), current_decay=la.DECAY_UNIT, voltage_decay=la.DECAY_UNIT - 1,
                   decay_unit=la.DECAY_UNIT, bias=0, reset="zero", initial_voltage=0)
"""A spike of weight 2 << 6 = 128 reaches ``threshold = 65``; with ``dv = 4095`` every voltage below 4096 decays to
zero in one step, so the gate fires exactly when a spike arrived at that step."""


@register
@dataclass(frozen=True)
class LoihiQuantize(Pass):
    """Quantize a folded snn-level graph to Loihi's formats; the result is at the hw level (module docstring)."""

    name = "loihi-quantize"
    requires_level = SNN
    variant: str = "loihi2"

    def __post_init__(self) -> None:
        _check_variant(self.variant)

    def run(self, graph: Graph, context: PassContext) -> bool:
        if has_few_spike(graph):
            quantize_few_spike(graph, self.variant)
            return True
        subtract = self.variant == "loihi2"
        # Loihi 1's measured compensation of the reset to zero (targets/loihi/reset_compensation.py), if calibrated.
        compensation = {} if subtract else dict(graph.attrs.get("loihi_reset_compensation", {}))
        scales = {}
        for node in graph.topological_order():
            op = graph.op(node)
            if not op.synaptic:
                continue
            if not isinstance(op, (ops.Conv2d, ops.Linear)) or op.input_gains is not None:
                raise PassError(f"{node!r}: {op.kind} has no Loihi form (run loihi-fold first; shared-weight "
                                "layers and pooling other than spiking max pooling are not supported)")
            users = graph.users(node)
            population = users[0][0] if len(users) == 1 and isinstance(graph.op(users[0][0]), ops.Population) \
                else None
            if population is not None and graph.meta.get(population, {}).get("or_gate"):
                graph.replace(node, op.replace(weight=np.full(op.weight.shape, 2, np.int16)))
                graph.meta[node]["weight_exp"] = 0
                graph.replace(population, ops.Population(neuron=_OR_GATE))
                continue
            if population is None and not all(isinstance(graph.op(u), ops.Readout) for u, _ in users):
                raise PassError(f"{node!r}: {op.kind} must feed one population (or the readout) on Loihi")
            neuron = graph.op(population).neuron if population else None
            if neuron is not None and not isinstance(neuron, IF):
                raise PassError(f"{population!r}: {neuron.kind} neurons have no Loihi mapping here (IF only)")
            factor = compensation.get(population, 1.0)
            scale, threshold = _layer_scale(op.weight, op.bias, factor if neuron is not None else None)
            new, meta = _quantize_layer(op, scale)
            graph.replace(node, new)
            graph.meta[node].update(meta)
            scales[node] = scale
            if population is not None:
                graph.replace(population, ops.Population(neuron=_cuba(neuron, threshold, subtract)))
        (source,) = graph.input_nodes()
        inp = graph.op(source)
        graph.replace(source, inp.replace(dtype="uint8"))
        graph.attrs["level"] = HW
        graph.attrs["loihi"] = {"variant": self.variant, "membrane_scale": scales,
                                "reset": "subtract" if subtract else "zero"}
        if compensation:
            graph.attrs["loihi"]["reset_compensation"] = compensation
        return True


# ----------------------------------------------------------------------------------------------------------------
# loihi-partition
# ----------------------------------------------------------------------------------------------------------------

def synapses_per_neuron(op: ops.Op) -> int:
    """Synapses into one neuron of synaptic ``op`` (its fan-in, counting every weight of the kernel)."""
    if isinstance(op, ops.Conv2d):
        return int(np.prod(op.weight.shape[1:]))
    return int(op.weight.shape[1])


@dataclass(frozen=True)
class Block:
    """Output channels ``[c0, c1)`` and output rows ``[r0, r1)`` of a layer (rows None: all of them)."""

    c0: int
    c1: int
    r0: int | None = None
    r1: int | None = None


def _input_rows(op: ops.Conv2d, rows: int, in_h: int) -> int:
    return min(in_h, (rows - 1) * op.stride[0] + op.dilation[0] * (op.weight.shape[2] - 1) + 1)


def plan_blocks(op: ops.Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                limits: CoreLimits) -> list[Block] | str:
    """Blocks of one layer that each fit a core (compartments, synaptic memory, input axons), or why none can.

    Whole output channels first (a block of a convolution reads every input channel, or its own channels when
    depthwise); when one channel is too large, blocks of output rows of one channel, which read only the input rows
    under them."""
    fan_in = synapses_per_neuron(op)
    per_core = min(limits.neurons, limits.synapses // max(1, fan_in))
    if per_core < 1:
        return f"one neuron has {fan_in} synapses, a core holds {limits.synapses}"
    axons = limits.fan_in
    if isinstance(op, ops.Linear):
        if axons is not None and in_shape[0] > axons:
            return f"its {in_shape[0]} inputs exceed the {axons} input axons of a core"
        n = out_shape[0]
        return [Block(c, min(n, c + per_core)) for c in range(0, n, per_core)]
    channels, h, w = out_shape
    depthwise = op.groups == channels and op.groups > 1
    in_channels, in_h, in_w = in_shape

    def footprint(block_channels: int, rows: int) -> int:
        return (block_channels if depthwise else in_channels) * _input_rows(op, rows, in_h) * in_w

    if h * w <= per_core and (axons is None or footprint(1, h) <= axons):
        step = per_core // (h * w)
        while depthwise and axons is not None and step > 1 and footprint(step, h) > axons:
            step -= 1
        return [Block(c, min(channels, c + step)) for c in range(0, channels, step)]
    rows = min(h, per_core // w)
    while rows >= 1 and axons is not None and footprint(1, rows) > axons:
        rows -= 1
    if rows < 1:
        return (f"one output row needs {w} compartments, {w * fan_in} synapses and "
                f"{footprint(1, 1)} input axons; a core has {limits.neurons}, {limits.synapses} and {axons}")
    return [Block(c, c + 1, r, min(h, r + rows)) for c in range(channels) for r in range(0, h, rows)]


def _row_slice(op: ops.Conv2d, in_h: int, r0: int, r1: int) -> tuple[int, int, int, int]:
    """Input rows ``[a, b)`` a block of output rows ``[r0, r1)`` reads, and its top and bottom padding."""
    top = op.padding[0]
    first = r0 * op.stride[0] - top
    last = (r1 - 1) * op.stride[0] - top + op.dilation[0] * (op.weight.shape[2] - 1)
    a, b = max(0, first), min(in_h, last + 1)
    return a, b, a - first, last + 1 - b


def _split(graph: Graph, syn: str, pop: str, blocks: list[Block], in_shape: tuple[int, ...]) -> list[str]:
    """Replace ``syn -> pop`` by one pair per block joined by Concat under ``pop``'s id; returns the pairs."""
    op, neuron = graph.op(syn), graph.op(pop)
    (src,) = graph.inputs(syn)
    meta = dict(graph.meta.get(syn, {}))
    by_channels: dict[tuple[int, int], list[str]] = {}
    pairs = []
    depthwise = isinstance(op, ops.Conv2d) and op.groups == op.weight.shape[0] and op.groups > 1
    for i, b in enumerate(blocks):
        source = src
        fields = {"weight": op.weight[b.c0:b.c1]}
        if op.bias is not None:
            fields["bias"] = op.bias[b.c0:b.c1]
        if depthwise:
            fields["groups"] = b.c1 - b.c0
            starts = (b.c0, 0, 0)
            stops = (b.c1, in_shape[1], in_shape[2])
            source = graph.add(ops.Slice(starts=starts, stops=stops, steps=(1, 1, 1)), [source],
                               name=f"{syn}.in{i}")
            if op.pad_value is not None:
                fields["pad_value"] = op.pad_value[b.c0:b.c1]
        if b.r0 is not None:
            a, end, pad_top, pad_bottom = _row_slice(op, in_shape[1], b.r0, b.r1)
            c_in = (b.c1 - b.c0) if depthwise else in_shape[0]
            source = graph.add(ops.Slice(starts=(0, a, 0), stops=(c_in, end, in_shape[2]), steps=(1, 1, 1)),
                               [source], name=f"{syn}.rows{i}")
            fields["padding"] = (pad_top, op.padding[1], pad_bottom, op.padding[3])
        block_syn = graph.add(op.replace(**fields), [source], name=f"{syn}.b{i}", **meta)
        block_pop = graph.add(neuron, [block_syn], name=f"{pop}.b{i}")
        by_channels.setdefault((b.c0, b.c1), []).append(block_pop)
        pairs.append((block_syn, block_pop))
    parts = []
    for (c0, c1), pops in by_channels.items():
        parts.append(pops[0] if len(pops) == 1 else graph.add(ops.Concat(axis=1), pops, name=f"{pop}.c{c0}"))
    joined = parts[0] if len(parts) == 1 else graph.add(ops.Concat(axis=0), parts, name=f"{pop}.join")
    graph.rewire(pop, joined)
    graph.remove(pop)
    graph.remove(syn)
    return pairs


def core_limits(constraints) -> CoreLimits:
    """A target's per-core limits (synaptic memory counted at 8 bits a synapse, no index overhead: a lower bound
    on what the chip's synapse encoding needs)."""
    return CoreLimits(constraints.neurons_per_core, constraints.synaptic_memory_bits // 8, constraints.fan_in)


@register
@dataclass(frozen=True)
class LoihiPartition(Pass):
    """Split populations over cores and place them (module docstring)."""

    name = "loihi-partition"
    requires_level = HW
    variant: str = "loihi2"
    #: Chips of the system (a multi-chip board: Kapoho Bay 2, Nahuku 8 or 32 Loihi 1 chips); core k is on chip
    #: k // cores_per_chip.
    chips: int = 1

    def __post_init__(self) -> None:
        _check_variant(self.variant)
        if self.chips < 1:
            raise PassError(f"chips must be at least 1, got {self.chips}")

    def run(self, graph: Graph, context: PassContext) -> bool:
        c = CONSTRAINTS[self.variant]
        limits = core_limits(c)
        units, changed = self.split(graph)
        weights = routes(graph, units)
        cores = place(units, weights, limits)
        graph.attrs["loihi"] = dict(graph.attrs.get("loihi", {}), inter_core_routes={
            "first_fit": cut(weights, first_fit(units, limits)), "placed": cut(weights, cores)})
        for unit, core in zip(units, cores):
            placement = Placement(chip=core // c.cores_per_chip, core=core % c.cores_per_chip)
            for node in (unit.synapse, unit.neurons_node):
                changed |= graph.placement(node) != placement
                graph.place(node, placement)
        core = max(cores, default=0)
        chips = core // c.cores_per_chip + 1
        if chips > self.chips:
            raise PassError(f"the model needs {core + 1} {self.variant} cores ({chips} chips), more than the "
                            f"{self.chips * c.cores_per_chip} of {self.chips} chip{'s' if self.chips > 1 else ''}; "
                            f"run loihi-partition{{variant={self.variant},chips={chips}}} (a system of {chips} "
                            "chips)")
        return changed

    def split(self, graph: Graph) -> tuple[list[Unit], bool]:
        """Split (in place) every population of ``graph`` that exceeds a core into blocks (:func:`plan_blocks`);
        returns the units to place, in topological order, and whether the graph changed."""
        limits = core_limits(CONSTRAINTS[self.variant])
        types = graph.types()
        plans = []  # planned on the unsplit graph, then split
        for pop in graph.find(ops.Population):
            (syn,) = graph.inputs(pop)
            in_shape = types[graph.inputs(syn)[0]].shape
            blocks = plan_blocks(graph.op(syn), in_shape, types[pop].shape, limits)
            if isinstance(blocks, str):
                raise PassError(f"{pop!r}: does not fit a {self.variant} core: {blocks}")
            plans.append((syn, pop, blocks, in_shape))
        pairs, changed = [], False
        for syn, pop, blocks, in_shape in plans:
            if len(blocks) == 1:
                pairs.append((syn, pop))
            else:
                pairs += _split(graph, syn, pop, blocks, in_shape)
                changed = True
        for readout in graph.find(ops.Readout):
            pairs.append((graph.inputs(readout)[0], readout))
        types = graph.types()
        order = {n: i for i, n in enumerate(graph.topological_order())}
        # A unit's input axons: the neurons its synaptic node reads (a block of rows reads its slice of the input).
        units = [Unit(syn, pop, types[pop].size, types[pop].size * synapses_per_neuron(graph.op(syn)),
                      sum(types[src].size for src in graph.inputs(syn)))
                 for syn, pop in sorted(pairs, key=lambda p: order[p[1]])]
        return units, changed
