"""Level verifiers: what is legal at each level of the IR, as a table of levels (:data:`LEVELS`).

Each :class:`Level` is data: the op classes legal at it (an op's ``levels``), the codings its edges and its outputs
may carry, the kinds of numbers its arrays hold, whether nodes may be placed on chips, and the rules (functions of
the graph) that must hold. :func:`verify` looks the graph's level up and runs that level's checks; nothing branches
on level names.

- ``ann``: ops without spikes (no populations, readouts or spiking pooling), every edge analog, float arrays.
- ``snn``: no ANN activations; every graph output is analog (produced by a Readout); a MaxPool2d never sees
  rate-coded spike trains (those are pooled by SpikingMaxPool2d; a few-spike value is complete at the end of its
  window and can be pooled as a value); float arrays; the spikes-only rule when the graph asks for it.
- ``hw``: what a chip stores. The ops a chip holds as they are (synaptic layers, rearrangements, populations,
  readouts: no analog max pooling, no Affine rescaling, which legalization folds into weights); every array
  parameter an integer array (int8 weight mantissas, integer biases: a float weight is rejected, naming the node,
  the parameter and its dtype), every neuron parameter a chip stores (:attr:`NeuronModel.hw_integer_fields`, e.g.
  thresholds and 12-bit decays) an integer, and nodes may carry a :class:`~snncc.ir.placement.Placement`.

At every level the operands of an Add or Concat carry the same coding.

Spikes only (opt-in, ``graph.attrs["spikes_only"]``, set by the ``sew`` pass): every signal between layers is a
binary spike train. Every operand of every synaptic op (Conv2d, Linear, AvgPool2d, GlobalAvgPool; a Conv2d or
Linear with ``input_gains`` has several) and of every SpikingMaxPool2d must be, seen through views, slices and
zero paddings (ops with ``passes_spikes``), a Population, a SpikingMaxPool2d of spikes, the network input (the
analog current of the encoding layer) or another synaptic op (consecutive linear maps, such as global average
pooling into the classifier, are one synaptic layer); a Concat must join such signals. An Add or Affine of spike
trains (a graded signal, e.g. 0, 1 or 2 after the ADD of two trains) may feed only a Population or a Readout,
where it is the sum of the neuron's synaptic inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from snncc.errors import IRError, VerificationError
from snncc.ir import ops
from snncc.ir.codings import CODINGS, Analog, Coding, Rate
from snncc.ir.graph import Graph
from snncc.ir.ops import ANN, HW, SNN
from snncc.ir.types import TensorType

#: Where a spike train (or a synaptic input) may originate under ``spikes_only``.
_SPIKE_SOURCES = (ops.Population, ops.SpikingMaxPool2d, ops.Input)
#: Ops whose operands must all carry one coding.
_SAME_CODING_OPS = (ops.Add, ops.Concat)


def _spike_source_problem(graph: Graph, node: str) -> str | None:
    """Why the value of ``node`` is not a spike train (or a synaptic current, or the input); None if it is one."""
    op = graph.op(node)
    if op.passes_spikes:
        if op.fill_value != 0:
            return f"{op.kind} {node!r} pads with {op.fill_value:g}, which is not a spike"
        return _spike_source_problem(graph, graph.inputs(node)[0])
    if isinstance(op, ops.Concat):  # a concatenation of spike trains is one
        return next(filter(None, (_spike_source_problem(graph, u) for u in graph.inputs(node))), None)
    if isinstance(op, _SPIKE_SOURCES) or op.synaptic:
        return None
    return f"it comes from {op.kind} {node!r}, a graded signal"


def spikes_only_problems(graph: Graph) -> list[str]:
    """One line per operand of a synaptic op (or spiking max pooling) that is not a binary spike train."""
    problems = []
    for node in graph.topological_order():
        op = graph.op(node)
        if not (op.synaptic or isinstance(op, ops.SpikingMaxPool2d)):
            continue
        srcs = graph.inputs(node)
        for port, src in enumerate(srcs):
            if (why := _spike_source_problem(graph, src)) is not None:
                which = "the input" if len(srcs) == 1 else f"operand {port} ({src!r})"
                problems.append(f"{node!r}: {which} of {op.kind} is not a spike train: {why}; make each spike "
                                "train a synaptic input of its own (the sew pass does) or end it in a Population")
    return problems


#: A rule: ``rule(graph, types) -> problems``, one line per violation naming the node.
Rule = Callable[[Graph, dict[str, TensorType]], list[str]]


def _operands_share_coding(graph: Graph, types: dict[str, TensorType]) -> list[str]:
    problems = []
    for node in graph.find(_SAME_CODING_OPS):
        codings = [types[u].coding for u in graph.inputs(node)]
        if len(set(codings)) > 1:
            problems.append(f"{node!r}: {graph.op(node).kind} operands carry different codings "
                            f"{[str(c) for c in codings]}")
    return problems


def _no_max_pooling_of_rates(graph: Graph, types: dict[str, TensorType]) -> list[str]:
    return [f"{node!r}: MaxPool2d on a {types[graph.inputs(node)[0]].coding} edge; spike trains are pooled by "
            "SpikingMaxPool2d" for node in graph.find(ops.MaxPool2d) if types[graph.inputs(node)[0]].coding == Rate()]


def _one_operand_per_synaptic_layer(graph: Graph, types: dict[str, TensorType]) -> list[str]:
    """No shared-weight layers (``input_gains``): the ANN passes fold into and rescale a layer's one operand."""
    return [f"{node!r}: {graph.op(node).kind} with input_gains reads {len(graph.inputs(node))} operands; "
            "shared-weight layers are an snn-level form (the sew pass makes them), not legal at the ann level"
            for node in graph.find((ops.Conv2d, ops.Linear)) if graph.op(node).input_gains is not None]


