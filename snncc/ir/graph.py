"""The graph: ops as nodes with stable string ids, edges keyed by input port.

A thin wrapper around a private ``networkx.MultiDiGraph`` (the only place snncc touches networkx). Each node has
one output; an edge ``u -> v`` with key ``port`` says that ``u`` is operand ``port`` of ``v``. Side tables hold
per-node metadata (calibration statistics, the pass that made a node), the typed placement of a node on a chip
(hw level) and graph attributes (level, pipeline, input scaling). Types are inferred on demand by
:meth:`Graph.types`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

import networkx as nx

from snncc.errors import IRError
from snncc.ir.ops import ANN, Input, Op
from snncc.ir.placement import Placement
from snncc.ir.types import TensorType

_ID_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def sanitize_id(name: str) -> str:
    """A node id safe for the text and file forms: letters, digits, ``_ . -``."""
    cleaned = _ID_CHARS.sub("_", name).strip("_")
    return cleaned or "node"


class Graph:
    """A directed acyclic graph of :class:`~snncc.ir.ops.Op` nodes with ordered inputs and named outputs."""

    def __init__(self, level: str = ANN) -> None:
        self._g = nx.MultiDiGraph()
        self.outputs: list[str] = []
        self.attrs: dict[str, object] = {"level": level}
        self.meta: dict[str, dict[str, object]] = {}
        self._placement: dict[str, Placement] = {}

    # ---- queries -----------------------------------------------------------------------------------------------
    @property
    def level(self) -> str:
        return str(self.attrs["level"])

    def __contains__(self, node: str) -> bool:
        return node in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def op(self, node: str) -> Op:
        try:
            return self._g.nodes[node]["op"]
        except KeyError:
            raise IRError(f"no node {node!r} in the graph") from None

    def placement(self, node: str) -> Placement | None:
        """Where ``node`` runs on a chip (hw level), or None if it is not placed."""
        self.op(node)  # raises for an unknown node
        return self._placement.get(node)

    def inputs(self, node: str) -> list[str]:
        """The operands of ``node`` in port order."""
        edges = sorted(self._g.in_edges(node, keys=True), key=lambda e: e[2])
        return [u for u, _, _ in edges]

    def users(self, node: str) -> list[tuple[str, int]]:
        """``(user, port)`` for every use of ``node`` as an operand."""
        return sorted((v, k) for _, v, k in self._g.out_edges(node, keys=True))

    def input_nodes(self) -> list[str]:
        return [n for n in self.topological_order() if isinstance(self.op(n), Input)]

    def nodes(self) -> list[str]:
        return list(self._g.nodes)

    def topological_order(self) -> list[str]:
        """A deterministic topological order (ties broken by insertion order)."""
        order = {n: i for i, n in enumerate(self._g.nodes)}
        try:
            return list(nx.lexicographical_topological_sort(self._g, key=order.__getitem__))
        except nx.NetworkXUnfeasible:
            raise IRError("the graph has a cycle; snncc graphs are feed-forward") from None

    def types(self) -> dict[str, TensorType]:
        """Infer the type of every node's output, in topological order."""
        types: dict[str, TensorType] = {}
        for node in self.topological_order():
            op = self.op(node)
            args = [types[u] for u in self.inputs(node)]
            try:
                types[node] = op.infer(args)
            except IRError as exc:
                raise IRError(f"node {node!r}: {exc}") from None
        return types

    def find(self, kind: type[Op] | tuple[type[Op], ...]) -> list[str]:
        return [n for n in self.topological_order() if isinstance(self.op(n), kind)]

    # ---- mutation ----------------------------------------------------------------------------------------------
    def unique_id(self, name: str) -> str:
        base = sanitize_id(name)
        candidate, i = base, 1
        while candidate in self._g:
            candidate = f"{base}_{i}"
            i += 1
        return candidate

    def add(self, op: Op, inputs: Iterable[str] = (), name: str | None = None, **meta: object) -> str:
        """Add ``op`` with operands ``inputs``; returns the new node id (``name`` made unique)."""
        inputs = list(inputs)
        if op.arity is not None and len(inputs) != op.arity:
            raise IRError(f"{op.kind} takes {op.arity} inputs, got {len(inputs)}")
        if op.arity is None and not inputs:
            raise IRError(f"{op.kind} takes at least one input")
        for u in inputs:
            if u not in self._g:
                raise IRError(f"{op.kind}: operand {u!r} is not in the graph")
        node = self.unique_id(name or op.kind.lower())
        self._g.add_node(node, op=op)
        for port, u in enumerate(inputs):
            self._g.add_edge(u, node, key=port)
        self.meta[node] = dict(meta)
        return node

    def place(self, node: str, placement: Placement | None) -> None:
        """Place ``node`` on a chip and core (None removes its placement); the verifier allows it at hw only."""
        self.op(node)
        if placement is None:
            self._placement.pop(node, None)
        elif not isinstance(placement, Placement):
            raise IRError(f"node {node!r}: a placement must be a Placement(chip, core), got {placement!r}")
        else:
            self._placement[node] = placement

    def replace(self, node: str, op: Op) -> None:
        """Swap the op of ``node`` keeping its operands and users."""
        current = self.op(node)
        if op.arity is not None and op.arity != len(self.inputs(node)):
            raise IRError(f"cannot replace {current.kind} {node!r} by {op.kind}: arity differs")
        self._g.nodes[node]["op"] = op

    def set_inputs(self, node: str, inputs: Iterable[str]) -> None:
        """Replace the operands of ``node``."""
        for u, v, k in list(self._g.in_edges(node, keys=True)):
            self._g.remove_edge(u, v, key=k)
        for port, u in enumerate(inputs):
            self._g.add_edge(u, node, key=port)

    def rewire(self, old: str, new: str) -> None:
        """Make every user of ``old`` (and the graph outputs) use ``new`` instead."""
        for user, port in self.users(old):
            if user == new:
                continue
            self._g.remove_edge(old, user, key=port)
            self._g.add_edge(new, user, key=port)
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove(self, node: str) -> None:
        if self.users(node) or node in self.outputs:
            raise IRError(f"cannot remove {node!r}: it is still used")
        self._g.remove_node(node)
        self.meta.pop(node, None)
        self._placement.pop(node, None)

    def bypass(self, node: str) -> None:
        """Remove a single-input node, connecting its operand to its users."""
        (src,) = self.inputs(node)
        self.rewire(node, src)
        self.remove(node)

    def insert_after(self, node: str, op: Op, name: str | None = None, **meta: object) -> str:
        """Insert single-input ``op`` between ``node`` and all its users (and outputs)."""
        users = self.users(node)
        new = self.add(op, [node], name=name, **meta)
        for user, port in users:
            self._g.remove_edge(node, user, key=port)
            self._g.add_edge(new, user, key=port)
        self.outputs = [new if o == node else o for o in self.outputs]
        return new

    def remove_dead(self) -> bool:
        """Remove nodes no output depends on (inputs stay); returns whether anything was removed."""
        live = set(self.outputs)
        for out in self.outputs:
            live |= nx.ancestors(self._g, out)
        dead = [n for n in self._g.nodes if n not in live and not isinstance(self.op(n), Input)]
        for n in dead:
            self._g.remove_node(n)
            self.meta.pop(n, None)
            self._placement.pop(n, None)
        return bool(dead)

    def clone(self) -> Graph:
        """A copy sharing the (immutable) ops; metadata and attributes are deep-copied."""
        other = Graph()
        other._g = self._g.copy()
        other.outputs = list(self.outputs)
        other.attrs = copy.deepcopy(self.attrs)
        other.meta = copy.deepcopy(self.meta)
        other._placement = dict(self._placement)  # placements are immutable records
        return other
