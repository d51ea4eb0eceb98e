"""Level verifiers: what is legal in an ANN-level and an SNN-level graph.

ANN level: only ops legal at ANN level (no populations, no readouts), every edge analog.
SNN level: no ANN activations; every graph output is analog (produced by a Readout); a MaxPool2d never sees rate-coded
spike trains (those are pooled by SpikingMaxPool2d; a few-spike value is complete at the end of its window and can
be pooled as a value); every operand of an Add or Concat carries the same coding.

Spikes only (opt-in, ``graph.attrs["spikes_only"]``, set by the ``sew`` pass): every signal between layers is a
binary spike train. Every operand of every synaptic op (Conv2d, Linear, AvgPool2d, GlobalAvgPool; a Conv2d or
Linear with ``input_gains`` has several) and of every SpikingMaxPool2d must be, seen through views, slices and
zero paddings (:data:`SPIKE_PRESERVING`), a Population, a SpikingMaxPool2d of spikes, the network input (the analog
current of the encoding layer) or another synaptic op (consecutive linear maps, such as global average pooling into
the classifier, are one synaptic layer); a Concat must join such signals. An Add or Affine of spike trains (a graded signal, e.g. 0, 1 or 2 after the ADD of two
trains) may feed only a Population or a Readout, where it is the sum of the neuron's synaptic inputs.
"""

from __future__ import annotations

from snncc.errors import IRError, VerificationError
from snncc.ir.codings import Analog, Rate
from snncc.ir.graph import Graph
from snncc.ir import ops
from snncc.ir.ops import ANN, SNN, Add, Concat, MaxPool2d
from snncc.ir.types import TensorType

LEVELS = (ANN, SNN)
#: Ops that carry a binary spike train through unchanged or rearranged (a zero padding adds silent inputs).
SPIKE_PRESERVING = (ops.Flatten, ops.Reshape, ops.Identity, ops.Slice, ops.ChannelPad, ops.Pad2d)
#: Where a spike train (or a synaptic input) may originate under ``spikes_only``.
_SPIKE_SOURCES = (ops.Population, ops.SpikingMaxPool2d, ops.Input)


def _spike_source_problem(graph: Graph, node: str) -> str | None:
    """Why the value of ``node`` is not a spike train (or a synaptic current, or the input); None if it is one."""
    op = graph.op(node)
    if isinstance(op, SPIKE_PRESERVING):
        if isinstance(op, (ops.ChannelPad, ops.Pad2d)) and op.value != 0:
            return f"{op.kind} {node!r} pads with {op.value:g}, which is not a spike"
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


def verify(graph: Graph) -> dict[str, TensorType]:
    """Check ``graph`` against the rules of its level; returns the inferred types. Raises VerificationError."""
    level = graph.level
    if level not in LEVELS:
        raise VerificationError(f"unknown IR level {level!r}; expected one of {LEVELS}")
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
    for node in graph.topological_order():
        op = graph.op(node)
        if level not in op.levels:
            problems.append(f"{node!r}: {op.kind} is not legal at the {level} level")
        operand_types = [types[u] for u in graph.inputs(node)]
        if isinstance(op, (Add, Concat)) and len({t.coding for t in operand_types}) > 1:
            problems.append(f"{node!r}: {op.kind} operands carry different codings "
                            f"{[str(t.coding) for t in operand_types]}")
        if level == SNN and isinstance(op, MaxPool2d) and operand_types[0].coding == Rate():
            problems.append(f"{node!r}: MaxPool2d on a {operand_types[0].coding} edge; "
                            "spike trains are pooled by SpikingMaxPool2d")
        if level == ANN and types[node].coding != Analog():
            problems.append(f"{node!r}: {types[node].coding} coding in an ANN-level graph")
    if level == SNN and graph.attrs.get("spikes_only"):
        problems += spikes_only_problems(graph)
    if level == SNN:
        for out in graph.outputs:
            if types[out].coding != Analog():
                problems.append(f"output {out!r} carries {types[out].coding} coding; end it with a Readout")
    if problems:
        raise VerificationError(f"{level}-level graph is not valid:\n  " + "\n  ".join(problems))
    return types
