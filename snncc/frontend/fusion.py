"""Activations that exporters write as several ONNX nodes, fused into one node before the import walk.

What torch 2.13's exporters emit (``torch.onnx.export`` with ``dynamo=False``, the legacy TorchScript exporter, and
``dynamo=True``, opset 18 by default) for activations that older opsets have no operator for:

- ``nn.SiLU``: ``Mul(x, Sigmoid(x))``, both exporters, every opset (ONNX has ``Swish`` only from opset 24);
- ``nn.Hardswish``: legacy before opset 14 ``Mul(x, HardSigmoid<alpha=1/6>(x))``; ``HardSwish`` from opset 14;
- ``nn.GELU()``: legacy before opset 20 ``Mul(Mul(x, Add(Erf(Div(x, 1.4142)), 1)), 0.5)``, dynamo opset 18
  ``Mul(x, Mul(0.5, Add(Erf(Div(x, 1.4142)), 1)))``; both write ``Gelu`` from opset 20;
- ``nn.GELU("tanh")``: legacy before opset 20 ``Mul(0.5, Mul(x, Add(1, Tanh(Mul(0.79788, Add(x, Mul(0.044715,
  Mul(x, Mul(x, x)))))))))``, dynamo opset 18 the same with ``Pow(x, 3)`` for the cube and the 0.5 on the
  ``1 + tanh`` factor; both write ``Gelu<approximate="tanh">`` from opset 20.

``Sigmoid``, ``Tanh`` and ``HardSigmoid`` are single nodes. The patterns below accept every order of the operands
of ``Add`` and ``Mul``, a division by ``1/c`` for a multiplication by ``c`` (``x / sqrt 2`` or ``x * 0.7071``), and
the 0.5 of GELU on any of its three factors. :func:`fuse_activations` replaces each match by the one ONNX node that
expresses it in newer opsets (``Swish<alpha=1>``, ``HardSwish``, ``Gelu``), which the converters then translate
like any other node. A match is fused only if no value inside it is read elsewhere (by another node or as a graph
output): otherwise its nodes stay, and :attr:`Fusion.notes` says, for each of them, why the pattern was not fused,
for the error message of the node that then fails (the ``Erf``, or a ``Mul`` of two computed tensors).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

# ---- patterns ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """The activation's input ``x``: every occurrence in a pattern must be the same tensor, computed from the
    model input."""


@dataclass(frozen=True)
class _Const:
    """A scalar constant (initializer or Constant node of one element) equal to ``value`` to 1e-6 relative."""

    value: float


@dataclass(frozen=True)
class _Node:
    """A node of ``op_type`` whose operands match ``operands`` (in either order if ``commutative``) and whose
    attributes ``name`` equal ``value`` (``default`` when absent) for each ``(name, default, value)`` in ``attrs``."""

    op_type: str
    operands: tuple
    commutative: bool = False
    attrs: tuple[tuple[str, float, float], ...] = ()


@dataclass(frozen=True)
class _AnyOf:
    alternatives: tuple


X = _Input()


def _mul(a: object, b: object) -> _Node:
    return _Node("Mul", (a, b), commutative=True)


def _add(a: object, b: object) -> _Node:
    return _Node("Add", (a, b), commutative=True)


def _scaled(p: object, c: float) -> _AnyOf:
    """``p * c``, also written ``p / (1 / c)``."""
    return _AnyOf((_mul(p, _Const(c)), _Node("Div", (p, _Const(1.0 / c)))))


def _x_times_half(two_phi: object) -> _AnyOf:
    """``x * two_phi / 2`` with the 0.5 on the product, on ``two_phi`` or on ``x``."""
    return _AnyOf((_scaled(_mul(X, two_phi), 0.5), _mul(X, _scaled(two_phi, 0.5)), _mul(_scaled(X, 0.5), two_phi)))


_CUBE = _AnyOf((_Node("Pow", (X, _Const(3.0))), _mul(X, _mul(X, X))))
_TANH_ARGUMENT = _scaled(_add(X, _scaled(_CUBE, 0.044715)), math.sqrt(2.0 / math.pi))


@dataclass(frozen=True)
class Pattern:
    """``expression`` computes ``description``; a match becomes one node ``op_type`` with ``attributes``."""

    name: str
    description: str
    expression: object
    op_type: str
    attributes: dict = field(default_factory=dict)
    remedy: str = ""


PATTERNS: tuple[Pattern, ...] = (
    Pattern("SiLU", "x * sigmoid(x)", _mul(X, _Node("Sigmoid", (X,))), "Swish", {"alpha": 1.0}),
    Pattern("HardSwish", "x * hardsigmoid(x) with alpha 1/6, beta 1/2",
            _mul(X, _Node("HardSigmoid", (X,), attrs=(("alpha", 0.2, 1 / 6), ("beta", 0.5, 0.5)))), "HardSwish",
            remedy="or export with opset 14 or later, where it is one HardSwish node"),
    Pattern("GELU", "x * 0.5 * (1 + erf(x / sqrt(2)))",
            _x_times_half(_add(_Node("Erf", (_scaled(X, 1 / math.sqrt(2.0)),)), _Const(1.0))), "Gelu",
            {"approximate": "none"}, remedy="or export with opset 20 or later, where it is one Gelu node"),
    Pattern("tanh GELU", "x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))",
            _x_times_half(_add(_Node("Tanh", (_TANH_ARGUMENT,)), _Const(1.0))), "Gelu", {"approximate": "tanh"},
            remedy="or export with opset 20 or later, where it is one Gelu node"),
)

#: Operators snncc reads only inside one of the patterns, with the pattern (for the error message).
PATTERN_ONLY_OPERATORS = {"Erf": "GELU, x * 0.5 * (1 + erf(x / sqrt(2)))",
                          "Pow": "the tanh form of GELU, with Pow(x, 3)"}
#: Why a product of two computed tensors can be read at all (for the error message of a Mul that fails).
PRODUCTS = "x * sigmoid(x) (SiLU), x * hardsigmoid(x) (HardSwish) and x * (1 + erf(...)) / 2 (GELU)"


# ---- matching ----------------------------------------------------------------------------------------------------


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node given as a tensor, a float or an int (other forms are not scalars)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attr))
    return None


def _scalar(value: np.ndarray | None) -> float | None:
    """A one-element numeric array of rank 0 or 1 (which broadcasts without raising any rank) as a float."""
    if value is None or value.size != 1 or value.ndim > 1 or value.dtype.kind not in "fiu":
        return None
    return float(value.reshape(-1)[0])


def _attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    for attr in node.attribute:
        if attr.name == name:
            return float(onnx.helper.get_attribute_value(attr))
    return default


class _Matcher:
    def __init__(self, nodes: Sequence[onnx.NodeProto], constants: dict[str, np.ndarray], graph_input: str) -> None:
        self.producers = {out: node for node in nodes for out in node.output if out}
        self.scalars = {name: s for name, value in constants.items() if (s := _scalar(np.asarray(value))) is not None}
        for node in nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                if (s := _scalar(_constant_value(node))) is not None:
                    self.scalars[node.output[0]] = s
        # Tensors computed from the model input, as the import walk classifies them (Shape yields a constant).
        self.dynamic = {graph_input}
        for node in nodes:
            if node.op_type != "Shape" and any(name in self.dynamic for name in node.input):
                self.dynamic.update(out for out in node.output if out)

    def match(self, pattern: object, tensor: str, x: str | None) -> Iterator[tuple[str, tuple[onnx.NodeProto, ...]]]:
        """Every way ``tensor`` is computed by ``pattern``: (the tensor bound to ``x``, the pattern's nodes)."""
        if isinstance(pattern, _Input):
            if tensor in self.dynamic and x in (None, tensor):
                yield tensor, ()
        elif isinstance(pattern, _Const):
            value = self.scalars.get(tensor)
            if value is not None and math.isclose(value, pattern.value, rel_tol=1e-6):
                yield x, ()
        elif isinstance(pattern, _AnyOf):
            for alternative in pattern.alternatives:
                yield from self.match(alternative, tensor, x)
        else:
            node = self.producers.get(tensor)
            if (node is None or node.op_type != pattern.op_type or node.domain not in ("", "ai.onnx")
                    or len(node.input) != len(pattern.operands)):
                return
            if any(not math.isclose(_attribute(node, name, default), value, rel_tol=1e-6)
                   for name, default, value in pattern.attrs):
                return
            orders = [pattern.operands]
            if pattern.commutative and pattern.operands[0] != pattern.operands[1]:
                orders.append(pattern.operands[::-1])
            for operands in orders:
                yield from self._match_all(operands, tuple(node.input), x, (node,))

    def _match_all(self, patterns: tuple, tensors: tuple[str, ...], x: str | None,
                   nodes: tuple[onnx.NodeProto, ...]) -> Iterator[tuple[str, tuple[onnx.NodeProto, ...]]]:
        if not patterns:
            yield x, nodes
            return
        for bound, inner in self.match(patterns[0], tensors[0], x):
            yield from self._match_all(patterns[1:], tensors[1:], bound, nodes + inner)


# ---- fusion ------------------------------------------------------------------------------------------------------


@dataclass
class Fusion:
    """``nodes``: the graph's nodes with every fused match replaced by one node (at its last node's place);
    ``fused``: output name of each fused node -> the op types it replaces, e.g. ``"Sigmoid,Mul"``; ``notes``: output
    name of a node of an unfused match -> why it was not fused."""

    nodes: list[onnx.NodeProto]
    fused: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def note(self, node: onnx.NodeProto) -> str:
        return self.notes.get(node.output[0], "") if node.output else ""


def _label(node: onnx.NodeProto) -> str:
    return f"{node.name or node.output[0]!r} ({node.op_type})"


def fuse_activations(nodes: Sequence[onnx.NodeProto], constants: dict[str, np.ndarray], graph_input: str,
                     graph_outputs: Iterable[str]) -> Fusion:
    """Replace every match of :data:`PATTERNS` whose inner values nothing else reads by one node."""
    matcher = _Matcher(nodes, constants, graph_input)
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    outputs = set(graph_outputs)
    claimed: set[int] = set()
    replacements: dict[int, onnx.NodeProto] = {}
    fusion = Fusion(nodes=[])
    for root in reversed(nodes):  # from the end, so that a larger pattern wins over one inside it
        if id(root) in claimed or len(root.output) != 1:
            continue
        for pattern in PATTERNS:
            found = next(matcher.match(pattern.expression, root.output[0], None), None)
            if found is None:
                continue
            x, members = found
            members = tuple({id(m): m for m in members}.values())
            if any(id(m) in claimed for m in members):
                continue
            inside = {id(m) for m in members}
            leaks = [(name, reader) for m in members if m is not root for name in m.output
                     for reader in readers[name] if id(reader) not in inside]
            leaks += [(name, None) for m in members if m is not root for name in m.output if name in outputs]
            if leaks:
                name, reader = leaks[0]
                where = "is a graph output" if reader is None else f"is also read by {_label(reader)}"
                note = (f"; it belongs to the {pattern.name} pattern {pattern.description} ending at {_label(root)}, "
                        f"which snncc imports as one op only when nothing else reads its inner values, but {name!r} "
                        f"{where}: "
                        f"compute that other use from the activation's input or output instead"
                        + (f", {pattern.remedy}" if pattern.remedy else ""))
                for m in members:
                    fusion.notes.setdefault(m.output[0], note)
                break
            claimed.update(inside)
            replacements[id(root)] = onnx.helper.make_node(
                pattern.op_type, [x], [root.output[0]], name=root.name or root.output[0],
                doc_string=f"snncc: {pattern.name} fused from " + ", ".join(
                    _label(m) for m in nodes if id(m) in inside), **pattern.attributes)
            fusion.fused[root.output[0]] = ",".join(m.op_type for m in nodes if id(m) in inside)
            break
    fusion.nodes = [replacements.get(id(n), n) for n in nodes if id(n) not in claimed or id(n) in replacements]
    return fusion
