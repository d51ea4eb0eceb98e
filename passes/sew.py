"""``sew``: residual blocks of a rate-converted SNN in spike-element-wise form (SEW-ResNet).

Fang, Yu, Chen, Huang, Masquelier and Tian, "Deep Residual Learning in Spiking Neural Networks", NeurIPS 2021
(arXiv:2102.04159). An ANN basic block computes ``y = ReLU(F(x) + s(x))``; after ``convert-rate`` it is an IF
population fed by the current ``F(x) + s(x)``, so the block's output is one spike train but the shortcut travels as
a current. The SEW block computes instead

    A = SN(F(x))                     a spiking neuron at the end of the residual branch
    S = x          (identity)        the block's input spikes, or
    S = SN(conv(x)) (projection)     a spiking neuron at the end of the projection shortcut
    O = g(A, S)    with  ADD: A + S,   AND: A * S,   IAND: (1 - A) * S.

This changes the function (``g(SN(F(x)), S)`` instead of ``ReLU(F(x) + s(x))``): the SEW form is the starting
point of surrogate-gradient fine-tuning (a later issue), and measured as converted it loses accuracy
(docs/residual.md).

**What the pass builds.** A residual block is an ``Add`` of a residual branch and a shortcut whose sum feeds a
Population, through the ``Affine`` rescalings that ``normalize`` inserts (the branch is the operand that is a
synaptic current; with a projection shortcut both are, and the branch is the one with more populations on its
path). For each selected block:

- ``A``: a new Population (the neuron of the block's output population) on the branch current, scaled by the
  rescalings after the Add, i.e. in the units of the block's output; the scale is folded into the branch's last
  layer when that layer feeds nothing else.
- ``S``: for a projection shortcut a new Population like ``A``. For an identity shortcut the block's input spike
  trains, through the shortcut's slices and zero channel paddings, each with its **gain** ``g_i``: the product of
  the rescalings on its path, which converts its rate into the units of the block's output.
- ``g``. ADD keeps ``A + sum_i g_i S_i``. AND and IAND are gates, one per shortcut train: a Population of
  memoryless neurons (``LIF`` with ``tau_mem = 0``, reset to zero, so ``v(t) = I(t)``) with input ``a + b`` and
  threshold 1.5 (AND) or ``b - a`` and threshold 0.5 (IAND). With ``a, b`` in {0, 1} they fire exactly when
  ``a * b = 1`` and ``(1 - a) * b = 1``, at the same step. The connect functions are linear in ``S``, so a
  shortcut that carries several trains, ``S = sum_i g_i S_i``, gets ``g(A, S) = sum_i g_i g(A, S_i)``.

The block's Add, its rescalings and its output population are removed; their users read the weighted sum.

**How ADD (0, 1 or 2) is carried.** As a list of binary spike trains with gains, never as a graded signal. A Conv2d or
Linear that reads a sum reads every train as an operand of its own, with the train's gain as that operand's input
gain (``input_gains``, see :class:`snncc.ir.ops._SharedWeights`): ``conv(A + g S) = conv(A; W) + conv(S; g W)``
with one weight array ``W`` and the bias once, the trains being separate synaptic inputs of the same neurons.
Fine-tuning then trains ``W`` once and a chip stores it once. A layer with a single operand takes a gain into its
weights instead (nothing is shared). Slices, paddings, reshapes and pooling, which hold no weights, are duplicated
per train, and the identity shortcut of a following block carries the list on (its output then holds up to one
train per block of the stage). Average pooling takes the gain after it (pooling is per channel). Max pooling does
not distribute over a sum and is refused. The currents are bit for bit those of one copy of the layer per train
with ``g W`` rounded to float32 and the copies added in the order of the trains (the form of earlier versions).

After the pass every signal between layers is a binary spike train: the pass sets ``graph.attrs["spikes_only"]``
and the verifier checks it (:func:`snncc.ir.verify.spikes_only_problems`). Every new population is an ordinary
``Population`` of IF or LIF neurons, so a torch lowering sees conv -> neuron -> gate like any other layer.

Options: ``connect=add|and|iand``, or one value per selected block joined by ``:`` (``connect=add:and``);
``blocks=all`` or the indices of the blocks to rewrite, in topological order of their Adds, joined by ``:``
(``blocks=0:2:5``). Pipeline: ``canonicalize,normalize,convert-rate,sew{connect=iand}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.errors import PassError
from snncc.ir import IF, LIF, SNN, Graph, ops
from snncc.passes.base import Pass, PassContext, register

CONNECTS = ("add", "and", "iand")

#: The gate neurons: memoryless (v(t) = I(t)), so they compute a threshold function of the inputs at each step.
GATES = {"and": (LIF(threshold=1.5, tau_mem=0.0, reset="zero", v_init=0.0), 1.0),
         "iand": (LIF(threshold=0.5, tau_mem=0.0, reset="zero", v_init=0.0), -1.0)}
"""connect -> (gate neuron, weight of the branch spike A; the shortcut spike S has weight 1)."""


@dataclass(frozen=True)
class Block:
    """A residual block of a rate SNN: ``output = Population(post(Add(branch, shortcut)))``."""

    index: int
    add: str
    output: str
    post: tuple[str, ...]  # the Affine rescalings between the Add and the output population
    branch: str
    shortcut: str


# ---- analysis ----------------------------------------------------------------------------------------------------

def _is_spikes(graph: Graph, node: str) -> bool:
    """Whether ``node`` carries binary spike trains: a population, or one seen through ops that pass spikes
    (``passes_spikes``, padding with zeros)."""
    op = graph.op(node)
    if isinstance(op, (ops.Population, ops.SpikingMaxPool2d)):
        return True
    if op.passes_spikes:
        return op.fill_value == 0 and _is_spikes(graph, graph.inputs(node)[0])
    return False


def _sources(graph: Graph, node: str) -> set[str]:
    """What a value is made of, looking through Affine, Add and ops that pass spikes: 'spikes' and/or 'current'."""
    if _is_spikes(graph, node):
        return {"spikes"}
    op = graph.op(node)
    if isinstance(op, (ops.Affine, ops.Add)) or op.passes_spikes:
        return set().union(*(_sources(graph, u) for u in graph.inputs(node)))
    return {"current"}


def _depths(graph: Graph) -> dict[str, int]:
    """Number of populations on the longest path from the input to each node (inclusive)."""
    depth: dict[str, int] = {}
    for node in graph.topological_order():
        here = int(isinstance(graph.op(node), ops.Population))
        depth[node] = max((depth[u] for u in graph.inputs(node)), default=0) + here
    return depth


def find_blocks(graph: Graph) -> list[Block]:
    """The residual blocks of a rate-converted graph, in topological order of their Adds."""
    depth = _depths(graph)
    blocks: list[Block] = []
    for add in graph.find(ops.Add):
        post, end = [], add
        while end not in graph.outputs and len(graph.users(end)) == 1 and \
                isinstance(graph.op(graph.users(end)[0][0]), ops.Affine):
            end = graph.users(end)[0][0]
            post.append(end)
        users = graph.users(end)
        if end in graph.outputs or len(users) != 1 or not isinstance(graph.op(users[0][0]), ops.Population):
            continue  # a sum that no single population receives (e.g. a gate's or a lowered sum's) is no block
        a, b = graph.inputs(add)
        kinds = (_sources(graph, a), _sources(graph, b))
        if "current" not in kinds[0] | kinds[1]:
            continue  # a sum of spike trains (a SEW gate's input): not a residual block of the ANN
        for operand, kind in zip((a, b), kinds):
            if kind == {"spikes", "current"}:
                raise PassError(f"sew: operand {operand!r} of the residual Add {add!r} mixes spike trains and "
                                "synaptic currents; expected a branch current and a shortcut of spikes or of a "
                                "projection")
        if kinds[0] == kinds[1] == {"current"}:  # projection shortcut: the branch is the deeper operand
            if depth[a] == depth[b]:
                raise PassError(f"sew: cannot tell the residual branch from the shortcut at Add {add!r}: both "
                                f"operands ({a!r}, {b!r}) pass {depth[a]} populations")
            branch, shortcut = (a, b) if depth[a] > depth[b] else (b, a)
        else:
            branch, shortcut = (a, b) if kinds[0] == {"current"} else (b, a)
        blocks.append(Block(len(blocks), add, users[0][0], tuple(post), branch, shortcut))
    return blocks


# ---- gains -------------------------------------------------------------------------------------------------------

def _affine_scale(graph: Graph, node: str, shape: tuple[int, ...]) -> np.ndarray:
    op = graph.op(node)
    if np.any(op.shift != 0):
        raise PassError(f"sew: Affine {node!r} on a residual path has a shift; only the rescalings of normalize "
                        "(scale only) can be carried by spike trains")
    return np.broadcast_to(np.asarray(op.scale, np.float64), shape)


def _per_channel(gain: np.ndarray) -> np.ndarray | None:
    """The gain as one value per channel (axis 0), or None if it varies within a channel."""
    flat = gain.reshape(gain.shape[0], -1) if gain.ndim > 1 else gain.reshape(-1, 1)
    return flat[:, 0].copy() if np.all(flat == flat[:, :1]) else None


def _compact(gain: np.ndarray) -> np.ndarray:
    """A gain as a scalar, a per-channel (C, 1, ...) array or the full array, whichever represents it."""
    gain = np.asarray(gain, np.float64)
    if gain.size and np.all(gain == gain.reshape(-1)[0]):
        return np.asarray(gain.reshape(-1)[0])
    channels = _per_channel(gain) if gain.ndim > 1 else None
    return gain if channels is None else channels.reshape((-1,) + (1,) * (gain.ndim - 1))


def _pad_edges(gain: np.ndarray, widths: list[tuple[int, int]]) -> np.ndarray:
    """``gain`` padded along its leading axes by ``widths`` with its edge values."""
    return np.pad(gain, widths + [(0, 0)] * (gain.ndim - len(widths)), mode="edge")


#: How a per-element gain passes an op with ``passes_spikes`` that is not a view (a view only reshapes it). Padded
#: positions carry no spikes; they take a neighbour's gain so that per-channel gains stay per channel.
_GAIN_THROUGH = {
    ops.Slice: lambda op, gain: gain[tuple(slice(a, b, c) for a, b, c in zip(op.starts, op.stops, op.steps))],
    ops.ChannelPad: lambda op, gain: _pad_edges(gain, [(op.before, op.after)]),
    ops.Pad2d: lambda op, gain: _pad_edges(gain, [(0, 0), (op.padding[0], op.padding[2]),
                                                  (op.padding[1], op.padding[3])]),
}


def _carry_gain(op: ops.Op, gain: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """The gain of the output (of shape ``out_shape``) of an op with ``passes_spikes``, given its input's."""
    if op.is_view:
        return gain.reshape(out_shape)
    if type(op) not in _GAIN_THROUGH:
        raise PassError(f"sew: no rule carries a spike train's gain through {op.kind}; add one to _GAIN_THROUGH")
    return _GAIN_THROUGH[type(op)](op, gain)


