"""Level verifiers: what is legal in an ANN-level and an SNN-level graph.

ANN level: only ops legal at ANN level (no populations, no readouts), every edge analog.
SNN level: no ANN activations; every graph output is analog (produced by a Readout); a MaxPool2d never sees rate-coded
spike trains (those are pooled by SpikingMaxPool2d; a few-spike value is complete at the end of its window and can
be pooled as a value); every operand of an Add or Concat carries the same coding.
"""

from __future__ import annotations

from snncc.errors import IRError, VerificationError
from snncc.ir.codings import Analog, Rate
from snncc.ir.graph import Graph
from snncc.ir.ops import ANN, SNN, Add, Concat, MaxPool2d
from snncc.ir.types import TensorType

LEVELS = (ANN, SNN)


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
    if level == SNN:
        for out in graph.outputs:
            if types[out].coding != Analog():
                problems.append(f"output {out!r} carries {types[out].coding} coding; end it with a Readout")
    if problems:
        raise VerificationError(f"{level}-level graph is not valid:\n  " + "\n  ".join(problems))
    return types
