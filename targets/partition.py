"""Placing a partitioned network on cores so that few spikes cross between cores, within each core's limits.

A target's partitioner first splits the populations that exceed a core into blocks (the target's own rules:
:func:`snncc.targets.loihi.legalize.plan_blocks`); every block, its synaptic node and its neurons, is a *unit*
that must stay on one core. This module chooses the core of every unit. It is target-independent: a unit uses
``neurons``, ``synapses`` and ``axons`` (the input neurons it reads) of its core, and a core holds at most
``CoreLimits.neurons``, ``CoreLimits.synapses`` and ``CoreLimits.fan_in`` input axons. The axons of a core are
counted as the sum of its units' (an upper bound of the distinct ones: two units that read the same neurons need
them once), so a placement never exceeds the limit, at the price of a core more where two blocks share inputs.

Traffic. ``w(u, v)`` is the number of neurons of unit ``u`` with at least one synapse onto a neuron of unit ``v``
(found by tracing neuron ids through the graph's rearrangements: slices, concatenations, padding, flattening, and
element-wise ops of one input; a node that mixes several neurons into one element, such as an Add, is not traced).
When ``u`` and ``v`` sit on different cores, every spike of such a neuron travels between the two cores: on
Loihi's mesh a spike is one message per destination core, so for equal firing rates the messages between cores
are proportional to the *cut*

    C = sum of w(u, v) over the pairs with core(u) != core(v),

the number of inter-core routes. (Two units on one other core share a message on the chip, so C is an upper bound
of the routes; the input from the host is not counted.)

Algorithm. The start is first-fit in topological order: a unit joins the core of the unit before it while both
fit, so consecutive layers share a core where they can. Then local search in the manner of Kernighan & Lin (1970)
and Fiduccia & Mattheyses (1982): of every move of one unit to another core and every swap of two units on
different cores that keeps both cores within their limits, apply the one that lowers C the most, until none lowers
it. C is a non-negative integer that falls at every step, so the search ends; the result is a local optimum (the
problem is NP-hard) on at most the first-fit's number of cores, and never worse than first-fit.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from snncc.ir import Graph, ops
from snncc.runtime.kernels import apply


@dataclass(frozen=True)
class CoreLimits:
    """What one core holds: compartments, synapses (8-bit) and distinct input axons (None: no limit)."""

    neurons: int
    synapses: int
    fan_in: int | None = None


@dataclass(frozen=True)
class Unit:
    """What must stay on one core: a synaptic node and the population (or readout) it feeds, and what they use."""

    synapse: str
    neurons_node: str
    neurons: int
    synapses: int
    #: Input axons: the distinct input neurons (or host inputs) the unit's synapses read.
    axons: int = 0


def _fits(limits: CoreLimits, neurons: int, synapses: int, axons: int) -> bool:
    return neurons <= limits.neurons and synapses <= limits.synapses and \
        (limits.fan_in is None or axons <= limits.fan_in)


def routes(graph: Graph, units: list[Unit]) -> dict[tuple[int, int], int]:
    """``w(u, v)`` for every pair of units (indices into ``units``) with ``w > 0``: the neurons of ``u`` that reach
    ``v``'s synaptic node. Neuron ids (from 1; 0 is no neuron) are pushed through every node that is neither a
    population nor synaptic with the simulator's own kernels, so every rearrangement the graph can hold is followed
    exactly; ids stay exact in float64."""
    owner_of = {u.neurons_node: i for i, u in enumerate(units)}
    synapse_of = {u.synapse: i for i, u in enumerate(units)}
    types = graph.types()
    ids: dict[str, np.ndarray] = {}
    first_ids, owners = [], []  # the id ranges of the units' neurons, ascending
    next_id = 1
    for node in graph.topological_order():
        op = graph.op(node)
        shape = types[node].shape
        if node in owner_of:
            size = int(np.prod(shape))
            ids[node] = np.arange(next_id, next_id + size, dtype=np.float64).reshape((1,) + shape)
            first_ids.append(next_id)
            owners.append(owner_of[node])
            next_id += size
        elif op.passes_spikes or isinstance(op, ops.Concat):  # a rearrangement: the simulator's kernel moves ids
            ids[node] = np.asarray(apply(op, *(ids[s] for s in graph.inputs(node))), dtype=np.float64)
        elif len(graph.inputs(node)) == 1 and types[graph.inputs(node)[0]].shape == shape and \
                not isinstance(op, (ops.Population, ops.Readout)) and not op.synaptic:
            ids[node] = ids[graph.inputs(node)[0]]  # element-wise (an Affine): each output keeps its input's neuron
        else:
            # The host's input, or a node whose elements mix several neurons (an Add of two branches): not traced,
            # so the routes through it are not counted.
            ids[node] = np.zeros((1,) + shape)
    starts = np.asarray(first_ids)
    weights: dict[tuple[int, int], int] = {}
    for node, v in synapse_of.items():
        reached = np.unique(np.concatenate([ids[s].ravel() for s in graph.inputs(node)]))
        reached = reached[reached > 0].astype(np.int64)
        if not reached.size:
            continue
        sources, counts = np.unique(np.searchsorted(starts, reached, side="right") - 1, return_counts=True)
        for s, count in zip(sources, counts):
            u = owners[s]
            if u != v:
                weights[(u, v)] = weights.get((u, v), 0) + int(count)
    return weights


def cut(weights: dict[tuple[int, int], int], cores: list[int]) -> int:
    """The inter-core routes ``C`` of an assignment ``cores`` (core index per unit)."""
    return sum(w for (u, v), w in weights.items() if cores[u] != cores[v])


def first_fit(units: list[Unit], limits: CoreLimits) -> list[int]:
    """Cores in the units' order: a unit joins the current core while it fits, else opens the next one."""
    cores, core, used = [], -1, None
    for u in units:
        if used is None or not _fits(limits, used[0] + u.neurons, used[1] + u.synapses, used[2] + u.axons):
            core, used = core + 1, [0, 0, 0]
        used[0] += u.neurons
        used[1] += u.synapses
        used[2] += u.axons
        cores.append(core)
    return cores