def _refuse_constant_padding(graph: Graph, node: str, where: str) -> None:
    op = graph.op(node)
    if op.passes_spikes and op.fill_value != 0:
        raise PassError(f"sew: {op.kind} {node!r} {where} pads with {op.fill_value:g}; a constant is not a spike "
                        "train (only zero padding, as in option-A shortcuts, can be carried)")


def _without_constants(op: ops.Op) -> ops.Op:
    """The copy of a padding for a second spike train: padding with zeros (constants are added once). Only the
    paddings (ChannelPad, Pad2d: a ``value`` field) have a non-zero ``fill_value``."""
    return op.replace(value=0.0) if op.passes_spikes and op.fill_value != 0 else op


# ---- the rewrite -------------------------------------------------------------------------------------------------

class _Rewriter:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.types = graph.types()
        self.origin: dict[str, str] = {}  # copy -> the node of the input graph it was copied from (for names)

    def copy_name(self, node: str, role: str) -> str:
        root = self.origin.get(node, node)
        name = self.graph.unique_id(f"{root}.{role}")
        self.origin[name] = root
        return name

    def shape(self, node: str) -> tuple[int, ...]:
        if node not in self.types:
            self.types = self.graph.types()
        return self.types[node].shape

    def trains(self, node: str) -> list[tuple[str, np.ndarray]]:
        """``node``'s value as ``sum_i gain_i * train_i`` over binary spike trains (gains at ``node``'s shape)."""
        g, shape = self.graph, self.shape(node)
        op = g.op(node)
        if _is_spikes(g, node):
            return [(node, np.ones(shape))]
        if isinstance(op, ops.Affine):
            scale = _affine_scale(g, node, shape)
            return [(t, gain * scale) for t, gain in self.trains(g.inputs(node)[0])]
        if isinstance(op, ops.Add):
            return [part for u in g.inputs(node) for part in self.trains(u)]
        if op.passes_spikes:
            _refuse_constant_padding(g, node, "on a residual shortcut")
            copies = []
            for t, gain in self.trains(g.inputs(node)[0]):
                copy = g.add(_without_constants(op), [t], name=f"{t}.{op.kind.lower()}", created_by="sew")
                copies.append((copy, _carry_gain(op, gain, shape)))
            return copies
        raise PassError(f"sew: {node!r} ({op.kind}) on a shortcut is neither spikes nor a rescaling of spikes")

    def spiking(self, current: str, gain: np.ndarray, neuron: object, name: str) -> str:
        """A new population on ``gain * current``; the gain goes into the last layer's weights when it can."""
        g = self.graph
        chain, layer = [], current
        while isinstance(g.op(layer), ops.Affine):
            chain.append(layer)
            layer = g.inputs(layer)[0]
        total = np.asarray(gain, np.float64)
        for node in chain:
            total = total * _affine_scale(g, node, self.shape(current))
        channels = _per_channel(total)
        op = g.op(layer)
        exclusive = all(len(g.users(n)) == 1 for n in [layer, *chain])
        if isinstance(op, (ops.Conv2d, ops.Linear)) and exclusive and channels is not None:
            factor = channels.reshape((-1,) + (1,) * (op.weight.ndim - 1))
            g.replace(layer, op.replace(weight=op.weight * factor,
                                        bias=None if op.bias is None else op.bias * channels))
            source = layer
        elif np.all(total == 1):
            source = current
        else:
            source = g.add(ops.Affine(scale=_compact(total), shift=np.zeros(())), [current], name=f"{name}.scale",
                           created_by="sew")
        return g.add(ops.Population(neuron=neuron), [source], name=name, created_by="sew")

    def gate(self, connect: str, a: str, b: str, name: str) -> str:
        neuron, a_weight = GATES[connect]
        g = self.graph
        if a_weight != 1:
            a = g.add(ops.Affine(scale=np.asarray(a_weight), shift=np.zeros(())), [a], name=f"{name}.neg",
                      created_by="sew")
        total = g.add(ops.Add(), [b, a], name=f"{name}.in", created_by="sew")
        return g.add(ops.Population(neuron=neuron), [total], name=name, created_by="sew")

    def weighted_sum(self, terms: list[tuple[str, np.ndarray]], name: str) -> str:
        g = self.graph
        nodes = [t if np.all(gain == 1) else
                 g.add(ops.Affine(scale=_compact(gain), shift=np.zeros(())), [t], name=f"{t}.gain", created_by="sew")
                 for t, gain in terms]
        total = nodes[0]
        for i, node in enumerate(nodes[1:], 1):
            total = g.add(ops.Add(), [total, node], name=f"{name}.sum{i}", created_by="sew")
        return total

    def rewrite(self, block: Block, connect: str) -> None:
        g = self.graph
        neuron = g.op(block.output).neuron
        if not isinstance(neuron, (IF, LIF)):
            raise PassError(f"sew: block {block.index} ({block.add!r}) ends in {neuron.kind} neurons; the sew pass "
                            "rewrites rate-coded SNNs (run convert-rate before it)")
        shape = self.shape(block.add)
        post = np.ones(shape)
        for node in block.post:
            post = post * _affine_scale(g, node, shape)
        a = self.spiking(block.branch, post, neuron, f"{block.output}.branch")
        if _sources(g, block.shortcut) == {"current"}:
            shortcut = [(self.spiking(block.shortcut, post, neuron, f"{block.output}.shortcut"), np.ones(shape))]
        else:
            shortcut = [(t, gain * post) for t, gain in self.trains(block.shortcut)]
        if connect == "add":
            terms = [(a, np.ones(shape)), *shortcut]
        else:
            terms = [(self.gate(connect, a, t, f"{block.output}.{connect}{'' if len(shortcut) == 1 else i}"), gain)
                     for i, (t, gain) in enumerate(shortcut)]
        g.rewire(block.output, self.weighted_sum(terms, f"{block.output}.{connect}"))
        g.remove_dead()
        self.types = g.types()

    # ---- lowering of sums of spike trains into per-train synaptic inputs ---------------------------------------
    def lower(self) -> None:
        """Until no synaptic op, op that passes spikes or spiking max pooling reads an Add or Affine: distribute."""
        while self._lower_one():
            self.graph.remove_dead()
            self.types = self.graph.types()

    def _lower_one(self) -> bool:
        g = self.graph
        for node in g.topological_order():
            op = g.op(node)
            if not (op.synaptic or op.passes_spikes or isinstance(op, (ops.SpikingMaxPool2d, ops.MaxPool2d))):
                continue
            for port, src in enumerate(g.inputs(node)):
                if isinstance(g.op(src), ops.Add):
                    self._distribute(node, port)
                    return True
                if isinstance(g.op(src), ops.Affine):
                    self._sink(node, port)
                    return True
        return False

    def _replace_by(self, node: str, new: str) -> None:
        self.graph.rewire(node, new)
        self.graph.remove(node)

    def _set_operands(self, node: str, op: ops.Op, inputs: list[str]) -> None:
        """Give ``node`` the shared-weight layer ``op`` with operands ``inputs`` (its name and users stay)."""
        self.graph.set_inputs(node, inputs)
        self.graph.replace(node, op)

    def _distribute(self, node: str, port: int) -> None:
        """``node`` reads ``Add(p, q)`` at ``port``. A Conv2d/Linear reads ``p`` and ``q`` instead, both with that
        operand's gain (its weights stay one array); any other op is copied, one copy per operand of the Add."""
        g, op = self.graph, self.graph.op(node)
        inputs = g.inputs(node)
        src = inputs[port]
        if isinstance(op, (ops.SpikingMaxPool2d, ops.MaxPool2d)):
            raise PassError(f"sew: {node!r} ({op.kind}) pools the sum of spike trains {src!r} of an ADD block; max "
                            "pooling does not distribute over a sum: use connect=and or iand for that block")
        p, q = g.inputs(src)
        if isinstance(op, (ops.Conv2d, ops.Linear)):
            gains = op.input_gains or (np.ones(()),)
            self._set_operands(node, op.replace(input_gains=gains[:port] + (gains[port],) * 2 + gains[port + 1:]),
                               inputs[:port] + [p, q] + inputs[port + 1:])
            return
        first = g.add(op, [p], name=self.copy_name(node, "0"), created_by="sew")
        second = g.add(_without_constants(op), [q], name=self.copy_name(node, "1"), created_by="sew")
        self._replace_by(node, g.add(ops.Add(), [first, second], name=self.copy_name(node, "sum"),
                                     created_by="sew"))

    def _sink(self, node: str, port: int) -> None:
        """``node`` reads ``Affine(x)`` at ``port``: the scale becomes that operand's gain (a Conv2d/Linear with
        several operands), is folded into the input weights (a Conv2d/Linear with one), or moves behind ``node``."""
        g, op = self.graph, self.graph.op(node)
        inputs = g.inputs(node)
        src = inputs[port]
        (x,) = g.inputs(src)
        scale = _affine_scale(g, src, self.shape(src))
        channels = _per_channel(scale)
        if isinstance(op, (ops.Conv2d, ops.Linear)) and op.input_gains is not None:
            if isinstance(op, ops.Conv2d) and channels is None:
                raise PassError(f"sew: the gain into {node!r} varies within channels and cannot be an input gain")
            factor = channels if isinstance(op, ops.Conv2d) else scale.reshape(-1)
            gain = _compact(np.asarray(op.input_gains[port], np.float64) * factor)
            gains = op.input_gains[:port] + (gain,) + op.input_gains[port + 1:]
            self._set_operands(node, op.replace(input_gains=gains), inputs[:port] + [x] + inputs[port + 1:])
            return
        if isinstance(op, ops.Linear):
            new = g.add(op.replace(weight=op.weight * scale.reshape(1, -1)), [x], name=self.copy_name(node, "w"),
                        created_by="sew")
            self._replace_by(node, new)
            return
        if isinstance(op, ops.Conv2d):
            if channels is None:
                raise PassError(f"sew: the gain into {node!r} varies within channels and cannot become weights")
            out_ch, per_group, kh, kw = op.weight.shape
            grouped = op.weight.astype(np.float64).reshape(op.groups, out_ch // op.groups, per_group, kh, kw)
            grouped = grouped * channels.reshape(op.groups, 1, per_group, 1, 1)
            self._replace_by(node, g.add(op.replace(weight=grouped.reshape(op.weight.shape)), [x],
                                         name=self.copy_name(node, "w"), created_by="sew"))
            return
        if isinstance(op, (ops.AvgPool2d, ops.GlobalAvgPool, ops.SpikingMaxPool2d, ops.MaxPool2d)):
            if channels is None or (not op.synaptic and np.any(channels <= 0)):
                raise PassError(f"sew: the gain into {node!r} ({op.kind}) is not a positive per-channel factor")
            after = channels.reshape((-1, 1, 1))
        else:  # an op that passes spikes: the gain moves behind it
            _refuse_constant_padding(g, node, "after a rescaling of spikes")
            after = _compact(_carry_gain(op, scale, self.shape(node)))
        moved = g.add(op, [x], name=self.copy_name(node, "x"), created_by="sew")
        self._replace_by(node, g.add(ops.Affine(scale=after, shift=np.zeros(())), [moved],
                                     name=self.copy_name(node, "gain"), created_by="sew"))


def lower_spike_sums(graph: Graph) -> None:
    """Rewrite ``graph`` in place so that no synaptic op, op that passes spikes or max pooling reads a sum (Add) or a
    rescaling (Affine) of spike trains: a Conv2d or Linear reads every train as an operand of its own, with the
    train's gain (``input_gains``, one weight array); pooling, slices, paddings and reshapes are copied per train
    (see the module docstring). The currents are those of one copy of the layer per train with the gain folded
    into its weights, added in the order of the trains (bit for bit when every sum is a left fold, as the pass
    builds them)."""
    _Rewriter(graph).lower()


# ---- options -----------------------------------------------------------------------------------------------------

def _indices(text: str) -> tuple[int, ...] | None:
    """``all`` -> None, ``0:2:5`` -> (0, 2, 5); raises PassError on anything else."""
    if text == "all":
        return None
    try:
        values = tuple(int(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise PassError(f"sew: blocks={text!r}: give 'all' or distinct block indices >= 0 joined by ':' "
                        "(e.g. blocks=0:2:5)")
    return values


@register
@dataclass(frozen=True)
class Sew(Pass):
    """Residual blocks -> SEW blocks ``g(SN(branch), S)`` with g in {ADD, AND, IAND}; every signal spikes."""

    name = "sew"
    requires_level = SNN
    connect: str = "add"
    blocks: str = "all"

    def __post_init__(self) -> None:
        _indices(self.blocks)
        bad = [c for c in self.connect.split(":") if c not in CONNECTS]
        if bad:
            raise PassError(f"sew: connect={self.connect!r}: {bad[0]!r} is not a connect function; choose from "
                            f"{', '.join(CONNECTS)} (one for every block, or one per selected block joined by ':')")

    def selection(self, count: int) -> list[tuple[int, str]]:
        """(block index, connect function) for the selected blocks of a graph with ``count`` blocks."""
        chosen = _indices(self.blocks)
        chosen = list(range(count)) if chosen is None else sorted(chosen)
        if chosen and chosen[-1] >= count:
            raise PassError(f"sew: blocks={self.blocks!r} selects block {chosen[-1]}, but the graph has {count} "
                            f"residual blocks (0 to {count - 1})")
        connects = self.connect.split(":")
        if len(connects) == 1:
            connects = connects * len(chosen)
        if len(connects) != len(chosen):
            raise PassError(f"sew: connect={self.connect!r} gives {len(connects)} connect functions for "
                            f"{len(chosen)} selected blocks; give one, or one per selected block")
        return list(zip(chosen, connects))

    def run(self, graph: Graph, context: PassContext) -> bool:
        if graph.attrs.get("sew"):
            raise PassError("sew: the graph is already in SEW form (the sew pass ran before)")
        blocks = find_blocks(graph)
        if not blocks:
            raise PassError("sew: the graph has no residual blocks (an Add of a branch current and a shortcut "
                            "whose sum feeds a spiking population); the sew pass applies to ResNets converted "
                            "with canonicalize,normalize,convert-rate")
        selection = self.selection(len(blocks))
        rewriter = _Rewriter(graph)
        for index, connect in selection:
            rewriter.rewrite(blocks[index], connect)
        rewriter.lower()
        graph.attrs["spikes_only"] = True
        graph.attrs["sew"] = {"blocks": [{"index": i, "add": blocks[i].add, "connect": c} for i, c in selection],
                              "residual_blocks": len(blocks)}
        return True