def _spikes_only_if_asked(graph: Graph, types: dict[str, TensorType]) -> list[str]:
    return spikes_only_problems(graph) if graph.attrs.get("spikes_only") else []


def _neuron_parameters_are_integers(graph: Graph, types: dict[str, TensorType]) -> list[str]:
    """Every parameter a chip stores as an integer (``hw_integer_fields`` of the neuron model) is one."""
    problems = []
    for node in graph.find(ops.Population):
        neuron = graph.op(node).neuron
        for name in neuron.hw_integer_fields:
            value = getattr(neuron, name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
                problems.append(f"{node!r}: {neuron.kind}.{name} is {type(values[0]).__name__} {value!r}; the hw "
                                f"level stores it as an integer: quantize the neuron to the chip's format (a "
                                f"target's legalization does)")
    return problems


@dataclass(frozen=True)
class Level:
    """The rules of one IR level, as data.

    ``op_classes``: the op classes legal at the level (each op class lists its ``levels``). ``codings``: the coding
    classes its edges may carry; ``output_codings``: those of its graph outputs. ``array_kinds``: the numpy dtype
    kinds of array parameters (``"f"`` float, ``"iub"`` integers and booleans). ``placement``: whether nodes may
    carry a Placement. ``rules``: further properties that must hold.
    """

    name: str
    op_classes: frozenset[type[ops.Op]]
    codings: frozenset[type[Coding]]
    output_codings: frozenset[type[Coding]]
    array_kinds: str
    placement: bool
    rules: tuple[Rule, ...]
    #: What a graph at this level stores its arrays as, for the message naming a parameter of the wrong dtype.
    array_remedy: str = ""


def _legal_at(level: str) -> frozenset[type[ops.Op]]:
    return frozenset(cls for cls in ops.OPS.values() if level in cls.levels)


_EVERY_CODING = frozenset(CODINGS.values())
LEVELS: dict[str, Level] = {level.name: level for level in (
    Level(ANN, _legal_at(ANN), frozenset({Analog}), frozenset({Analog}), "f", False,
          (_operands_share_coding, _one_operand_per_synaptic_layer),
          "ann-level arrays are float32"),
    Level(SNN, _legal_at(SNN), _EVERY_CODING, frozenset({Analog}), "f", False,
          (_operands_share_coding, _no_max_pooling_of_rates, _spikes_only_if_asked),
          "snn-level arrays are float32"),
    Level(HW, _legal_at(HW), _EVERY_CODING, frozenset({Analog}), "iub", True,
          (_operands_share_coding, _spikes_only_if_asked, _neuron_parameters_are_integers),
          "the hw level stores integers (for example int8 weight mantissas): quantize it to the chip's format "
          "(a target's legalization does)"),
)}
"""Every IR level by name."""


def _level_problems(level: Level, graph: Graph, types: dict[str, TensorType]) -> list[str]:
    """The checks every level makes from its data: ops, codings, array kinds, placements."""
    problems = []
    for node in graph.topological_order():
        op = graph.op(node)
        if type(op) not in level.op_classes:
            problems.append(f"{node!r}: {op.kind} is not legal at the {level.name} level")
        if type(types[node].coding) not in level.codings:
            problems.append(f"{node!r}: {types[node].coding} coding in an {level.name}-level graph")
        for name, value in op.params().items():
            if isinstance(value, np.ndarray) and value.dtype.kind not in level.array_kinds:
                problems.append(f"{node!r}: {op.kind}.{name} is {value.dtype}; {level.array_remedy}")
        if graph.placement(node) is not None and not level.placement:
            problems.append(f"{node!r}: placed on {graph.placement(node)}, but only hw-level nodes are placed on "
                            "chips")
    for out in graph.outputs:
        if type(types[out].coding) not in level.output_codings:
            problems.append(f"output {out!r} carries {types[out].coding} coding; end it with a Readout")
    return problems


def verify(graph: Graph) -> dict[str, TensorType]:
    """Check ``graph`` against the rules of its level; returns the inferred types. Raises VerificationError."""
    level = LEVELS.get(graph.level)
    if level is None:
        raise VerificationError(f"unknown IR level {graph.level!r}; expected one of {tuple(LEVELS)}")
    problems: list[str] = []
    if not graph.outputs:
        problems.append("the graph has no outputs")
    for out in graph.outputs:
        if out not in graph:
            problems.append(f"output {out!r} is not a node")
    if problems:
        raise VerificationError("; ".join(problems))
    try:
        types = graph.types()
    except IRError as exc:
        raise VerificationError(str(exc)) from None
    problems = _level_problems(level, graph, types)
    for rule in level.rules:
        problems += rule(graph, types)
    if problems:
        raise VerificationError(f"{level.name}-level graph is not valid:\n  " + "\n  ".join(problems))
    return types