def place(units: list[Unit], weights: dict[tuple[int, int], int], limits: CoreLimits) -> list[int]:
    """A core per unit: first-fit, then moves and swaps that lower the cut (module docstring)."""
    cores = first_fit(units, limits)
    if not units:
        return cores
    count = max(cores) + 1
    load_n, load_s, load_a = (np.zeros(count, np.int64) for _ in range(3))
    for u, c in zip(units, cores):
        load_n[c] += u.neurons
        load_s[c] += u.synapses
        load_a[c] += u.axons
    on_core: list[list[int]] = [[] for _ in range(count)]  # the units of every core, ascending
    for u, c in enumerate(cores):
        on_core[c].append(u)
    adjacency: list[dict[int, int]] = [{} for _ in units]
    for (u, v), w in weights.items():
        adjacency[u][v] = adjacency[u].get(v, 0) + w
        adjacency[v][u] = adjacency[v].get(u, 0) + w

    def pull(u: int) -> np.ndarray:
        """Traffic between unit u and every core."""
        to_core = np.zeros(count, np.int64)
        for v, w in adjacency[u].items():
            to_core[cores[v]] += w
        return to_core

    def fits(c: int, add: Unit, remove: Unit | None = None) -> bool:
        n = load_n[c] + add.neurons - (remove.neurons if remove else 0)
        s = load_s[c] + add.synapses - (remove.synapses if remove else 0)
        a = load_a[c] + add.axons - (remove.axons if remove else 0)
        return _fits(limits, int(n), int(s), int(a))

    while True:
        best_gain, best = 0, None
        pulls = [pull(u) for u in range(len(units))]
        for u, unit in enumerate(units):
            a = cores[u]
            # Only a core that u exchanges spikes with can gain from u moving there or from a swap with one of
            # its units.
            for b in np.flatnonzero(pulls[u]):
                b = int(b)
                if b == a:
                    continue
                gain = int(pulls[u][b] - pulls[u][a])
                if gain > best_gain and fits(b, unit):
                    best_gain, best = gain, (u, b, None)
                for x in on_core[b]:
                    swap = gain + int(pulls[x][a] - pulls[x][b]) - 2 * adjacency[u].get(x, 0)
                    if swap > best_gain and fits(b, unit, units[x]) and fits(a, units[x], unit):
                        best_gain, best = swap, (u, b, x)
        if best is None:
            return cores
        u, b, x = best
        a = cores[u]
        for index, source, target in ((u, a, b),) + (((x, b, a),) if x is not None else ()):
            unit = units[index]
            load_n[source] -= unit.neurons
            load_s[source] -= unit.synapses
            load_a[source] -= unit.axons
            load_n[target] += unit.neurons
            load_s[target] += unit.synapses
            load_a[target] += unit.axons
            cores[index] = target
            on_core[source].remove(index)
            bisect.insort(on_core[target], index)


__all__ = ["CoreLimits", "Unit", "cut", "first_fit", "place", "routes"]
